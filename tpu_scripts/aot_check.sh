#!/usr/bin/env bash
# Ahead-of-time compile the real train step for a TPU topology on a CPU host (no TPU needed):
# catches out-of-memory and sharding errors before a pod is booked. Needs `pip install jax[tpu]`.
# Usage: tpu_scripts/aot_check.sh CONFIG TOPOLOGY   e.g.  experiments/configs/sft_qwen2_5_vl.py:size=7b v5p:4x4x4
set -euo pipefail
CONFIG=${1:?config}; TOPOLOGY=${2:?topology e.g. v5p:4x4x4}
python -m o3video_jax.train.aot --config "$CONFIG" --topology "$TOPOLOGY"
