r"""Ahead-of-time plan of a whole run for a TPU topology, on a CPU host (docs/style.md rule 13, docs/design.md decision 11).

  python -m o3video_jax.train.aot --config experiments/configs/sft_qwen2_5_vl.py:size=7b \
      --topology v5p:4x4x4
  python -m o3video_jax.train.aot --config experiments/configs/gspo_qwen2_5_vl.py:size=7b \
      --topology v5p:4x4x4

Builds the config's mesh over the devices of `topology` (`jax.experimental.topologies`; the
config is first checked against that many chips by `drivers.preflight`, which also resolves the
global batch and the GSPO prompt buckets), the abstract train state and inputs (shapes and
shardings only: nothing is allocated), and lowers and compiles **every program the run
executes**, at the shapes the loops feed:

  SFT   sft_step                 the train step, [batch, max_seq_len] rows, max_patches each
  GSPO  reshard                  the policy from the training layout into the serving layout
                                 (`rl.serving`, docs/design.md decision 15: model.dtype weights,
                                 tensor-parallel; absent with rl.serving.layout=training), once
                                 per rollout batch; prefill and decode then run on that layout
        prefill[L]               the sampler's prefill of every prompt bucket L ([P, L] prompts,
                                 their pixels; KV cache of P*G rows with L + T slots out)
        decode[L]                the decode loop (T = rl.max_new_tokens steps at most) of that
                                 bucket's cache, donated
        logprob                  rollout-policy log-probs of the P*G training rows
                                 (max bucket + T positions), when rl.old_logp == "rollout"
        logprob_ref              the same program on the frozen reference params (rl.beta > 0)
        update                   one GSPO optimiser update on a minibatch (rl.minibatches)
  eval  prefill[L], decode[L]    the evaluation sampler (experiments/configs/eval.py, stage
                                 "eval"): per prompt bucket L, eval.batch_size prompts with
                                 the largest vision bucket (eval.max_patches per row) and the
                                 decode loop of eval.max_new_tokens steps, G = eval.samples;
                                 the model config the evaluation builds (bf16 params alone,
                                 `evaluate.generate.eval_model_config`: frame bound, tiled
                                 prefill)

For each it prints XLA's memory analysis per chip: arguments, outputs, temporaries, and
`resident`, the bytes of the long-lived arrays that are not among its arguments but occupy the
chip while it runs (the optimiser state during the sampler and the log-prob forwards, the
reference params everywhere when rl.beta > 0); total = resident + arguments + outputs -
aliased (donated) + temporaries, against the chip's HBM. Then XLA's FLOP and byte counts
(`compiled.cost_analysis()`, per chip) and a roofline time = max(FLOPs / peak, bytes / HBM
bandwidth) with an MFU estimate (`train.roofline`, per-chip table with sources).

Each program is compiled and analysed, then its executable is dropped (only the numbers are
kept), so a whole plan compiles in one process; the table also gives each program's compile
seconds (lowering + compilation) and the peak resident memory of this host process while it
compiled (`host RSS`: the kernel's VmHWM after resetting it before the program, absolute, so
it includes the process's baseline; where the reset is refused, the process peak so far).

XLA's cost analysis counts the body of a loop once. With `model.scan_layers` (the shipped TPU
configs) that includes the layer scans: XLA's FLOP and byte counts then cover one decoder layer
and one vision block, and the table says so; the unrolled graph
(`--config.model.scan_layers=False`, the same computation) gives the roofline. The tool multiplies by the known trip
counts of the loops that hold the whole program (the decode loop: T steps, which every row
runs at most; the microbatch scan: optim.microbatches); the chunked unembedding (`lax.map`
over sft.ce_chunk positions) stays counted once, so for the compute term the tool takes the
larger of XLA's FLOPs and the analytic model FLOPs (`roofline.model_flops`).
Needs libtpu (`pip install -e ".[tpu]"`); without it the command stops with a clear error.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import math
import os
import re
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import NamedSharding, PartitionSpec

from o3video_jax.drivers import experiment, preflight
from o3video_jax.models.qwen2_5_vl import ModelInputs, Qwen25VL
from o3video_jax.models.qwen2_5_vl.inputs import PATCH_DIM
from o3video_jax.train import roofline, sharding, steps
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


def topology_devices(name: str, num_slices: int = 1) -> list:
    """The devices of TPU topology `name` (`num_slices` > 1: that many slices of it, joined
    over DCN, as a multislice queued resource with --node-count gives)."""
    parse_topology(name)
    if num_slices < 1:
        raise ValueError(f"num_slices must be positive, got {num_slices}")
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
        kw = {"num_slices": num_slices} if num_slices > 1 else {}
        desc = topologies.get_topology_desc(topology_name=name, platform="tpu", **kw)
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


# ---- per-chip bytes --------------------------------------------------------------------------
def chip_bytes(tree: Any) -> int:
    """Bytes one chip holds of an abstract tree (ShapeDtypeStructs with shardings; the
    largest shard when they differ)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.shape
        if getattr(leaf, "sharding", None) is not None:
            shape = leaf.sharding.shard_shape(shape)
        total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
    return total


def _with_shardings(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), tree, shardings
    )


# ---- programs --------------------------------------------------------------------------------
_MEMORY_FIELDS = (
    ("arguments", "argument_size_in_bytes"),
    ("outputs", "output_size_in_bytes"),
    ("aliased", "alias_size_in_bytes"),
    ("temporaries", "temp_size_in_bytes"),
    ("code", "generated_code_size_in_bytes"),
)


def memory_fields(compiled: Any) -> dict[str, int]:
    """XLA's memory analysis of an executable, per chip, as plain ints."""
    m = compiled.memory_analysis()
    return {label: int(getattr(m, attr, 0) or 0) for label, attr in _MEMORY_FIELDS}


class HostPeak:
    """Peak resident memory of this process over a `with` block, in bytes.

    Linux: resets the kernel's high-water mark (`/proc/self/clear_refs` <- 5) on entry and
    reads VmHWM on exit, so `peak` is this block's peak (absolute RSS, baseline included).
    Where the reset is refused, `peak` is the process's peak so far (ru_maxrss) and `reset`
    is False.
    """

    def __enter__(self):
        self.reset = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset = True
        except OSError:
            pass
        return self

    def __exit__(self, *exc):
        self.peak = 0
        if self.reset:
            try:
                with open("/proc/self/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            self.peak = int(line.split()[1]) * 1024
            except OSError:
                self.reset = False
        if not self.peak:
            import resource

            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return False


@dataclasses.dataclass
class Program:
    """One compiled program of the run and what the report needs to judge it.

    The executable itself is not kept (`compiled` is None unless `plan(keep_compiled=True)`):
    memory_analysis (per-chip bytes, `memory_fields`) and XLA's cost (flops, bytes per chip)
    are copied out of it.
    resident: per-chip bytes of long-lived arrays that are not arguments (see module doc).
    loop: trip count of the loop that holds the whole program (XLA counts its body once).
    tokens / logits / patches: global text positions run through the decoder, positions
    unembedded, vision patches run through the tower; passes: 3 training, 1 forward.
    seconds / host_rss: lowering + compile time and peak host RSS while compiling (0 for a
    program that reuses another's executable).
    """

    name: str
    memory_analysis: dict[str, int]
    flops: float
    bytes: float
    resident: int
    loop: int
    tokens: int
    logits: int
    patches: int
    passes: int
    seconds: float = 0.0
    host_rss: int = 0
    compiled: Any = None

    def memory(self) -> dict[str, int]:
        out = dict(self.memory_analysis, resident=self.resident)
        out["total"] = (
            out["resident"]
            + out["arguments"]
            + out["outputs"]
            - out["aliased"]
            + out["temporaries"]
            + out["code"]
        )
        return out


@dataclasses.dataclass
class Plan:
    """Every program of a run on `topology`, with the model's matmul parameter counts."""

    topology: str
    chip: roofline.Chip
    num_devices: int
    mesh: dict[str, int]
    summary: str
    programs: list[Program]
    text_params: int  # decoder matmul params (no embedding, no unembedding)
    unembed_params: int
    vision_params: int  # vision tower matmul params per patch (merger per merged token / 4)
    scanned: bool = False  # model.scan_layers: XLA's counts cover one layer of each scan

    def roofline(self, p: Program) -> roofline.Roofline:
        flops, nbytes = p.flops, p.bytes
        useful = roofline.model_flops(0, self.vision_params, 0, p.patches, p.passes)
        useful += 2.0 * p.passes * (self.text_params * p.tokens + self.unembed_params * p.logits)
        useful /= self.num_devices
        flops = max(flops * p.loop, useful)
        return roofline.Roofline(flops, nbytes * p.loop, useful, self.chip)


def _param_counts(abstract_params: Any, merge: int) -> tuple[int, int, int]:
    shapes = {
        "/".join(str(getattr(k, "key", k)) for k in path): leaf.shape
        for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_params)
    }
    text = roofline.matmul_params(shapes, r"^model/layers(_\d+)?/")  # either layout
    if "lm_head/kernel" in shapes:
        unembed = math.prod(shapes["lm_head/kernel"])
    else:  # tied: the embedding table unembeds
        unembed = math.prod(shapes["model/embed_tokens/embedding"])
    tower = roofline.matmul_params(shapes, r"^visual/(blocks|patch_embed)")
    merger = roofline.matmul_params(shapes, r"^visual/merger/")
    return text, unembed, tower + merger // (merge * merge)


def selects(token: str, name: str) -> bool:
    """Whether `--only` token `token` selects program `name`: the whole name (`logprob`, which
    leaves `logprob_ref` out; `prefill[2048]`) or its base before the bucket (`prefill` selects
    every `prefill[...]`)."""
    return name == token or name.split("[", 1)[0] == token


def program_names(config: ml_collections.ConfigDict) -> list[str]:
    """The programs a (preflight-resolved) config's run executes, in `plan`'s order."""
    if config.stage == "eval":
        buckets = sorted(int(x) for x in config.eval.prompt_buckets)
        return [f"{kind}[{b}]" for b in buckets for kind in ("prefill", "decode")]
    names = ["sft_step"] if config.stage in ("sft", "sft+gspo") else []
    if config.stage in ("gspo", "sft+gspo"):
        serving = config.rl.get("serving")
        if serving is not None and serving.layout == "serving":
            names.append("reshard")
        for bucket in sorted(int(x) for x in config.rl.prompt_buckets):
            names += [f"prefill[{bucket}]", f"decode[{bucket}]"]
        names += ["logprob"] if config.rl.old_logp == "rollout" else []
        names += ["logprob_ref"] if float(config.rl.beta) else []
        names.append("update")
    return names


def check_only(config: ml_collections.ConfigDict, only: tuple[str, ...]) -> None:
    """Raises ValueError for `--only` tokens that select no program of the run: a typo, or a
    program this run does not execute (never an empty table)."""
    names = program_names(config)
    unmatched = [o for o in only if not any(selects(o, name) for name in names)]
    if not unmatched:
        return
    why = ""
    if config.stage != "sft" and any(selects(o, "logprob") for o in unmatched):
        why = (
            f" (rl.old_logp={config.rl.old_logp!r}: the update takes the old log-probs from its "
            "own forward, so there is no rollout-policy `logprob` program; "
            "rl.old_logp='rollout' adds it)"
        )
    raise ValueError(
        f"--only {','.join(unmatched)} selects no program of this run{why}; "
        f"its programs: {', '.join(names)}"
    )


def plan(
    config: ml_collections.ConfigDict,
    devices: list,
    topology: str = "",
    only: tuple[str, ...] = (),
    log=None,
    keep_compiled: bool = False,
) -> Plan:
    """Compiles every program of the config's run over `devices` (see the module docstring).

    `config` is checked and resolved by `preflight.apply` first (on a copy). `only`: compile
    just the programs selected by these names (see `selects`; the rest are skipped).
    `log(str)` reports each compile as it finishes. Each executable is dropped once analysed
    (one process compiles a whole plan) unless `keep_compiled`.
    """
    config = ml_collections.ConfigDict(config.to_dict())  # preflight writes back: a copy
    n = len(devices)
    evaluating = config.stage == "eval"
    hosts = len({getattr(d, "process_index", 0) for d in devices})
    resolved = None if evaluating else preflight.apply(config, n, host_devices=n // hosts)
    rules = [tuple(r) for r in config.sharding.rules]
    mesh = sharding.make_mesh(
        dict(config.mesh), devices, allow_fallback=config.sharding.mesh_fallback
    )
    mc = experiment.model_config(config)
    if evaluating:
        from o3video_jax.evaluate.generate import eval_model_config

        mc = eval_model_config(mc, config.eval)
    model = Qwen25VL(mc)
    tx = make_optimizer(preflight.optimizer_config(config))
    rng = jax.random.PRNGKey(0)
    dummy = experiment.init_inputs(mc)
    init_params = lambda key: model.init(key, dummy)["params"]
    shardings = sharding.state_shardings(init_params, tx, rng, mesh, rules)

    def create(key):
        k1, k2 = jax.random.split(key)
        return TrainState.create(nn.unbox(init_params(k1)), tx, k2)

    state = _with_shardings(jax.eval_shape(create, rng), shardings)
    state_bytes, params_bytes = chip_bytes(state), chip_bytes(state.params)
    text_p, unembed_p, vision_p = _param_counts(state.params, mc.vision.spatial_merge_size)
    d = config.data
    programs: list[Program] = []
    generation, _ = parse_topology(topology) if topology else ("v5p", ())
    result = Plan(
        topology=topology,
        chip=roofline.chip(generation),
        num_devices=n,
        mesh=dict(mesh.shape),
        summary=_eval_summary(config, mesh, mc) if evaluating else preflight.summary(resolved),
        programs=programs,
        text_params=text_p,
        unembed_params=unembed_p,
        vision_params=vision_p,
        scanned=mc.scan_layers,
    )
    check_only(config, only)  # before any compile: a typo must not cost a 10-minute compile
    wanted = lambda name: not only or any(selects(o, name) for o in only)

    def append(program: Program) -> None:
        programs.append(program)
        if log:  # the row now: a long plan that is stopped still reports what it compiled
            log(f"  compiled {program.name} in {program.seconds:.0f} s: {row(result, program)}")

    def analyse(name, compiled, t0, peak, **kw) -> Program:
        flops, nbytes = roofline.cost(compiled)
        return Program(
            name,
            memory_fields(compiled),
            flops,
            nbytes,
            seconds=time.perf_counter() - t0,
            host_rss=peak,
            compiled=compiled if keep_compiled else None,
            **kw,
        )

    def add(name, lower, outputs=False, **kw):
        """Lowers, compiles and analyses one program, then drops the executable. With
        `outputs`, returns its abstract outputs with their shardings (the next program's
        inputs), also when the program itself is not wanted."""
        if not wanted(name) and not outputs:
            return None
        with HostPeak() as peak:
            t0 = time.perf_counter()
            lowered = lower()
            compiled = lowered.compile()
            out = _with_shardings(lowered.out_info, compiled.output_shardings) if outputs else None
            if wanted(name):
                program = analyse(name, compiled, t0, 0, **kw)
            del compiled, lowered
            gc.collect()
        if wanted(name):
            program.host_rss = peak.peak
            append(program)
        return out

    def scoped_lower(fn, *args, donate=(), on=None):
        on_mesh, on_rules = (mesh, rules) if on is None else on
        with jax.set_mesh(on_mesh), nn.logical_axis_rules(list(on_rules)):
            return jax.jit(fn, donate_argnums=donate).lower(*args)

    def sampler_programs(
        sample, params, prompts, group, buckets, patches, t_new, resident, penalised=False,
        on=None,
    ):  # fmt: skip
        """prefill[L] and decode[L] of every prompt bucket L (GSPO rollouts, evaluation), on
        the sampler's mesh and rules `on` (default: the training mesh)."""
        on = (mesh, rules) if on is None else on
        sample_mesh = on[0]
        rows = prompts * group
        axes = tuple(a for a in sharding.BATCH_AXES if a in sample_mesh.axis_names) or None
        for bucket in buckets:
            prompt = abstract_inputs(prompts, bucket, patches)
            prompt = _with_shardings(prompt, sharding.batch_sharding(prompt, sample_mesh))
            need_cache = wanted(f"decode[{bucket}]")
            # The decode loop alone (prefill not selected): its inputs are planned from the
            # cache's logical axes (cache.py) instead of compiling the prefill for them.
            planned = need_cache and not wanted(f"prefill[{bucket}]")
            outputs = add(
                f"prefill[{bucket}]",
                lambda prompt=prompt: scoped_lower(
                    lambda p, pr: sample.prefill(p, pr), params, prompt, on=on
                ),
                outputs=need_cache and not planned,
                resident=resident,
                loop=1,
                tokens=prompts * bucket,
                logits=prompts,
                patches=prompts * patches,
                passes=1,
            )
            if not need_cache:
                continue
            if planned:
                cache, logits = _planned_cache(mc, rows, bucket + t_new, on, axes)
            else:
                cache, logits = outputs
            by_rows = NamedSharding(sample_mesh, PartitionSpec(axes))
            keys = jax.ShapeDtypeStruct((rows, 2), jnp.uint32, sharding=by_rows)
            # A repetition penalty (evaluation: 1.05) reads the tokens each row has seen.
            seen = None
            if penalised:
                seen = jax.ShapeDtypeStruct((rows, mc.vocab_size), jnp.bool_, sharding=by_rows)
            add(
                f"decode[{bucket}]",
                lambda cache=cache, logits=logits, keys=keys, seen=seen: scoped_lower(
                    lambda p, c, lg, k, sn: sample.decode(p, c, lg, k, sn),
                    params,
                    cache,
                    logits,
                    keys,
                    seen,
                    donate=(1,),
                    on=on,
                ),
                resident=resident,
                loop=t_new,
                tokens=rows,
                logits=rows,
                patches=0,
                passes=1,
            )

    if evaluating:
        from o3video_jax.rl import rollouts
        from o3video_jax.rl import sampler as sampler_lib

        ev = config.eval
        shards = rollouts.batch_shards(mesh)
        if int(ev.batch_size) % shards:
            raise ValueError(
                f"eval.batch_size {ev.batch_size} must be a multiple of the mesh's {shards} "
                "data-parallel shards"
            )
        group = int(ev.samples)
        eos = (mc.eos_token_id, mc.pad_token_id)  # traced ids: they do not change the program
        scfg = rollouts.sampling_config(ev, eos, mc.pad_token_id, group_size=group)
        sample = sampler_lib.make_sampler(model, scfg, rules=rules)
        buckets = sorted(int(x) for x in ev.prompt_buckets)
        sampler_programs(
            sample, state.params, int(ev.batch_size), group, buckets, int(ev.max_patches),
            int(ev.max_new_tokens), resident=0, penalised=scfg.repetition_penalty != 1.0,
        )  # fmt: skip
        return result

    if config.stage in ("sft", "sft+gspo"):
        from o3video_jax.drivers.sft import sft_step_config

        b, length, p = d.batch_size, d.max_seq_len, d.max_patches
        batch = {
            "inputs": abstract_inputs(b, length, p),
            "targets": jax.ShapeDtypeStruct((b, length), jnp.int32),
            "loss_mask": jax.ShapeDtypeStruct((b, length), jnp.float32),
        }
        step = steps.make_sft_step(model, sft_step_config(config), mesh, shardings, rules=rules)
        micro = int(config.optim.get("microbatches", 1))
        add(
            "sft_step",
            lambda: step.lower(state, batch),
            resident=0,
            loop=micro,
            tokens=b * length,
            logits=b * length,
            patches=b * p,
            passes=3,
        )

    if config.stage in ("gspo", "sft+gspo"):
        from o3video_jax.drivers.gspo import gspo_step_config, train_length
        from o3video_jax.rl import gspo, rollouts, serving
        from o3video_jax.rl import sampler as sampler_lib

        rl = config.rl
        g, t_new = int(rl.group_size), int(rl.max_new_tokens)
        prompts = int(d.batch_size)
        rows = prompts * g
        beta = float(rl.beta)
        ref_bytes = params_bytes if beta else 0
        params = sample_params = state.params
        # While the sampler runs, the training state stays resident beside the serving params
        # (on the training layout the params are the sampler's own argument).
        sampler_resident = state_bytes - params_bytes + ref_bytes
        on = (mesh, rules)
        if resolved.serving_tensor:
            layout = serving.make_layout(
                mesh, rules, shardings.params, resolved.serving_tensor, mc.dtype
            )
            add(
                "reshard",
                lambda: layout.reshard.lower(state.params),
                resident=state_bytes - params_bytes + ref_bytes,
                loop=1,
                tokens=0,
                logits=0,
                patches=0,
                passes=1,
            )
            sample_params = jax.eval_shape(layout.reshard, params)
            sample_params = _with_shardings(sample_params, layout.shardings)
            sampler_resident = state_bytes + ref_bytes
            on = (layout.mesh, layout.rules)
        sample = sampler_lib.make_sampler(
            model,
            # the eos / pad ids are traced: they do not change the program
            rollouts.sampling_config(
                config.rl, (mc.eos_token_id, mc.pad_token_id), mc.pad_token_id
            ),
            rules=on[1],
        )
        buckets = sorted(int(x) for x in rl.prompt_buckets)
        sampler_programs(
            sample, sample_params, prompts, g, buckets, d.max_patches, t_new, sampler_resident,
            on=on,
        )  # fmt: skip

        length = train_length(config)
        shared = bool(rl.get("share_vision", True)) and rollouts.can_share_vision(
            prompts, rollouts.batch_shards(mesh)
        )
        batch = {
            "inputs": abstract_inputs(rows, length, d.max_patches, prompts if shared else rows),
            "targets": jax.ShapeDtypeStruct((rows, length), jnp.int32),
            "mask": jax.ShapeDtypeStruct((rows, length), jnp.float32),
        }
        batch = _with_shardings(batch, sharding.batch_sharding(batch, mesh))
        ucfg = gspo_step_config(config)
        logprob = rollouts.make_logprob_fn(
            model, mesh, rules, chunk=config.sft.ce_chunk, temperature=ucfg.gspo.temperature
        )
        lp_kw = dict(
            loop=1,
            tokens=rows * length,
            logits=rows * length,
            patches=(prompts if shared else rows) * d.max_patches,
            passes=1,
        )
        if rl.old_logp == "rollout":
            add(
                "logprob",
                lambda: logprob.lower(params, batch),
                resident=state_bytes - params_bytes + ref_bytes,
                **lp_kw,
            )
        if beta and wanted("logprob_ref"):
            # The same executable on the reference params (same shapes and shardings): its
            # numbers are copied when `logprob` was compiled, else it is compiled here.
            done = [q for q in programs if q.name == "logprob"]
            if done:
                ref = dataclasses.replace(
                    done[0], name="logprob_ref", resident=state_bytes, seconds=0.0, host_rss=0
                )
                append(ref)
            else:
                add(
                    "logprob_ref",
                    lambda: logprob.lower(params, batch),
                    resident=state_bytes,
                    **lp_kw,
                )

        mbs = max(int(rl.minibatches), 1)
        micro = int(config.optim.get("microbatches", 1))
        mb_prompts = prompts // mbs
        mb_rows = rows // mbs
        keep = (
            bool(rl.get("share_vision", True))
            and prompts % mbs == 0
            and rollouts.can_share_vision(mb_prompts, rollouts.batch_shards(mesh), micro)
        )
        f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
        mb = {
            "inputs": abstract_inputs(
                mb_rows, length, d.max_patches, mb_prompts if keep else mb_rows
            ),
            "targets": jax.ShapeDtypeStruct((mb_rows, length), jnp.int32),
            "mask": f32(mb_rows, length),
            "advantages": f32(mb_rows),
            "old_logp": f32(mb_rows, length),
            "ref_logp": f32(mb_rows, length),
        }
        update = gspo.make_gspo_update(model, ucfg, mesh, shardings, rules=rules)
        add(
            "update",
            lambda: update.lower(state, mb),
            resident=ref_bytes,
            loop=micro,
            tokens=mb_rows * length,
            logits=mb_rows * length,
            patches=(mb_prompts if keep else mb_rows) * d.max_patches,
            passes=3,
        )

    return result


def _eval_summary(config: ml_collections.ConfigDict, mesh, mc) -> str:
    """One line for an evaluation plan (preflight resolves training runs only)."""
    ev = config.eval
    mesh_text = ",".join(f"{k}={v}" for k, v in mesh.shape.items())
    return (
        f"eval {ev.benchmark}: {mesh.size} devices ({mesh_text}), batch {ev.batch_size} x "
        f"{ev.samples} samples, prompt buckets {list(ev.prompt_buckets)}, "
        f"{ev.max_patches} patches a row, {ev.max_new_tokens} new tokens; "
        f"vision.max_frame_patches {mc.vision.max_frame_patches}, prefill tiles "
        f"{mc.text.attention_chunk}"
    )


def _planned_cache(mc, rows: int, slots: int, on, axes) -> tuple[Any, Any]:
    """The abstract KV cache (stacked [N, B, K, S, H] in the compute dtype, sharded by its
    logical axes under the sampler's rules) and float32[B, V] logits split by rows, as the
    prefill hands them to the decode loop (`--only decode[L]` without `prefill[L]`)."""
    from o3video_jax.models.qwen2_5_vl.cache import KVCache

    mesh, rules = on
    t = mc.text
    shapes = KVCache.shape(
        t.num_hidden_layers, rows, t.num_key_value_heads, slots, t.head_dim, mc.dtype
    )
    specs = jax.tree.map(
        lambda a: nn.logical_to_mesh_axes(a, list(rules)),
        KVCache.logical_axes(),
        is_leaf=lambda x: isinstance(x, tuple),
    )
    cache = jax.tree.map(
        lambda s, spec: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=NamedSharding(mesh, spec)),
        shapes,
        specs,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )
    logits = jax.ShapeDtypeStruct(
        (rows, mc.vocab_size), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec(axes))
    )
    return cache, logits


def compile_step(config: ml_collections.ConfigDict, devices: list) -> Any:
    """The compiled train step of the config (SFT step, or the GSPO update)."""
    name = "update" if config.stage == "gspo" else "sft_step"
    return plan(config, devices, only=(name,), keep_compiled=True).programs[0].compiled


# ---- report ----------------------------------------------------------------------------------
def _gib(x: float) -> str:
    return f"{x / 2**30:.2f}"


def table(p: Plan) -> str:
    """The per-program table (memory per chip in GiB, FLOPs and bytes per chip)."""
    head = (
        "| program | args | out | alias | temp | resident | total GiB/chip | HBM | "
        "XLA TFLOP | XLA GB | model TFLOP | roofline ms | bound | MFU | compile s | "
        "host RSS GiB |"
    )
    lines = [
        f"{p.topology}: {p.num_devices} chips ({p.chip.name}: {p.chip.peak_flops / 1e12:.0f} "
        f"TFLOP/s bf16, {_gib(p.chip.hbm_bytes)} GiB HBM at {p.chip.hbm_bw / 1e9:.0f} GB/s), "
        f"mesh {p.mesh}",
        p.summary,
        *(
            [
                "scan_layers: XLA's TFLOP and GB count the body of each layer scan once (one "
                "decoder layer, one vision block), so they, the roofline, bound and MFU are "
                "undercounts; --config.model.scan_layers=False compiles the unrolled graph "
                "(same math) for the roofline"
            ]
            if p.scanned
            else []
        ),
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    lines += [row(p, prog) for prog in p.programs]
    return "\n".join(lines)


def row(p: Plan, prog: Program) -> str:
    """One program's line of `table`."""
    m, r = prog.memory(), p.roofline(prog)
    share = m["total"] / p.chip.hbm_bytes
    name = prog.name + (f" (x{prog.loop})" if prog.loop > 1 else "")
    return (
        f"| {name} | {_gib(m['arguments'])} | {_gib(m['outputs'])} | {_gib(m['aliased'])} | "
        f"{_gib(m['temporaries'])} | {_gib(m['resident'])} | {_gib(m['total'])} | "
        f"{share:.0%}{'' if share <= 1 else ' OOM'} | {r.flops / 1e12:.2f} | "
        f"{r.bytes / 1e9:.1f} | {r.model_flops / 1e12:.2f} | {r.seconds * 1e3:.1f} | "
        f"{r.bound} | {r.mfu:.0%} | {prog.seconds:.0f} | {_gib(prog.host_rss)} |"
    )


def report(compiled: Any, n_devices: int) -> str:
    """XLA's memory analysis of one executable (or its `memory_fields`), per device, in GiB."""
    m = compiled if isinstance(compiled, dict) else memory_fields(compiled)
    gib = lambda x: f"{x / 2**30:8.2f} GiB"
    lines = [f"memory per device ({n_devices} devices):"]
    total = 0
    for label, _ in _MEMORY_FIELDS:
        value = m[label]
        lines.append(f"  {label:12s}{gib(value)}")
        total += -value if label == "aliased" else value
    lines.append(f"  {'total':12s}{gib(total)}")
    return "\n".join(lines)


def fits(p: Plan) -> bool:
    return all(prog.memory()["total"] <= p.chip.hbm_bytes for prog in p.programs)


def main(argv):
    del argv
    from absl import flags

    config, topology = flags.FLAGS.config, flags.FLAGS.topology
    slices = flags.FLAGS.num_slices
    devices = topology_devices(topology, slices)
    label = f"{slices} slices of {topology}" if slices > 1 else topology
    print(f"{label}: {len(devices)} devices; compiling every program of the run", flush=True)
    only = tuple(s for s in flags.FLAGS.only.split(",") if s)
    result = plan(config, devices, topology, only, log=lambda s: print(s, flush=True))
    print(table(result), flush=True)
    # The roofline of every program compiled: a GSPO run with several prompt buckets runs one
    # prefill per step, so this overstates its step floor (and understates saves per minute).
    floor = sum(result.roofline(prog).seconds for prog in result.programs)
    print(preflight.save_plan(config, floor, "AOT roofline, programs summed"), flush=True)
    for prog in result.programs:
        print(f"\n{prog.name}: {report(prog.memory_analysis, result.num_devices)}")
    if not fits(result):
        print("some program does not fit the chip's HBM", file=sys.stderr)
        sys.exit(1)


def cli() -> None:
    """`python -m o3video_jax.train.aot`: defines the flags, then runs `main`."""
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "experiment config", lock_config=True)
    flags.DEFINE_string("topology", None, "TPU topology, e.g. v5p:4x4x4", required=True)
    flags.DEFINE_integer(
        "num_slices", 1, "multislice: this many slices of --topology joined over DCN"
    )
    flags.DEFINE_string(
        "only",
        "",
        "comma-separated program names or bases: sft_step, prefill, decode, logprob, "
        "logprob_ref, update, prefill[2048], ... (default: all)",
    )
    flags.mark_flags_as_required(["config"])
    app.run(main)


if __name__ == "__main__":
    cli()
