#!/usr/bin/env bash
# Stop a run started by tpu_scripts/launch.sh on every worker: SIGTERM to the run's process
# group (the training loop then saves a checkpoint and exits), SIGKILL after --grace seconds.
# Usage: tpu_scripts/stop.sh --name NAME --zone ZONE [--run RUN] [--grace S] [--force] [--worker W]
#   --grace S    seconds to wait after SIGTERM before SIGKILL (default 120)
#   --force      SIGKILL at once
#   plus the common options of tpu_scripts/_common.sh (--project, --iap, --dry_run, --slices:
#   every slice at once, so each gets its SIGTERM now and its own grace period)
# shellcheck source=_common.sh
source "$(dirname "$0")/_common.sh"

WORKER=all; GRACE=120; FORCE=0
parse_common "$@"
take_positional TPU_NAME TPU_ZONE
set -- "${ARGS[@]+"${ARGS[@]}"}"
while [ $# -gt 0 ]; do
  case "$1" in
    --run) TPU_RUN=${2:?--run needs a name}; shift 2 ;;
    --worker) WORKER=${2:?--worker needs all or an index}; shift 2 ;;
    --grace) GRACE=${2:?--grace needs seconds}; shift 2 ;;
    --force) FORCE=1; shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ "$GRACE" =~ ^[0-9]+$ ]] || die "--grace needs whole seconds, got '$GRACE'"
if [ "$FORCE" = 1 ]; then GRACE=0; fi
require_name_zone
remote="$(remote_run_vars)"
remote+='p=$(cat "$d/$h.pid" 2>/dev/null || true); '
remote+='if [ -z "$p" ] || ! kill -0 "$p" 2>/dev/null; then echo "$h: '"$TPU_RUN"' is not running"; exit 0; fi; '
if [ "$FORCE" = 0 ]; then
  remote+='kill -TERM -- "-$p"; echo "$h: SIGTERM sent to '"$TPU_RUN"' (pid $p)"; '
  remote+="for _ in \$(seq $GRACE); do kill -0 \"\$p\" 2>/dev/null || break; sleep 1; done; "
fi
remote+='if kill -0 "$p" 2>/dev/null; then kill -KILL -- "-$p"; echo "$h: SIGKILL sent"; fi; '
remote+='echo "$h: stopped"'
stop_slice() { ssh_workers "$WORKER" "$remote"; }
on_slices --parallel stop_slice
