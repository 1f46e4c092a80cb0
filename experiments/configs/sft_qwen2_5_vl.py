r"""SFT (cold start) of Qwen2.5-VL on STGR-SFT, as in Open-o3 Video stage 1.

Args (`:arg`): size=3b|7b|32b|72b (default 7b), slice=NAME (the booked slice, e.g. v6e-64,
v5p-64: mesh, batch, microbatches and remat for it, and preflight checks the device count;
common.SLICES lists them), num_slices=N (multislice: N such slices, the data axis over DCN),
runlocal (tiny model, CPU smoke test).

Launch on a TPU VM (every worker runs the same command):
  tpu_scripts/launch.sh NAME ZONE -- python -m o3video_jax.train \
    --config experiments/configs/sft_qwen2_5_vl.py:size=7b \
    --config.model.hf_checkpoint=/data/Qwen2.5-VL-7B-Instruct \
    --config.data.train_json=/data/json_data/STGR-SFT.json \
    --config.data.media_root=/data/videos --workdir gs://BUCKET/runs/sft7b
Local smoke test:
  python -m o3video_jax.train --config experiments/configs/sft_qwen2_5_vl.py:runlocal \
    --workdir /tmp/sft_smoke
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402

# Patch budget of one example (tests/test_plan.py derives it from `vision.smart_resize`): a
# frame at the Open-o3 frame pixels (data.frame_min/max_pixels = 100352 / 105369) costs at most
# 576 patches at 16:9, 4:3 and 9:16 of any size (480 for 640x360, 520 for 640x480, 560 for an
# upscaled 320x240, 576 for 256x144), and a temporal-spatial example adds its key frames, each
# resized to the frame size: 16 frames + 4 key frames. `python -m o3video_jax.data.plan`
# measures the real distribution (how many key frames, which sizes) of a data set.
FRAME_PATCHES, FRAMES, KEY_FRAMES = 576, 16, 4
MAX_PATCHES = (FRAMES + KEY_FRAMES) * FRAME_PATCHES  # 11520 = 180 windows of 64 patches

# Mesh per size: FSDP over the whole slice; tensor parallelism for the largest models, within
# one host (4 chips on v4/v5p hosts): a batch shard that spans hosts would need the same rows
# from two processes.
_MESH = {
    "3b": {"data": 1, "fsdp": -1, "tensor": 1},
    "7b": {"data": 1, "fsdp": -1, "tensor": 1},
    "32b": {"data": 1, "fsdp": -1, "tensor": 4},
    "72b": {"data": 1, "fsdp": -1, "tensor": 4},
}


def get_config(arg=None):
    a = common.parse_arg(arg, size="7b", slice="", num_slices=1, runlocal=False)
    c = common.base_config()
    c.stage = "sft"
    c.model.preset = a.size
    c.model.scan_layers = True  # compile time flat in depth (stacked layer params)
    c.mesh.update(_MESH[a.size])
    # Open-o3 Video SFT: lr 1e-6, linear schedule without warm-up, 1 epoch (31,166 records at 8
    # per step), max_grad_norm 5, bf16, gradient checkpointing; loss over the whole conversation.
    # Upstream: 8 rows a step on 8 GPUs. Here one row per batch shard (mesh data x fsdp), so
    # any slice gets a valid batch (8 on v6e-8, 64 on v5p:4x4x4); the run length stays one epoch.
    c.total_steps = 0
    c.epochs = 1.0
    c.data.num_examples = 31166
    c.optim.lr = 1e-6
    c.optim.schedule = "linear"
    c.optim.weight_decay = 0.0
    c.data.batch_size = 0
    c.data.per_device_batch_size = 1
    c.data.loss_mask = "original"
    c.data.max_seq_len = 8192
    c.data.max_frames = FRAMES
    c.data.max_patches = MAX_PATCHES  # one example with 4 key frames; see FRAME_PATCHES
    c.ckpt.save_every = 500
    if a.slice:
        common.apply_slice(c, a.slice, a.size, a.num_slices)
    elif a.num_slices != 1:
        raise ValueError("num_slices= needs slice= (e.g. slice=v5p-64,num_slices=2)")
    if a.runlocal:
        c.model.preset = "tiny"
        c.model.dtype = "float32"
        c.mesh.update({"data": -1, "fsdp": 1, "tensor": 1})
        c.total_steps = 4
        c.data.batch_size = 2
        c.data.per_device_batch_size = 0
        c.data.max_seq_len = 1024
        c.data.max_patches = 1024
        c.data.workers = 0
        c.ckpt.save_every = 2
        c.log.every = 1
    c.lock()
    return c
