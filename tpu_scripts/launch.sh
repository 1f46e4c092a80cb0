#!/usr/bin/env bash
# Run the same training command on all workers of a TPU VM (multi-host: every worker runs it;
# the program calls jax.distributed.initialize() itself).
# Usage: tpu_scripts/launch.sh NAME ZONE -- python -m o3video_jax.train --config ... --workdir gs://...
set -euo pipefail
NAME=${1:?name}; ZONE=${2:?zone}; shift 2
[ "${1:-}" = "--" ] && shift
CMD="cd ~/o3video_jax && $*"
gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all --command "$CMD"
