r"""GSPO (stage 2) of Qwen2.5-VL on STGR-RL with the spatio-temporal rewards.

Args (`:arg`): size=3b|7b|32b|72b (default 7b), preset=open_o3_video|gspo_paper (default
open_o3_video), slice=NAME and num_slices=N (as sft_qwen2_5_vl.py), runlocal (tiny model, CPU
smoke test). The presets live in
`o3video_jax.rl.gspo.presets()`; every field stays overridable with --config.rl.x=...

`open_o3_video` reproduces Open-o3 Video (G=4, temperature 1.0, top-p 0.95, eps 0.2, beta 0.04 with
the k3 KL clamped at 10, one update per rollout batch, lr 1e-6 cosine, 8 prompts per step, and
the original's one-sided thk_spatial time gate `rl.spatial_gate=reference`); `gspo_paper` uses
the GSPO paper's clipping (eps 3e-4 / 4e-4, beta 0, 4 minibatch updates) and the corrected gate
`rl.spatial_gate=intended` (|g - T| < 1 s), the default of every other config.

Launch on a TPU VM (every worker runs the same command):
  tpu_scripts/launch.sh NAME ZONE -- python -m o3video_jax.train \
    --config experiments/configs/gspo_qwen2_5_vl.py:size=7b \
    --config.model.hf_checkpoint=gs://BUCKET/runs/sft7b/hf \
    --config.data.train_json=/data/json_data/STGR-RL.json \
    --config.data.media_root=/data/videos --workdir gs://BUCKET/runs/gspo7b
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402
from sft_qwen2_5_vl import _MESH, FRAMES, MAX_PATCHES  # noqa: E402

from o3video_jax.rl import gspo  # noqa: E402

_PRESET_FIELDS = (
    "eps_low", "eps_high", "beta", "kl_clamp", "ratio", "group_size", "temperature", "top_p",
    "old_logp", "minibatches", "spatial_gate",
)  # fmt: skip


def get_config(arg=None):
    a = common.parse_arg(
        arg, size="7b", preset="open_o3_video", slice="", num_slices=1, runlocal=False
    )
    c = common.base_config()
    c.stage = "gspo"
    c.model.preset = a.size
    c.model.scan_layers = True  # compile time flat in depth (stacked layer params)
    c.mesh.update(_MESH[a.size])
    # Upstream: 8 prompts a step (4654 steps). Here one prompt per batch shard (mesh data x
    # fsdp), one epoch of STGR-RL's 37,228 prompts whatever the slice; the lr horizon counts
    # optimiser updates (rl.num_updates x rl.minibatches per step, drivers.preflight).
    c.total_steps = 0
    c.epochs = 1.0
    c.data.num_examples = 37228
    c.optim.lr = 1e-6
    c.optim.schedule = "cosine"
    c.optim.weight_decay = 0.01
    c.data.batch_size = 0
    c.data.per_device_batch_size = 1
    # Prompts of 16 frames + 4 key frames take ~3k tokens; buckets [] -> [1024, 2048, 4096].
    c.data.max_seq_len = 4096 + 768
    c.rl.prompt_buckets = []
    # Pixels of one prompt: 16 frames + 4 key frames at the worst frame size (sft config).
    c.data.max_frames = FRAMES
    c.data.max_patches = MAX_PATCHES
    presets = gspo.presets()
    if a.preset not in presets:
        raise ValueError(f"unknown rl preset {a.preset!r}; use one of {sorted(presets)}")
    c.rl.preset = a.preset
    for field in _PRESET_FIELDS:  # `minibatches` = optimiser updates per rollout batch
        c.rl[field] = presets[a.preset][field]
    c.rl.num_updates = 1
    if a.slice:
        common.apply_slice(c, a.slice, a.size, a.num_slices)
    elif a.num_slices != 1:
        raise ValueError("num_slices= needs slice= (e.g. slice=v5p-64,num_slices=2)")
    if a.runlocal:
        c.model.preset = "tiny"
        c.model.dtype = "float32"
        c.mesh.update({"data": -1, "fsdp": 1, "tensor": 1})
        c.total_steps = 3
        c.data.batch_size = 2
        c.data.per_device_batch_size = 0
        c.data.max_seq_len = 1024 + 32
        c.data.max_patches = 1024
        c.data.workers = 0
        c.rl.max_new_tokens = 32
        c.rl.prompt_buckets = [512, 1024]
        c.ckpt.save_every = 2
        c.log.every = 1
    c.lock()
    return c
