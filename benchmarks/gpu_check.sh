#!/usr/bin/env bash
# GPU check on a CUDA host, in one command (under 10 minutes on one H100/H200):
#   bash benchmarks/gpu_check.sh [--quick] [--sections parity,attention,sampler,train,step]
# Runs benchmarks/gpu_check.py: HF parity on the GPU, the cuDNN attention path, our sampler vs
# transformers generate on the same GPU, one SFT and one GSPO run of the tiny synthetic config,
# and a 3B-shaped bf16 training step (tokens/s, fraction of peak). The summary is printed and
# written to $OUT/gpu_check.md (or /tmp/gpu_check.md).
#
# It expects the project installed (`pip install -e ".[gpu]"` plus torch and transformers for
# the sampler comparison). On a machine without network access, put wheels of the missing
# pure-Python/binary dependencies in .whl/ and they are installed into /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec python3 benchmarks/gpu_check.py "$@"
