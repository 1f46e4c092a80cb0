"""What the SFT and GSPO loops share: config -> mesh, model, tokenizer, sharded state, data.

Shapes, then shardings, then state (docs/style.md rule 3): the train state's shardings come from
`jax.eval_shape` of the init and the logical rule table in the config; the state is then either
restored from the run directory's latest Orbax checkpoint (automatic resume), streamed from an
HF checkpoint into those shardings, or initialised by a jitted init that writes them directly.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from o3video_jax import io
from o3video_jax.checkpoints import hf
from o3video_jax.checkpoints.orbax import Checkpointer
from o3video_jax.data import pipeline, records, synthetic_runs
from o3video_jax.data.examples import ExampleBuilder, ExampleConfig
from o3video_jax.data.tokenizer import Tokenizer
from o3video_jax.drivers import preflight
from o3video_jax.drivers.model_config import model_config  # re-exported: experiment.model_config
from o3video_jax.models.qwen2_5_vl import Qwen25VL, Qwen25VLConfig
from o3video_jax.models.qwen2_5_vl.inputs import init_inputs  # noqa: F401 - re-exported for demo/aot
from o3video_jax.train import sharding
from o3video_jax.train.state import TrainState, make_optimizer


@dataclasses.dataclass
class Experiment:
    """Everything a loop needs, built from the config (see `setup`)."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: Mesh
    rules: list
    model_config: Qwen25VLConfig
    model: Qwen25VL
    tokenizer: Tokenizer
    state: TrainState
    shardings: TrainState
    checkpointer: Checkpointer
    start_step: int
    data_state: Any
    init_params: Any  # callable key -> params (the jitted init's function), for the reference
    synthetic: synthetic_runs.SyntheticData | None


# ---- data -------------------------------------------------------------------------------------
def prepare_synthetic(config: ml_collections.ConfigDict, workdir: str):
    """Generates the synthetic dataset when asked to and points the data config at it."""
    s = config.data.synthetic
    if s.videos <= 0 or config.data.train_json:
        return None
    kw = dict(
        videos=s.videos,
        eval_videos=s.eval_videos,
        seed=s.seed,
        width=s.width,
        height=s.height,
        fps=s.fps,
    )
    root = os.path.join(workdir, "synthetic")
    # One writer: process 0 generates, the others wait for it and then read the same files
    # (prepare is idempotent, so their call only returns the paths).
    if jax.process_index() == 0:
        synthetic_runs.prepare(root, **kw)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("o3video_jax synthetic data")
    data = synthetic_runs.prepare(root, **kw)
    with config.unlocked():
        config.data.train_json = data.sft_json if config.stage == "sft" else data.rl_json
        held = data.heldout_sft_json if config.stage == "sft" else data.heldout_rl_json
        if not config.data.eval_json:
            config.data.eval_json = held
            config.data.eval_media_root = data.heldout_media_root
        config.data.media_root = data.media_root
        config.data.layout = "flat"
        config.data.tokenizer_dir = config.data.tokenizer_dir or data.tokenizer_dir
    return data


def max_text_len(config: ml_collections.ConfigDict, kind: str) -> int:
    """Text tokens an example may have: data.max_seq_len for SFT; for RL prompts the budget
    data.max_seq_len - rl.max_new_tokens, capped by the largest rl.prompt_buckets entry, so a
    prompt no bucket holds is skipped and counted by the pipeline (`data.max_error_fraction`)
    instead of failing in the sampler."""
    d = config.data
    if kind != "rl":
        return int(d.max_seq_len)
    budget = int(d.max_seq_len) - int(config.rl.max_new_tokens)
    buckets = [int(b) for b in config.rl.prompt_buckets]
    return min(budget, max(buckets)) if buckets else budget


def example_builder(
    config: ml_collections.ConfigDict, tokenizer: Tokenizer, kind: str, media_root: str
) -> ExampleBuilder:
    d = config.data
    max_len = max_text_len(config, kind)
    if d.sft_prompts not in ("sft", "rl"):
        raise ValueError(f"data.sft_prompts must be 'sft' or 'rl', got {d.sft_prompts!r}")
    system = d.get("system_prompt", "open_o3")
    return ExampleBuilder(
        ExampleConfig(
            kind=kind,
            media_root=media_root,
            layout=d.layout,
            quirks=d.prompt_quirks,
            loss_mask=d.loss_mask,
            fps=d.fps,
            max_frames=d.max_frames,
            min_frames=d.min_frames,
            frame_min_pixels=d.frame_min_pixels,
            frame_max_pixels=d.frame_max_pixels,
            image_max_pixels=d.image_max_pixels,
            max_seq_len=max_len,
            max_patches=d.max_patches,
            prompt_split="rl" if kind == "sft" and d.sft_prompts == "rl" else "",
            system_prompt=None if system == "open_o3" else system,
        ),
        tokenizer,
    )


def dataset(
    config: ml_collections.ConfigDict,
    tokenizer: Tokenizer,
    model_config: Qwen25VLConfig,
    mode: str,
    json_path: str,
    media_root: str,
    *,
    batch_size: int,
    shuffle: bool,
    num_epochs: int | None,
    group_size: int = 1,
):
    """A grain dataset of SFT / RL / eval batches (this process's rows)."""
    d = config.data
    kind = "sft" if mode == "sft" else "rl"
    builder = example_builder(config, tokenizer, kind, media_root)
    max_len = max_text_len(config, kind)
    cfg = pipeline.PipelineConfig(
        batch_size=batch_size,
        max_seq_len=max_len,
        max_patches=d.max_patches,
        seed=config.seed,
        shuffle=shuffle,
        num_epochs=num_epochs,
        prefetch=d.prefetch,
        num_workers=d.workers,
        pack=d.packing != "none",
        pack_strategy=d.packing if d.packing != "none" else "first_fit",
        group_size=group_size,
        max_error_fraction=d.max_error_fraction,
    )
    raw = records.read_json_records(json_path)
    return pipeline.make_dataset(raw, builder, model_config, cfg, mode)


def train_iterator(exp: Experiment, kind: str, group_size: int | None = None):
    """The run's training data iterator ("sft" or "rl" records of `data.train_json`), resumed
    at the checkpoint's data state when there is one."""
    config = exp.config
    extra = {} if group_size is None else {"group_size": group_size}
    ds = dataset(
        config,
        exp.tokenizer,
        exp.model_config,
        kind,
        config.data.train_json,
        config.data.media_root,
        batch_size=local_batch_size(config.data.batch_size),
        shuffle=config.data.shuffle,
        num_epochs=None,
        **extra,
    )
    it = iter(ds)
    if exp.data_state is not None:
        it.set_state(exp.data_state)
    return it


def local_batch_size(global_batch: int) -> int:
    n = jax.process_count()
    if global_batch % n:
        raise ValueError(f"data.batch_size {global_batch} is not divisible by {n} processes")
    return global_batch // n


# ---- state --------------------------------------------------------------------------------------
def setup(config: ml_collections.ConfigDict, workdir: str) -> Experiment:
    """Builds mesh, model, tokenizer and the sharded train state (restored when possible).

    First of all, `preflight.apply` checks the config against the devices (before anything
    compiles) and writes the resolved batch, run length, lr horizon and prompt buckets into it.
    """
    resolved = preflight.apply(config, jax.device_count(), jax.process_count())
    if jax.process_index() == 0:
        print(preflight.summary(resolved), flush=True)
        for w in resolved.warnings:
            print(f"preflight warning: {w}", flush=True)
        print(preflight.save_plan(config, None, ""), flush=True)
    io.makedirs(workdir)
    synthetic = prepare_synthetic(config, workdir)
    rules = [tuple(r) for r in config.sharding.rules]
    mesh = sharding.make_mesh(dict(config.mesh), allow_fallback=config.sharding.mesh_fallback)
    mc = model_config(config)
    model = Qwen25VL(mc)
    tok_dir = config.data.tokenizer_dir or config.model.hf_checkpoint
    if not tok_dir:
        raise ValueError("set data.tokenizer_dir (or model.hf_checkpoint, which holds one)")
    tokenizer = Tokenizer.from_dir(tok_dir)
    if tokenizer.vocab_size > mc.vocab_size:
        raise ValueError(
            f"tokenizer in {tok_dir} has {tokenizer.vocab_size} tokens > model vocab {mc.vocab_size}"
        )

    tx = make_optimizer(preflight.optimizer_config(config))
    rng = jax.random.PRNGKey(config.seed)
    dummy = init_inputs(mc)
    init_params = lambda key: model.init(key, dummy)["params"]
    shardings = sharding.state_shardings(init_params, tx, rng, mesh, rules)
    ckpt = Checkpointer(
        workdir,
        save_every=config.ckpt.save_every,
        save_every_minutes=config.ckpt.save_every_minutes,
        keep=config.ckpt.keep,
        async_save=config.ckpt.async_save,
    )

    def create(key):
        init_key, state_key = jax.random.split(key)
        return TrainState.create(init_params(init_key), tx, state_key)

    data_state, start = None, 0
    if ckpt.latest_step() is not None:
        abstract = jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            jax.eval_shape(lambda k: nn.unbox(create(k)), rng),
            shardings,
        )
        state, data_state, start = ckpt.restore(abstract)
    elif config.model.hf_checkpoint:
        state = _state_from_hf(config, mc, tx, rng, mesh, rules, shardings)
    else:
        state, _ = sharding.make_sharded_state(init_params, tx, rng, mesh, rules)
    return Experiment(
        config=config,
        workdir=workdir,
        mesh=mesh,
        rules=rules,
        model_config=mc,
        model=model,
        tokenizer=tokenizer,
        state=state,
        shardings=shardings,
        checkpointer=ckpt,
        start_step=int(start),
        data_state=data_state,
        init_params=init_params,
        synthetic=synthetic,
    )


def initial_params(exp: Experiment) -> Any:
    """The run's initial parameters (HF checkpoint or the seeded init), sharded like the state:
    the frozen GSPO reference, recomputed on resume instead of being checkpointed."""
    config = exp.config
    if config.model.hf_checkpoint:
        dtype = jnp.dtype(config.model.param_dtype)
        _, params = hf.load(
            config.model.hf_checkpoint,
            dtype,
            mesh=exp.mesh,
            rules=exp.rules,
            progress=False,
            scan_layers=exp.model_config.scan_layers,
        )
        return params
    init_key, _ = jax.random.split(jax.random.PRNGKey(config.seed))
    init = lambda k: nn.unbox(exp.init_params(k))
    with jax.set_mesh(exp.mesh):
        return jax.jit(init, out_shardings=exp.shardings.params)(init_key)


def _state_from_hf(config, mc, tx, rng, mesh, rules, shardings) -> TrainState:
    dtype = jnp.dtype(config.model.param_dtype)
    loaded, params = hf.load(
        config.model.hf_checkpoint, dtype, mesh=mesh, rules=rules, scan_layers=mc.scan_layers
    )
    del loaded
    _, state_key = jax.random.split(rng)
    create = lambda p, k: TrainState.create(p, tx, k)
    with jax.set_mesh(mesh):
        return jax.jit(create, out_shardings=shardings, donate_argnums=0)(params, state_key)
