"""Shared defaults for experiment configs: every leaf a run can override with --config.x=..."""

from __future__ import annotations

import ml_collections

from o3video_jax.mesh import DEFAULT_RULES
from o3video_jax.rewards.registry import DEFAULT_WEIGHTS


def parse_arg(arg: str | None, **defaults):
    """Parses "size=7b,runlocal" into a ConfigDict of the few knobs worth sweeping."""
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in out:
            raise ValueError(f"unknown config arg {key!r}; known: {sorted(out.keys())}")
        if not value:
            out[key] = True
        elif isinstance(defaults[key], bool):
            out[key] = value.lower() in ("1", "true", "yes")
        else:
            out[key] = type(defaults[key])(value)
    return out


# The slices a run books, by the accelerator type `gcloud ... --accelerator-type` takes. v5p and
# v4 names count TensorCores (2 per chip: v5p-64 is 32 chips, 8 hosts of 4); v6e and v5e
# (v5litepod) names count chips (v6e-64 is 64 chips, 16 hosts of 4; v6e-8 is one host of 8).
# topology: what `python -m o3video_jax.train.aot --topology` takes for the same chips.
# hbm_gib: memory per chip (v5p 95 GB, v6e 32 GB, v5e 16 GB, v4 32 GB).
SLICES = {
    "v5p-8": ("v5p:2x2x1", 4, 1, 88.5),
    "v5p-16": ("v5p:2x2x2", 8, 2, 88.5),
    "v5p-32": ("v5p:2x2x4", 16, 4, 88.5),
    "v5p-64": ("v5p:2x4x4", 32, 8, 88.5),
    "v5p-128": ("v5p:4x4x4", 64, 16, 88.5),
    "v5p-256": ("v5p:4x4x8", 128, 32, 88.5),
    "v6e-8": ("v6e:2x4", 8, 1, 29.8),
    "v6e-16": ("v6e:4x4", 16, 4, 29.8),
    "v6e-32": ("v6e:4x8", 32, 8, 29.8),
    "v6e-64": ("v6e:8x8", 64, 16, 29.8),
    "v6e-256": ("v6e:16x16", 256, 64, 29.8),
    "v5litepod-16": ("v5e:4x4", 16, 4, 14.9),
    "v5litepod-64": ("v5e:8x8", 64, 16, 14.9),
    "v4-32": ("v4:2x2x4", 16, 4, 29.8),
}

# Sizes whose full fine-tuning does not fit a 32 GB chip with FSDP alone (the 7B SFT step needs
# 30.80 GiB per chip with one 8,192-token row per chip at 64 chips, README): tensor parallelism
# over a host's 4 chips quarters the attention/MLP activations and leaves a quarter of the
# rows per step. Estimated, not yet AOT-measured for the v6e rows (BUILD.md lists them).
_TENSOR_BELOW_GIB = {"7b": 40.0, "32b": 1e9, "72b": 1e9}


def slice_info(name: str) -> dict:
    if name not in SLICES:
        raise ValueError(f"unknown slice {name!r}; known: {sorted(SLICES)}")
    topology, chips, hosts, hbm = SLICES[name]
    return {"topology": topology, "chips": chips, "hosts": hosts, "hbm_gib": hbm}


def apply_slice(c: ml_collections.ConfigDict, name: str, size: str, num_slices: int = 1) -> None:
    """Mesh, batch, microbatches and remat of an SFT/GSPO run of `size` on `num_slices` slices
    `name` (e.g. "v6e-64"); records it in `c.slice`, and preflight checks the device count."""
    info = slice_info(name)
    if num_slices < 1:
        raise ValueError(f"num_slices must be >= 1, got {num_slices}")
    tensor = 4 if info["hbm_gib"] < _TENSOR_BELOW_GIB.get(size, 0.0) else 1
    # data spans the slices over DCN (one gradient all-reduce a step); FSDP and tensor stay
    # within a slice (ICI). One row (SFT) / prompt (GSPO) per batch shard, as the shipped
    # configs; a single row cannot be split, so no microbatches; full remat.
    c.mesh.update({"data": num_slices, "fsdp": -1, "tensor": tensor})
    c.data.batch_size = 0
    c.data.per_device_batch_size = 1
    c.optim.microbatches = 1
    c.model.remat = "full"
    c.slice.name = name if num_slices == 1 else f"{num_slices}x{name}"
    c.slice.devices = info["chips"] * num_slices


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage = "sft"  # "sft" | "gspo" | "sft+gspo"
    c.seed = 0
    # Run steps (SFT steps / GSPO rollout steps); 0: ceil(epochs x data.num_examples / batch).
    c.total_steps = 1000
    c.epochs = 0.0
    c.nan_policy = "skip"  # "skip" the update or "stop" the run on a non-finite loss
    # The slice booked for the run ("v6e-64", "2xv5p-64") and its device count, set by the
    # configs' slice= arg; preflight checks the devices against it. 0 = any devices.
    c.slice = ml_collections.ConfigDict({"name": "", "devices": 0})

    c.model = ml_collections.ConfigDict()
    c.model.preset = "tiny"  # tiny | 3b | 7b | 32b | 72b
    c.model.hf_checkpoint = ""  # HF directory (config.json + safetensors); overrides preset
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = "full"  # none | full | save_dots
    c.model.attention = "xla"  # xla | pallas | cudnn
    # Decoder layers / vision blocks under one scan each (stacked params): compile time and
    # compile memory flat in depth. The shipped TPU/GPU configs turn it on.
    c.model.scan_layers = False
    # Preset edits, "k=v,..." on TextConfig / VisionConfig fields (e.g. "hidden_size=128,
    # num_hidden_layers=4"); mrope_section follows a changed head_dim. Ignored with hf_checkpoint.
    c.model.text_overrides = ""
    c.model.vision_overrides = ""

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.sharding = ml_collections.ConfigDict()
    c.sharding.rules = [list(r) for r in DEFAULT_RULES]
    # A mesh that cannot follow the slice's topology is an error; True takes the devices in
    # plain order instead (slower collectives).
    c.sharding.mesh_fallback = False

    c.data = ml_collections.ConfigDict()
    c.data.train_json = ""
    c.data.eval_json = ""
    c.data.media_root = ""
    c.data.eval_media_root = ""  # media of data.eval_json; "" = data.media_root
    c.data.layout = "upstream"  # upstream (DATA_ROOT/videos folder table) | flat
    c.data.tokenizer_dir = ""  # defaults to model.hf_checkpoint
    # Rows (SFT) or prompts (GSPO) per step, global; 0: data.per_device_batch_size x the batch
    # shards (mesh data x fsdp). Checked against the mesh before compiling (drivers.preflight).
    c.data.batch_size = 8
    c.data.per_device_batch_size = 0
    c.data.num_examples = 0  # records of data.train_json, for total_steps = 0 (epochs)
    c.data.max_seq_len = 4096
    c.data.max_patches = 16384
    c.data.packing = "first_fit"  # first_fit | best_fit | none
    c.data.fps = 2.0
    c.data.max_frames = 16
    c.data.min_frames = 4
    c.data.frame_min_pixels = 128 * 28 * 28
    c.data.frame_max_pixels = 105369
    c.data.image_max_pixels = 200704
    c.data.prompt_quirks = "original"  # original | corrected
    c.data.loss_mask = "assistant"  # assistant | original | answer (tokenizer.LOSS_MASKS)
    c.data.sft_prompts = "sft"  # sft: upstream SFT prompts | rl: SFT targets under RL prompts
    # open_o3: the Open-o3 per-task system prompts; any other text replaces them for every task
    c.data.system_prompt = "open_o3"
    c.data.workers = 2
    c.data.prefetch = 2
    c.data.shuffle = True
    c.data.max_error_fraction = 0.05
    # Synthetic data generated into WORKDIR/synthetic when videos > 0 and train_json is empty
    # (o3video_jax.data.synthetic_runs); also builds the tiny tokenizer there.
    c.data.synthetic = ml_collections.ConfigDict(
        {"videos": 0, "eval_videos": 0, "seed": 0, "width": 112, "height": 84, "fps": 4}
    )

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-6
    c.optim.schedule = "cosine"  # cosine | linear | constant
    c.optim.warmup_steps = 0  # run steps (x updates per step, drivers.preflight)
    # lr horizon in optimiser updates; -1: total_steps x updates per step (GSPO: rl.num_updates
    # x rl.minibatches; SFT: 1, microbatches accumulate into one update).
    c.optim.total_steps = -1
    c.optim.weight_decay = 0.01
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.grad_clip = 5.0
    c.optim.freeze_regex = ""  # e.g. "^visual/" freezes the vision tower
    c.optim.microbatches = 1

    c.sft = ml_collections.ConfigDict()
    c.sft.loss_norm = "token"  # token | sequence
    c.sft.ce_chunk = 512  # sequence chunk of the cross-entropy (the [B, L, V] logits never exist)

    c.rl = ml_collections.ConfigDict()
    c.rl.preset = "open_o3_video"  # open_o3_video | gspo_paper (o3video_jax.rl.gspo.presets)
    c.rl.group_size = 4
    c.rl.temperature = 1.0
    c.rl.top_p = 0.95
    c.rl.top_k = 0
    c.rl.max_new_tokens = 768
    # Prompt-length buckets of the sampler's prefill; []: derived from the prompt budget
    # data.max_seq_len - rl.max_new_tokens (drivers.preflight). Longer prompts are skipped.
    c.rl.prompt_buckets = []
    c.rl.eps_low = 0.2
    c.rl.eps_high = 0.2
    c.rl.beta = 0.04
    c.rl.kl_clamp = 10.0
    c.rl.ratio = "sequence"  # sequence (GSPO) | token (GRPO)
    c.rl.num_updates = 1
    c.rl.minibatches = 1
    c.rl.share_vision = (
        True  # training forwards run the vision tower once per prompt (docs/design.md decision 6)
    )
    c.rl.spatial_gate = "intended"  # intended | reference
    # Where rollouts decode (docs/design.md decision 15): "serving" reshards the policy once per
    # rollout batch into model.dtype weights, tensor-parallel over `tensor` chips (0: the chips
    # of one host, reduced to divide the heads and KV heads), prompt rows over the other chips;
    # "training" samples on the training layout (FSDP, float32 master weights). Preflight
    # resolves and checks it (drivers.preflight).
    c.rl.serving = ml_collections.ConfigDict({"layout": "serving", "tensor": 0})
    c.rl.old_logp = "rollout"  # rollout: recomputed before the updates | current: sg(logp)
    # One weight per reward of the table (the seven, then any added: docs/extending.md).
    c.rl.reward_weights = ml_collections.ConfigDict(dict(DEFAULT_WEIGHTS))

    c.ckpt = ml_collections.ConfigDict()
    c.ckpt.save_every = 500
    # Also a save at least this often (a 7B GSPO step takes ~22 s or more: 500 steps are hours).
    c.ckpt.save_every_minutes = 30.0
    c.ckpt.keep = 3
    c.ckpt.async_save = True
    c.ckpt.export_hf = True

    c.log = ml_collections.ConfigDict()
    c.log.every = 10
    c.log.eval_every = 0  # > 0: held-out evaluation of data.eval_json every this many steps
    c.log.eval_batches = 8  # SFT eval: at most this many batches (eval/loss, eval/accuracy)
    c.log.eval_prompts = 64  # GSPO eval: greedy completions of at most this many prompts
    c.log.tensorboard = True
    c.log.profile_steps = []  # e.g. [20, 21]: capture a jax.profiler trace of these steps
    c.log.progress = True  # tqdm progress bar on the console (process 0)
    return c
