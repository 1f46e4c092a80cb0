#!/usr/bin/env bash
# The TPU VM's state and health, and (with --run) each worker's run: running, or its exit
# status, with the last log line.
# Usage: tpu_scripts/status.sh --name NAME --zone ZONE [--queued] [--run RUN]
#   --queued     also show the queued resource NAME-qr
#   --run RUN    ssh to every worker and report that run (env TPU_RUN)
#   plus the common options of tpu_scripts/_common.sh (--project, --iap, --dry_run, --slices:
#   the queued resource NAME-qr once, then each node NAME-0 ... and, with --run, its workers)
WITH_RUN=0
if [ -n "${TPU_RUN:-}" ]; then WITH_RUN=1; fi
# shellcheck source=_common.sh
source "$(dirname "$0")/_common.sh"

QUEUED=0
parse_common "$@"
take_positional TPU_NAME TPU_ZONE
set -- "${ARGS[@]+"${ARGS[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --run) TPU_RUN=${2:?--run needs a name}; WITH_RUN=1; shift 2 ;;
    --queued) QUEUED=1; shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
require_name_zone
gcloud_flags
if [ "$QUEUED" = 1 ] || [ "$TPU_SLICES" -gt 1 ]; then
  gcloud_run compute tpus queued-resources describe "$TPU_NAME-qr" "${GFLAGS[@]}" \
    --format="table(name.basename(), state.state)"
fi
# shellcheck disable=SC2317  # called through on_slices
describe_slice() {
  gcloud_run compute tpus tpu-vm describe "$TPU_NAME" "${GFLAGS[@]}" \
    --format="table(name.basename(), acceleratorType, state, health)"
}
rc=0
on_slices --keep_going describe_slice || rc=$?
# With several slices, one node gone still leaves the others' runs worth seeing.
if [ "$WITH_RUN" = 1 ] && { [ "$rc" = 0 ] || [ "$TPU_SLICES" -gt 1 ]; }; then
  remote="$(remote_run_vars)"
  remote+='p=$(cat "$d/$h.pid" 2>/dev/null || true); '
  remote+='if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then s="running (pid $p)"; '
  remote+='elif [ -f "$d/$h.exit" ]; then s="exited $(cat "$d/$h.exit")"; '
  remote+='elif [ -n "$p" ]; then s="killed (no exit status)"; else s="not launched"; fi; '
  remote+='echo "$h '"$TPU_RUN"': $s | $(tail -n 1 "$d/$h.log" 2>/dev/null)"'
  # shellcheck disable=SC2317
  run_slice() { ssh_workers all "$remote"; }
  on_slices --keep_going run_slice || rc=$?
fi
exit "$rc"
