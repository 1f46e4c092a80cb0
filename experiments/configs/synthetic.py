r"""Synthetic end-to-end run on CPU: tiny Qwen2.5-VL, generated videos, tiny tokenizer.

Args (`:arg`): stage=sft|gspo|sft+gspo (default sft), size=tiny|demo (default demo: hidden 128, 4
layers; tiny: the `tiny` preset with 56x56 frames, for tests), videos=N (training videos).

The data (videos, STGR-SFT/RL records, a held-out split) and the tiny BPE tokenizer are
generated into WORKDIR/synthetic on the first run (o3video_jax.data.synthetic_runs).

  python -m o3video_jax.train --config experiments/configs/synthetic.py --workdir /tmp/syn_sft
  python -m o3video_jax.train --config experiments/configs/synthetic.py:stage=gspo \
    --config.model.hf_checkpoint=/tmp/syn_sft/hf --workdir /tmp/syn_gspo
Both stages in one command (SFT, export, GSPO from the export; rerun to resume either stage):
  python -m o3video_jax.train --config experiments/configs/synthetic.py:stage=sft+gspo \
    --workdir /tmp/syn [--config.gspo_stage.total_steps=20]
The demo (`python -m o3video_jax.demo --workdir DIR`) runs both stages with evaluations.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402

from o3video_jax.train import two_stage  # noqa: E402

SYSTEM_PROMPT = (
    "Reason in <think></think> citing <obj>object</obj><box>[x1,y1,x2,y2]</box>at<t>time</t>s "
    "evidence, then answer in <answer></answer>."
)


def get_config(arg=None):
    a = common.parse_arg(arg, stage="sft", size="demo", videos=48)
    if a.stage not in ("sft", "gspo", two_stage.STAGE):
        raise ValueError(f"stage must be sft, gspo or {two_stage.STAGE}, got {a.stage!r}")
    if a.size not in ("tiny", "demo"):
        raise ValueError(f"size must be tiny or demo, got {a.size!r}")
    if a.stage == two_stage.STAGE:
        # The SFT config plus the leaves the GSPO run changes (o3video_jax.drivers.two_stage).
        c = _config(a, "sft")
        c.stage = two_stage.STAGE
        c.gspo_stage = two_stage.stage_overrides(c, _config(a, "gspo"))
    else:
        c = _config(a, a.stage)
    c.lock()
    return c


def _config(a, stage):
    c = common.base_config()
    c.stage = stage
    c.model.preset = "tiny"
    c.model.dtype = "float32"
    c.model.remat = "none"
    c.mesh.update({"data": -1, "fsdp": 1, "tensor": 1})

    c.data.synthetic.videos = a.videos
    c.data.synthetic.eval_videos = 8
    c.data.layout = "flat"
    c.data.loss_mask = "assistant"
    # One prompt template for SFT, RL and evaluation: a tiny model does not bridge the
    # upstream SFT/RL prompt differences (system prompt, "Question: ", frame labels).
    c.data.sft_prompts = "rl"
    c.data.prompt_quirks = "corrected"
    # A model trained from scratch gains nothing from the Open-o3 instructions (~220 tokens of
    # every row); one short sentence keeps the chat layout and makes every step ~1.7x cheaper.
    c.data.system_prompt = SYSTEM_PROMPT
    c.data.packing = "none"
    c.data.workers = 0
    c.data.fps = 2.0
    c.data.min_frames = 4
    c.data.max_frames = 6
    c.data.frame_min_pixels = 28 * 28
    c.data.frame_max_pixels = 84 * 56  # 6 merged tokens per frame
    c.data.synthetic.width = 84
    c.data.synthetic.height = 56
    c.data.max_seq_len = 448  # longest synthetic SFT row ~420 tokens
    c.data.max_patches = 192
    c.data.batch_size = 8

    c.optim.lr = 3e-3
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 10
    c.optim.weight_decay = 0.0
    c.optim.b2 = 0.98
    c.optim.grad_clip = 1.0
    c.total_steps = 200
    c.sft.ce_chunk = 128

    c.rl.group_size = 4
    c.rl.max_new_tokens = 144
    # One bucket (the longest prompt has ~305 tokens): one prefill/decode compile.
    c.rl.prompt_buckets = [336]
    c.rl.temperature = 1.0
    c.rl.top_p = 1.0
    c.rl.num_updates = 1
    c.rl.minibatches = 1
    c.rl.beta = 0.0

    c.ckpt.save_every = 50
    c.ckpt.keep = 2
    c.log.every = 1

    if stage == "gspo":
        # 8 prompts x G=8 samples at temperature 0.6 (closer to the greedy policy that the
        # evaluation decodes), two minibatch updates per rollout batch (GSPO's off-policy
        # ratio, so clipping can engage), a constant lr with the k3 KL to the SFT model as an
        # anchor: without it (beta 0) lr >= 3e-4 collapses the format within a few steps.
        c.total_steps = 36
        c.optim.lr = 2e-4
        c.optim.warmup_steps = 0
        c.optim.schedule = "constant"
        c.data.batch_size = 8
        c.rl.group_size = 8
        c.rl.temperature = 0.6
        c.rl.beta = 0.04
        c.rl.minibatches = 2
        c.data.max_seq_len = 336 + 144
    if a.size == "demo":
        c.model.text_overrides = (
            "hidden_size=128,intermediate_size=384,num_hidden_layers=4,"
            "num_attention_heads=4,num_key_value_heads=2,rope_theta=10000.0"
        )
        c.model.vision_overrides = "hidden_size=64,intermediate_size=128,num_heads=2"
    else:
        c.data.synthetic.videos = min(a.videos, 8)
        c.data.synthetic.eval_videos = 2
        c.data.synthetic.width = 56
        c.data.synthetic.height = 56
        c.data.max_frames = 4
        c.data.frame_max_pixels = 56 * 56
        c.data.max_seq_len = 416 if stage == "sft" else 256 + 32
        c.data.max_patches = 128
        c.data.batch_size = 2
        c.rl.group_size = 4
        c.rl.minibatches = 1
        c.total_steps = 6
        c.optim.warmup_steps = 0
        c.rl.max_new_tokens = 32
        c.rl.prompt_buckets = [256]
        c.ckpt.save_every = 2
    return c
