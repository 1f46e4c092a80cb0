#!/usr/bin/env bash
# Start a command on every worker of a TPU VM, detached: it keeps running when the ssh session
# ends (setsid + nohup, stdin from /dev/null), each worker logs to its own file, and the
# arguments reach the workers exactly as given here (each one shell-quoted into a run script).
# The command runs in the workers' Python environment (~/o3video_venv, made by
# setup_workers.sh; --venv): its bin/ comes first on PATH, so `python3 -m ...` is its Python.
# The persistent XLA compilation cache is on (JAX_COMPILATION_CACHE_DIR), so a relaunch after a
# preemption skips compilation. A run is named (--run); the same name cannot start twice on a
# worker while it still runs. Then: tpu_scripts/logs.sh, status.sh, stop.sh with the same --run.
# When the command has a --workdir (or with --logs_to), it runs under o3video_jax.train.supervise:
# each worker's log is copied to WORKDIR/logs/LAUNCH_ID/HOST.log while it runs (gs:// included;
# LAUNCH_ID is this launch's UTC time), its exit status to HOST.exit, and when one worker exits
# non-zero the others are stopped (SIGTERM, SIGKILL a minute later) instead of hanging in
# their next collective.
# Usage: tpu_scripts/launch.sh --name NAME --zone ZONE [options] -- COMMAND [ARG...]
#   --run RUN           run name (env TPU_RUN, default o3video): files in ~/o3video_runs/RUN
#   --worker W          all (default; multi-host runs need every worker) or one index
#   --cache_dir DIR     compilation cache (default ~/jax_cache on each worker; gs://... works)
#   --env KEY=VALUE     exported for the command (repeatable)
#   --logs_to DIR       where the logs go (default WORKDIR/logs from the command's --workdir);
#                       none: no mirroring and no watchdog
#   --watch_every S     seconds between log copies and checks of the other workers (default 30)
#   plus the common options of tpu_scripts/_common.sh (--remote_dir, --venv, --project, --iap,
#   --dry_run, --slices)
# With --slices N (multislice: the nodes NAME-0 ... NAME-(N-1) of the queued resource made with
# create_tpu_vm.sh --slices N), every worker of every slice runs the command with
# MEGASCALE_COORDINATOR_ADDRESS (slice 0's worker 0, port MEGASCALE_PORT, default 8080),
# MEGASCALE_NUM_SLICES and MEGASCALE_SLICE_ID set.
# e.g. tpu_scripts/launch.sh --name o3v --zone us-east5-a --run sft7b -- python3 -m \
#        o3video_jax.train --config experiments/configs/sft_qwen2_5_vl.py:size=7b \
#        --workdir gs://BUCKET/runs/sft7b
# shellcheck source=_common.sh
source "$(dirname "$0")/_common.sh"

WORKER=all; CACHE_DIR='"$HOME"/jax_cache'; ENVS=(); LOGS_TO=""; WATCH_EVERY=30
MEGASCALE_PORT=${MEGASCALE_PORT:-8080}
parse_common "$@"
take_positional TPU_NAME TPU_ZONE
set -- "${ARGS[@]+"${ARGS[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --run) TPU_RUN=${2:?--run needs a name}; shift 2 ;;
    --worker) WORKER=${2:?--worker needs all or an index}; shift 2 ;;
    --cache_dir) CACHE_DIR=$(sq "${2:?--cache_dir needs a folder}"); shift 2 ;;
    --env)
      [[ "${2:-}" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env needs KEY=VALUE, got '${2:-}'"
      ENVS+=("$2"); shift 2 ;;
    --logs_to) LOGS_TO=${2:?--logs_to needs a folder or none}; shift 2 ;;
    --watch_every) WATCH_EVERY=${2:?--watch_every needs seconds}; shift 2 ;;
    --) shift; break ;;
    *) die "unknown argument '$1': put the command after -- (see --help)" ;;
  esac
done
[ $# -gt 0 ] || die "no command: tpu_scripts/launch.sh ... -- python3 -m o3video_jax.train ..."
require_name_zone
if ! [[ "$WATCH_EVERY" =~ ^[0-9]+$ ]] || [ "$WATCH_EVERY" -eq 0 ]; then
  die "--watch_every needs whole seconds > 0, got '$WATCH_EVERY'"
fi
if [ -z "$LOGS_TO" ]; then  # the run's workdir, from the command's own flags
  prev=""
  for word in "$@"; do
    case "$word" in --workdir=*) LOGS_TO=${word#--workdir=}/logs ;; esac
    if [ "$prev" = --workdir ]; then LOGS_TO=$word/logs; fi
    prev=$word
  done
fi
if [ "$LOGS_TO" = none ]; then LOGS_TO=""; fi
LAUNCH_ID=$(date -u +%Y%m%dT%H%M%SZ)
VARS=$(remote_run_vars)
DIR=$(remote_dir_expr)
VENV=$(venv_expr)

# The run script, one line per element; every user-given word is quoted for the shell.
lines=(
  '#!/usr/bin/env bash'
  '# written by tpu_scripts/launch.sh'
  'trap : TERM  # stop.sh signals the whole group: the command exits, this shell records it'
  'd=$(cd "$(dirname "$0")" && pwd); h=$(hostname)'
  "cd $DIR || exit 1"
  "venv=$VENV"
  'if [ ! -x "$venv/bin/python" ]; then'
  '  echo "[launch] $h: no Python environment in $venv: run tpu_scripts/setup_workers.sh"'
  '  echo 127 > "$d/$h.exit"; exit 127'
  'fi'
  'export VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH"'
  "export JAX_COMPILATION_CACHE_DIR=$CACHE_DIR"
)
for kv in "${ENVS[@]+"${ENVS[@]}"}"; do
  lines+=("export ${kv%%=*}=$(sq "${kv#*=}")")
done
command_q=$(sq "$1")
for word in "${@:2}"; do command_q+=" $(sq "$word")"; done
if [ -n "$LOGS_TO" ]; then
  command_q="python3 -m o3video_jax.train.supervise --logs $(sq "${LOGS_TO%/}/$LAUNCH_ID") \
--host \"\$h\" --log \"\$d/\$h.log\" --every $WATCH_EVERY -- $command_q"
fi
tail_lines=(
  "cmd=($command_q)"
  'echo "[launch] $(date -u +%FT%TZ) $h:$(printf " %q" "${cmd[@]}")"'
  '"${cmd[@]}"'
  'rc=$?'
  'echo "$rc" > "$d/$h.exit"'
  'echo "[launch] $(date -u +%FT%TZ) $h: exit status $rc"'
)

# launch_on EXTRA_LINE...: writes and starts the run script on the workers of $TPU_NAME.
launch_on() {
  local write_script l remote
  write_script="printf '%s\\n'"
  for l in "${lines[@]}" "$@" "${tail_lines[@]}"; do write_script+=" $(sq "$l")"; done
  remote="set -e; $VARS"
  remote+='mkdir -p "$d"; '
  remote+='if [ -f "$d/$h.pid" ] && kill -0 "$(cat "$d/$h.pid")" 2>/dev/null; then '
  remote+="echo \"\$h: run $TPU_RUN is still running (tpu_scripts/stop.sh --run $TPU_RUN)\" >&2; exit 1; fi; "
  remote+="$write_script > \"\$d/run.sh\"; rm -f \"\$d/\$h.exit\"; "
  remote+='setsid nohup bash "$d/run.sh" >> "$d/$h.log" 2>&1 < /dev/null & '
  remote+='echo $! > "$d/$h.pid"; echo "$h: started '"$TPU_RUN"' (pid $!, log $d/$h.log)"'
  ssh_workers "$WORKER" "$remote"
}

if [ "$TPU_SLICES" = 1 ]; then
  launch_on
  exit 0
fi
# Multislice: every worker of every slice, with the MEGASCALE settings that JAX's multislice
# runtime reads: the coordinator (worker 0 of slice 0), the slice count, this slice's id.
gcloud_flags
describe=(compute tpus tpu-vm describe "$(slice_node "$TPU_NAME" 0)" "${GFLAGS[@]}"
  --format="value(networkEndpoints[0].ipAddress)")
if [ "$DRY_RUN" = 1 ]; then
  gcloud_run "${describe[@]}"
  COORDINATOR='$COORDINATOR_IP'
else
  COORDINATOR=$(gcloud "${describe[@]}")
  [ -n "$COORDINATOR" ] || die "no internal IP for $TPU_NAME-0 (is the multislice slice up?)"
fi
launch_slice() {
  launch_on "export MEGASCALE_COORDINATOR_ADDRESS=$COORDINATOR:$MEGASCALE_PORT" \
    "export MEGASCALE_NUM_SLICES=$TPU_SLICES" "export MEGASCALE_SLICE_ID=$SLICE_ID" \
    "export MEGASCALE_PORT=$MEGASCALE_PORT"
}
on_slices launch_slice
