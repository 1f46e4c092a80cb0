#!/usr/bin/env bash
# Copy the repository to every worker of a TPU VM and install it with the TPU extra.
# Usage: tpu_scripts/setup_workers.sh NAME ZONE
set -euo pipefail
NAME=${1:?name}; ZONE=${2:?zone}
HERE=$(cd "$(dirname "$0")/.." && pwd)
gcloud compute tpus tpu-vm scp --recurse --worker=all --zone "$ZONE" "$HERE" "$NAME":~/o3video_jax
gcloud compute tpus tpu-vm ssh "$NAME" --zone "$ZONE" --worker=all \
  --command "cd ~/o3video_jax && python3 -m pip install -U pip && python3 -m pip install -e '.[tpu]'"
