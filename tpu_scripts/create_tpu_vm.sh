#!/usr/bin/env bash
# Create a Cloud TPU VM (single host or pod slice).
# Usage: tpu_scripts/create_tpu_vm.sh NAME ZONE ACCELERATOR_TYPE [RUNTIME_VERSION]
#   e.g. tpu_scripts/create_tpu_vm.sh o3v-v5p us-east5-a v5p-64 v2-alpha-tpuv5
set -euo pipefail
NAME=${1:?name}; ZONE=${2:?zone}; TYPE=${3:?accelerator type}; RUNTIME=${4:-tpu-ubuntu2204-base}
gcloud compute tpus tpu-vm create "$NAME" --zone "$ZONE" --accelerator-type "$TYPE" \
  --version "$RUNTIME"
