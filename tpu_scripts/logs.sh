#!/usr/bin/env bash
# Show the log of a run started by tpu_scripts/launch.sh, one worker or all (lines prefixed
# with the worker's hostname).
# Usage: tpu_scripts/logs.sh --name NAME --zone ZONE [--run RUN] [--worker W] [--lines N] [--follow]
#   --worker W   a worker index (default 0) or all
#   --lines N    last N lines (default 100)
#   --follow     keep following (tail -F) until interrupted
#   plus the common options of tpu_scripts/_common.sh (--project, --iap, --dry_run, --slices:
#   the worker(s) of every slice, slice by slice; with --follow all at once)
# shellcheck source=_common.sh
source "$(dirname "$0")/_common.sh"

WORKER=0; LINES=100; FOLLOW=0
parse_common "$@"
take_positional TPU_NAME TPU_ZONE
set -- "${ARGS[@]+"${ARGS[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --run) TPU_RUN=${2:?--run needs a name}; shift 2 ;;
    --worker) WORKER=${2:?--worker needs all or an index}; shift 2 ;;
    --lines) LINES=${2:?--lines needs a number}; shift 2 ;;
    --follow | -f) FOLLOW=1; shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ "$LINES" =~ ^[0-9]+$ ]] || die "--lines needs a number, got '$LINES'"
require_name_zone
tail_flags="-n $LINES"
if [ "$FOLLOW" = 1 ]; then tail_flags+=" -F"; fi
remote="$(remote_run_vars)"
remote+='if [ ! -f "$d/$h.log" ] && [ '"$FOLLOW"' = 0 ]; then echo "[$h] no log for '"$TPU_RUN"'"; exit 0; fi; '
remote+="tail $tail_flags \"\$d/\$h.log\" | sed -u \"s/^/[\$h] /\""
logs_slice() { ssh_workers "$WORKER" "$remote"; }
if [ "$FOLLOW" = 1 ]; then
  on_slices --parallel logs_slice
else
  on_slices --keep_going logs_slice
fi
