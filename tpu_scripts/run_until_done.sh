#!/usr/bin/env bash
# Keep a run going until it has finished, unattended: create (or wait for) the slice, set up the
# workers, launch, and watch; when the slice is preempted or deleted, or the run stops without
# finishing, recreate what is needed and launch the same command again (it resumes from its
# last checkpoint in the workdir), at most --max_attempts launches. Finished means the run's own
# completion marker WORKDIR/COMPLETE.json (written after its final checkpoint and HF export),
# never an exit status or a checkpoint step.
# Usage: tpu_scripts/run_until_done.sh --name NAME --zone ZONE --type TYPE [options] -- COMMAND...
#   --run RUN            run name for launch.sh (default o3video)
#   --workdir DIR        the run's workdir (default: the command's --workdir); gs:// is read
#                        with `gcloud storage ls`
#   --queued             the slice is a queued resource NAME-qr (create_tpu_vm.sh --queued
#                        --wait: a rerun polls the existing request)
#   --spot               a Spot VM / spot queued request
#   --create_arg ARG     one more word for create_tpu_vm.sh (repeatable, e.g. --create_arg
#                        --internal-ips)
#   --env KEY=VALUE      for launch.sh (repeatable)
#   --max_attempts N     launches before giving up (default 5)
#   --poll S             seconds between checks (default 60; env TPU_POLL_S)
#   --delete_when_done   delete the slice once the marker exists
#   plus the common options of tpu_scripts/_common.sh (--project, --iap, --venv, --remote_dir,
#   --slices)
# With --slices N (multislice), the slice is the queued resource NAME-qr with N nodes NAME-0 ...
# NAME-(N-1) (create_tpu_vm.sh --slices N; --queued is implied); it is ready when every node is
# READY, and one node preempted or deleted recreates the queued resource and relaunches on every
# slice. setup_workers.sh, launch.sh and stop.sh (after a launch that failed somewhere) get the
# same --slices.
# e.g. tpu_scripts/run_until_done.sh --name o3v --zone us-east5-a --type v5p-64 --queued --spot \
#        --run sft7b -- python3 -m o3video_jax.train --config ... --workdir gs://BUCKET/runs/sft7b
# shellcheck source=_common.sh
source "$(dirname "$0")/_common.sh"

HERE=$(cd "$(dirname "$0")" && pwd)
WORKDIR=""; QUEUED=0; SPOT=0; CREATE=(); LAUNCH=(); MAX_ATTEMPTS=5
POLL=${TPU_POLL_S:-60}; DELETE_WHEN_DONE=0
parse_common "$@"
take_positional TPU_NAME TPU_ZONE
set -- "${ARGS[@]+"${ARGS[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --run) TPU_RUN=${2:?--run needs a name}; shift 2 ;;
    --workdir) WORKDIR=${2:?--workdir needs a folder}; shift 2 ;;
    --queued) QUEUED=1; shift ;;
    --spot) SPOT=1; shift ;;
    --create_arg) CREATE+=("${2:?--create_arg needs a word}"); shift 2 ;;
    --env) LAUNCH+=(--env "${2:?--env needs KEY=VALUE}"); shift 2 ;;
    --max_attempts) MAX_ATTEMPTS=${2:?--max_attempts needs a number}; shift 2 ;;
    --poll) POLL=${2:?--poll needs seconds}; shift 2 ;;
    --delete_when_done) DELETE_WHEN_DONE=1; shift ;;
    --) shift; break ;;
    *) die "unknown argument '$1': put the command after -- (see --help)" ;;
  esac
done
[ $# -gt 0 ] || die "no command: tpu_scripts/run_until_done.sh ... -- python3 -m o3video_jax.train ..."
require_name_zone
[ -n "$TPU_TYPE" ] || die "no accelerator type: pass --type (e.g. v5p-64) or set TPU_TYPE"
[[ "$MAX_ATTEMPTS" =~ ^[1-9][0-9]*$ ]] || die "--max_attempts needs a positive number"
[[ "$POLL" =~ ^[0-9]+$ ]] || die "--poll needs whole seconds"
check_run_name "$TPU_RUN"
if [ -z "$WORKDIR" ]; then
  prev=""
  for word in "$@"; do
    case "$word" in --workdir=*) WORKDIR=${word#--workdir=} ;; esac
    if [ "$prev" = --workdir ]; then WORKDIR=$word; fi
    prev=$word
  done
fi
[ -n "$WORKDIR" ] || die "no workdir: the command has no --workdir (or pass --workdir)"
[ "$DRY_RUN" = 0 ] || die "--dry_run: see the --dry_run of the scripts this one calls"
if [ "$TPU_SLICES" -gt 1 ]; then QUEUED=1; fi  # multislice nodes come from a queued resource

COMMON=(--name "$TPU_NAME" --zone "$TPU_ZONE" --venv "$TPU_VENV" --remote_dir "$TPU_REMOTE_DIR")
if [ -n "$TPU_PROJECT" ]; then COMMON+=(--project "$TPU_PROJECT"); fi
if [ "$IAP" = 1 ]; then COMMON+=(--iap); fi
if [ "$TPU_SLICES" -gt 1 ]; then COMMON+=(--slices "$TPU_SLICES"); fi
gcloud_flags
say() { echo "[run_until_done] $(date -u +%H:%M:%S) $*"; }

done_marker() {  # the run's completion marker exists
  case "$WORKDIR" in
    gs://*) gcloud storage ls "${WORKDIR%/}/COMPLETE.json" >/dev/null 2>&1 ;;
    *) [ -f "${WORKDIR%/}/COMPLETE.json" ] ;;
  esac
}

vm_state() {  # READY, CREATING, PREEMPTED, ... or GONE
  gcloud compute tpus tpu-vm describe "$TPU_NAME" "${GFLAGS[@]}" --format="value(state)" \
    2>/dev/null || echo GONE
}

node_down() {  # "NODE is STATE" unless the node is READY
  local state
  state=$(vm_state)
  if [ "$state" != READY ]; then echo "$TPU_NAME is $state"; fi
}

slices_down() {  # the nodes that are not READY ("" when the slice is ready), on one line
  local down
  down=$(on_slices --keep_going node_down)
  printf '%s' "${down//$'\n'/, }"
}

qr_state() {
  gcloud compute tpus queued-resources describe "$TPU_NAME-qr" "${GFLAGS[@]}" \
    --format="value(state.state)" 2>/dev/null || echo GONE
}

ensure_slice() {  # a READY slice, however it has to be made
  local state
  if [ "$QUEUED" = 1 ]; then
    state=$(qr_state)
    if [ "$state" = ACTIVE ] && [ -z "$(slices_down)" ]; then return 0; fi
    case "$state" in
      GONE | WAITING_FOR_RESOURCES | ACCEPTED | PROVISIONING | CREATING) ;;  # create/wait
      *)  # FAILED, SUSPENDED, or ACTIVE with its node preempted: a new request
        say "queued resource $TPU_NAME-qr is $state: deleting it"
        "$HERE/delete_tpu_vm.sh" "${COMMON[@]}" --queued || true ;;
    esac
    local spot=()
    if [ "$SPOT" = 1 ]; then spot=(--spot); fi
    "$HERE/create_tpu_vm.sh" "${COMMON[@]}" --type "$TPU_TYPE" --queued --wait \
      "${spot[@]+"${spot[@]}"}" "${CREATE[@]+"${CREATE[@]}"}"
    return
  fi
  state=$(vm_state)
  case "$state" in
    READY) return 0 ;;
    GONE) ;;
    CREATING | STARTING | RESTARTING | REPAIRING) ;;
    *)
      say "slice $TPU_NAME is $state: deleting it"
      "$HERE/delete_tpu_vm.sh" "${COMMON[@]}" || true
      state=GONE ;;
  esac
  if [ "$state" = GONE ]; then
    local spot=()
    if [ "$SPOT" = 1 ]; then spot=(--spot); fi
    "$HERE/create_tpu_vm.sh" "${COMMON[@]}" --type "$TPU_TYPE" "${spot[@]+"${spot[@]}"}" \
      "${CREATE[@]+"${CREATE[@]}"}"
  fi
  while [ "$(vm_state)" != READY ]; do
    sleep "$POLL"
  done
}

run_states() {  # one word per worker: RUNNING, EXITED:N or NONE (empty when ssh fails)
  local remote
  remote="$(remote_run_vars)"
  remote+='p=$(cat "$d/$h.pid" 2>/dev/null || true); '
  remote+='if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then echo RUNNING; '
  remote+='elif [ -f "$d/$h.exit" ]; then echo "EXITED:$(cat "$d/$h.exit")"; else echo NONE; fi'
  # shellcheck disable=SC2317  # called through on_slices
  run_states_slice() { ssh_workers all "$remote"; }
  on_slices --keep_going run_states_slice 2>/dev/null || true
}

attempt=0
while true; do
  if done_marker; then
    say "done: ${WORKDIR%/}/COMPLETE.json exists"
    if [ "$DELETE_WHEN_DONE" = 1 ]; then
      if [ "$QUEUED" = 1 ]; then
        "$HERE/delete_tpu_vm.sh" "${COMMON[@]}" --queued
      else
        "$HERE/delete_tpu_vm.sh" "${COMMON[@]}"
      fi
    fi
    exit 0
  fi
  if [ "$attempt" -ge "$MAX_ATTEMPTS" ]; then
    say "gave up after $attempt launches: no ${WORKDIR%/}/COMPLETE.json"
    exit 1
  fi
  attempt=$((attempt + 1))
  say "attempt $attempt/$MAX_ATTEMPTS: slice $TPU_NAME"
  if ! ensure_slice; then
    say "could not get slice $TPU_NAME"
    sleep "$POLL"
    continue
  fi
  "$HERE/setup_workers.sh" "${COMMON[@]}" || { say "setup failed"; continue; }
  if ! "$HERE/launch.sh" "${COMMON[@]}" --run "$TPU_RUN" "${LAUNCH[@]+"${LAUNCH[@]}"}" -- "$@"; then
    # Workers (or slices) where it did start would wait for the others until a timeout, and
    # the next launch would find RUN still running there.
    say "launch failed: stopping it where it started"
    "$HERE/stop.sh" "${COMMON[@]}" --run "$TPU_RUN" || true
    continue
  fi
  while true; do
    sleep "$POLL"
    if done_marker; then break; fi
    down=$(slices_down)
    if [ -n "$down" ]; then
      say "slice $down (preempted or deleted): relaunching"
      break
    fi
    states=$(run_states)
    if [ -n "$states" ] && ! grep -q RUNNING <<<"$states"; then
      say "the run stopped without finishing ($(tr '\n' ' ' <<<"$states")): relaunching"
      break
    fi
  done
done
