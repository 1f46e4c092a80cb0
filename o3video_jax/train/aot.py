r"""Ahead-of-time compile the real train step for a TPU topology, on a CPU host (STYLE 13).

  python -m o3video_jax.train.aot --config experiments/configs/sft_qwen2_5_vl.py:size=7b \
      --topology v5p:4x4x4

Builds the mesh of the config over the devices of `topology` (`jax.experimental.topologies`),
the abstract train state and batch (shapes and shardings only: nothing is allocated), lowers
and compiles the SFT step (or the GSPO update for stage "gspo") and prints XLA's memory
analysis per device, so sharding mistakes and out-of-memory configs show up before a pod is
booked. Needs libtpu (`pip install -e ".[tpu]"`); without it the command stops with a clear
error.
"""

from __future__ import annotations

import importlib.util
import os
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from o3video_jax.models.qwen2_5_vl import ModelInputs, Qwen25VL
from o3video_jax.models.qwen2_5_vl.inputs import PATCH_DIM
from o3video_jax.train import experiment, sharding, steps
from o3video_jax.train.state import TrainState, make_optimizer

_TOPOLOGY_RE = re.compile(r"^(v\d+[a-z]*):(\d+(x\d+){1,2})$")


class LibTPUMissingError(RuntimeError):
    """TPU topologies can only be described (and compiled for) with libtpu installed."""


def parse_topology(name: str) -> tuple[str, tuple[int, ...]]:
    """'v5p:4x4x4' -> ('v5p', (4, 4, 4)); ValueError naming the expected form otherwise."""
    m = _TOPOLOGY_RE.match(name or "")
    if not m:
        raise ValueError(f"topology {name!r} is not like 'v5p:4x4x4' or 'v5e:4x4'")
    return m.group(1), tuple(int(s) for s in m.group(2).split("x"))


def topology_devices(name: str) -> list:
    parse_topology(name)
    if importlib.util.find_spec("libtpu") is None:
        raise LibTPUMissingError(
            f"AOT compilation for TPU topology {name!r} needs libtpu, which is not installed; "
            'install the TPU extra (pip install -e ".[tpu]", i.e. jax[tpu]) on this CPU host'
        )
    # Describing a topology does not touch TPU hardware, so the single-process lock libtpu
    # takes by default (which fails beside another JAX process holding it) is not needed.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(topology_name=name, platform="tpu")
    except Exception as e:  # noqa: BLE001 - libtpu reports bad names in many ways
        raise ValueError(f"libtpu cannot describe topology {name!r}: {e}") from e
    return list(desc.devices)


def abstract_inputs(
    batch: int, length: int, patches: int, vision_rows: int | None = None
) -> ModelInputs:
    """Abstract `ModelInputs`; `vision_rows` (default `batch`): rows of the vision fields
    (batch // G when a GSPO group shares its prompt's pixels, `Qwen25VL(vision_group=G)`)."""
    i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)
    bv = batch if vision_rows is None else vision_rows
    return ModelInputs(
        input_ids=i32(batch, length),
        segment_ids=i32(batch, length),
        positions=i32(3, batch, length),
        rope_deltas=i32(batch),
        pixel_values=jax.ShapeDtypeStruct((bv, patches, PATCH_DIM), jnp.float32),
        vision_pos=i32(bv, patches, 2),
        window_index=i32(bv, patches // 4),
        window_segment_ids=i32(bv, patches),
        frame_segment_ids=i32(bv, patches),
        feature_index=i32(batch, length),
    )


def compile_step(config: ml_collections.ConfigDict, devices: list) -> Any:
    """Lowers and compiles the config's train step over `devices`; returns the executable."""
    from o3video_jax.rl import gspo, rollouts
    from o3video_jax.rl.loop import gspo_step_config
    from o3video_jax.train.loop import sft_step_config

    rules = [tuple(r) for r in config.sharding.rules]
    mesh = sharding.make_mesh(dict(config.mesh), devices)
    mc = experiment.model_config(config)
    model = Qwen25VL(mc)
    tx = make_optimizer(config.optim)
    rng = jax.random.PRNGKey(0)
    dummy = experiment.init_inputs(mc)
    init_params = lambda key: model.init(key, dummy)["params"]
    shardings = sharding.state_shardings(init_params, tx, rng, mesh, rules)

    def create(key):
        k1, k2 = jax.random.split(key)
        return TrainState.create(nn.unbox(init_params(k1)), tx, k2)

    state = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        jax.eval_shape(create, rng),
        shardings,
    )
    d = config.data
    f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
    if config.stage == "gspo":
        g = config.rl.group_size
        prompts = d.batch_size // max(config.rl.minibatches, 1)
        rows = prompts * g
        # The layout the loop feeds: pixels once per prompt when `rollouts.can_share_vision`.
        shared = config.rl.get("share_vision", True) and rollouts.can_share_vision(
            prompts, rollouts.batch_shards(mesh), int(config.optim.get("microbatches", 1))
        )
        batch = {
            "inputs": abstract_inputs(
                rows, d.max_seq_len, d.max_patches, prompts if shared else rows
            ),
            "targets": jax.ShapeDtypeStruct((rows, d.max_seq_len), jnp.int32),
            "mask": f32(rows, d.max_seq_len),
            "advantages": f32(rows),
            "old_logp": f32(rows, d.max_seq_len),
            "ref_logp": f32(rows, d.max_seq_len),
        }
        step = gspo.make_gspo_update(model, gspo_step_config(config), mesh, shardings, rules=rules)
    else:
        batch = {
            "inputs": abstract_inputs(d.batch_size, d.max_seq_len, d.max_patches),
            "targets": jax.ShapeDtypeStruct((d.batch_size, d.max_seq_len), jnp.int32),
            "loss_mask": f32(d.batch_size, d.max_seq_len),
        }
        step = steps.make_sft_step(model, sft_step_config(config), mesh, shardings, rules=rules)
    return step.lower(state, batch).compile()


def report(compiled: Any, n_devices: int) -> str:
    m = compiled.memory_analysis()
    gib = lambda x: f"{x / 2**30:8.2f} GiB"
    fields = (
        ("arguments", "argument_size_in_bytes"),
        ("outputs", "output_size_in_bytes"),
        ("aliased", "alias_size_in_bytes"),
        ("temporaries", "temp_size_in_bytes"),
        ("code", "generated_code_size_in_bytes"),
    )
    lines = [f"memory per device ({n_devices} devices):"]
    total = 0
    for label, attr in fields:
        value = int(getattr(m, attr, 0) or 0)
        lines.append(f"  {label:12s}{gib(value)}")
        if attr != "alias_size_in_bytes":
            total += value
    total -= int(getattr(m, "alias_size_in_bytes", 0) or 0)
    lines.append(f"  {'total':12s}{gib(total)}")
    return "\n".join(lines)


def main(argv):
    del argv
    from absl import flags

    config, topology = flags.FLAGS.config, flags.FLAGS.topology
    devices = topology_devices(topology)
    print(f"{topology}: {len(devices)} devices, mesh {dict(config.mesh)}", flush=True)
    compiled = compile_step(config, devices)
    print(report(compiled, len(devices)))


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "experiment config", lock_config=True)
    flags.DEFINE_string("topology", None, "TPU topology, e.g. v5p:4x4x4", required=True)
    flags.mark_flags_as_required(["config"])
    app.run(main)
