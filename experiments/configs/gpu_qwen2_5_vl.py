r"""SFT or GSPO of Qwen2.5-VL on one NVIDIA GPU host (default: 3B on 8 GPUs).

Args (`:arg`): stage=sft|gspo (default sft), size=3b|7b (default 3b), gpus=N (default 8),
preset=open_o3_video|gspo_paper (GSPO only). Everything else is sft_qwen2_5_vl.py /
gspo_qwen2_5_vl.py; this config changes only what a GPU host needs: FSDP over the host's GPUs,
cuDNN fused attention (bfloat16 activations, which cuDNN requires: a float32 model.dtype falls
back to the XLA attention with a warning), the batch as a multiple of the GPU count.

  pip install -e ".[gpu]"
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 python -m o3video_jax.train \
    --config experiments/configs/gpu_qwen2_5_vl.py:stage=sft,size=3b \
    --config.model.hf_checkpoint=/data/Qwen2.5-VL-3B-Instruct \
    --config.data.train_json=/data/json_data/STGR-SFT.json \
    --config.data.media_root=/data/videos --workdir /data/runs/sft3b_gpu
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402
import gspo_qwen2_5_vl  # noqa: E402
import sft_qwen2_5_vl  # noqa: E402

UPSTREAM_BATCH = 8


def get_config(arg=None):
    a = common.parse_arg(arg, stage="sft", size="3b", gpus=8, preset="open_o3_video")
    if a.stage not in ("sft", "gspo"):
        raise ValueError(f"stage must be sft or gspo, got {a.stage!r}")
    if a.size not in ("3b", "7b"):
        raise ValueError(f"size must be 3b or 7b on one GPU host, got {a.size!r}")
    if a.gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {a.gpus}")
    if a.stage == "sft":
        c = sft_qwen2_5_vl.get_config(f"size={a.size}")
    else:
        c = gspo_qwen2_5_vl.get_config(f"size={a.size},preset={a.preset}")
    c.model.attention = "cudnn"
    c.model.scan_layers = True  # compile time flat in depth (stacked layer params)
    c.model.dtype = "bfloat16"  # cuDNN's fused attention takes bf16/fp16 only
    c.mesh.update({"data": 1, "fsdp": a.gpus, "tensor": 1})
    # The upstream recipe's 8 rows (SFT) or prompts (GSPO) a step, rounded to a multiple of the
    # GPU count (one per GPU at least); an explicit batch wins over data.per_device_batch_size.
    c.data.batch_size = max(UPSTREAM_BATCH, a.gpus) // a.gpus * a.gpus
    c.data.workers = 8
    return c
