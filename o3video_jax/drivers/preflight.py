r"""Checks an experiment config against the mesh it will run on, before anything compiles.

  resolved = preflight.check(config, num_devices=64)          # pure: no devices, no jax calls
  resolved = preflight.apply(config, jax.device_count(), jax.process_count())  # + writes back

`check` resolves the values a config leaves to the slice and raises one `PreflightError` that
lists every problem, each naming the config fields to change:

  mesh        sizes (one may be -1) multiply to the device count; every sharded weight
              dimension splits evenly over its mesh axes; with several processes each holds
              whole batch shards (a shard spanning hosts would need the same rows twice)
  batch       `data.batch_size` (global: rows for SFT, prompts for GSPO; it wins when > 0), or,
              when it is 0, `data.per_device_batch_size` x the batch shards (mesh data x fsdp: the chips that
              hold different rows; tensor-parallel chips share theirs). The batch must split
              over the shards and processes, every microbatch (`optim.microbatches`) and, for
              GSPO, every update minibatch (`rl.minibatches`) of its `rl.group_size` x prompts
              rows too.
  run length  `total_steps`, or, when it is 0, `epochs` x `data.num_examples` / batch.
  schedule    the horizon counts optimiser updates: GSPO makes `rl.num_updates` x
              `rl.minibatches` updates per rollout step, SFT one per step (microbatches are
              gradient accumulation, not updates). `optim.total_steps` = -1 derives it;
              an explicit value shorter than the run is an error (the lr would sit at 0 for
              the rest of it), a longer one a warning. `optim.warmup_steps` counts run steps.
  GSPO prompts the prompt budget is `data.max_seq_len - rl.max_new_tokens`; `rl.prompt_buckets`
              = [] derives [budget/4, budget/2, budget] (multiples of 128); explicit buckets
              above the budget are an error, below it a warning: prompts longer than the
              largest bucket are skipped and counted by the data pipeline (under
              `data.max_error_fraction`), never passed to the sampler.

  serving    GSPO rollouts in the serving layout (`rl.serving`, docs/design.md decision 15):
              `rl.serving.tensor` (0: the chips of one host, reduced to divide the attention
              and KV heads) must divide the devices, the heads, the KV heads and every weight
              dimension the rule table splits over `tensor`; the prompts must split over the
              serving rows (devices / tensor).

`apply` also writes the resolved batch, run length, schedule horizon and buckets back into the
config (idempotent), so every later reader (data pipeline, loops, evaluation, AOT) sees them.
`optimizer_config(config)` is the optimiser section in optimiser updates, as `state.py` reads it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import ml_collections

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # as `train.sharding.BATCH_AXES` (imported lazily: no jax here)
BUCKET_MULTIPLE = 128
SCHEDULES = ("cosine", "linear", "constant")


class PreflightError(ValueError):
    """The config cannot run on this mesh; the message lists every problem and the fields."""


@dataclasses.dataclass(frozen=True)
class Resolved:
    """What a config means on `num_devices` devices (see the module docstring)."""

    num_devices: int
    num_processes: int
    mesh: dict[str, int]  # every axis sized, product == num_devices
    batch_shards: int  # data x fsdp
    batch_size: int  # global: SFT rows / GSPO prompts per step
    per_device_batch_size: int  # batch_size / batch_shards
    total_steps: int  # run steps (SFT steps / GSPO rollout steps)
    updates_per_step: int  # optimiser updates per run step
    schedule_steps: int  # the lr schedule's horizon, in optimiser updates
    warmup_updates: int
    rows_per_update: int  # rows of one optimiser update (SFT batch; GSPO minibatch rows)
    prompt_buckets: tuple[int, ...]  # GSPO; () for SFT
    prompt_budget: int  # GSPO: the longest prompt kept (tokens); 0 for SFT
    warnings: tuple[str, ...]
    serving_tensor: int = 0  # GSPO rollouts: tensor-parallel chips (0: the training layout)


def resolve_mesh(shape: Mapping[str, int], num_devices: int) -> tuple[dict[str, int], list[str]]:
    """Mesh sizes with the -1 axis filled in, and the problems (empty when it is valid)."""
    names, sizes = list(shape), [int(shape[n]) for n in shape]
    fields = ", ".join(f"mesh.{n}={s}" for n, s in zip(names, sizes, strict=True))
    if sizes.count(-1) > 1:
        return dict(zip(names, sizes, strict=True)), [f"mesh ({fields}): at most one size is -1"]
    if any(s == 0 or s < -1 for s in sizes):
        return dict(zip(names, sizes, strict=True)), [f"mesh ({fields}): sizes are >= 1 or -1"]
    fixed = math.prod(s for s in sizes if s != -1)
    if num_devices % fixed or (-1 not in sizes and fixed != num_devices):
        return dict(zip(names, sizes, strict=True)), [
            f"mesh ({fields}) does not fit {num_devices} devices: the fixed sizes multiply to "
            f"{fixed}, which must {'divide' if -1 in sizes else 'equal'} the device count; "
            f"set the mesh.* sizes (e.g. a smaller mesh.tensor, and mesh.fsdp=-1 for the rest)"
        ]
    return {
        n: (num_devices // fixed if s == -1 else s) for n, s in zip(names, sizes, strict=True)
    }, []


def updates_per_step(config: ml_collections.ConfigDict) -> int:
    """Optimiser updates per run step: `rl.num_updates x rl.minibatches` for GSPO, else 1."""
    if config.stage == "gspo":
        return int(config.rl.num_updates) * int(config.rl.minibatches)
    return 1


def derive_buckets(budget: int, multiple: int = BUCKET_MULTIPLE) -> tuple[int, ...]:
    """[budget/4, budget/2, budget], the first two rounded up to `multiple` (the last is the
    budget itself, so every prompt the pipeline keeps fits a bucket)."""
    up = lambda x: min(-(-x // multiple) * multiple, budget)
    return tuple(sorted({up(max(budget // 4, 1)), up(max(budget // 2, 1)), budget}))


def optimizer_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config.optim` with `total_steps` and `warmup_steps` in optimiser updates (the units of
    `state.make_schedule`): the horizon derived when `optim.total_steps` is -1, the warm-up
    (given in run steps) times the updates per step."""
    out = ml_collections.ConfigDict(config.optim.to_dict())
    per = updates_per_step(config)
    explicit = int(config.optim.total_steps)
    out.total_steps = explicit if explicit > 0 else int(config.total_steps) * per
    out.warmup_steps = int(config.optim.warmup_steps) * per
    return out


def check(
    config: ml_collections.ConfigDict,
    num_devices: int,
    num_processes: int = 1,
    host_devices: int = 0,
) -> Resolved:
    """Resolves and checks `config` for `num_devices` devices in `num_processes` processes
    (no devices needed: the AOT tool passes a TPU topology's count). `host_devices`: the chips
    of one host (default num_devices / num_processes; the AOT tool passes the topology's).
    Raises PreflightError."""
    errors: list[str] = []
    warnings: list[str] = []
    if num_devices < 1 or num_processes < 1 or num_devices % num_processes:
        raise PreflightError(f"{num_devices} devices over {num_processes} processes")
    if config.stage not in ("sft", "gspo"):
        raise PreflightError(f"stage must be 'sft' or 'gspo', got {config.stage!r}")
    gspo = config.stage == "gspo"

    # ---- the booked slice (configs' slice= arg)
    booked = config.get("slice")
    if booked is not None and int(booked.devices) and int(booked.devices) != num_devices:
        errors.append(
            f"the config is for {booked.name} ({booked.devices} devices) but {num_devices} "
            "devices are here: pick the slice= of this slice (or another slice)"
        )

    # ---- mesh
    unknown = [a for a in config.mesh if a not in MESH_AXES]
    if unknown:
        errors.append(f"mesh axes {unknown} are not among {MESH_AXES}")
    mesh, problems = resolve_mesh(dict(config.mesh), num_devices)
    errors += problems
    shards = math.prod(max(mesh.get(a, 1), 1) for a in BATCH_AXES)
    shard_fields = "x".join(f"mesh.{a}={mesh.get(a, 1)}" for a in BATCH_AXES)

    if not problems and num_processes > 1 and shards % num_processes:
        errors.append(
            f"the {shards} batch shards ({shard_fields}) do not split over {num_processes} "
            f"processes: each process feeds its own rows, so a batch shard must not span hosts; "
            f"keep mesh.tensor (x mesh.data) within the {num_devices // num_processes} devices "
            "of a host and give mesh.fsdp the rest"
        )

    # ---- batch
    d = config.data
    batch, pdbs = int(d.batch_size), int(d.get("per_device_batch_size", 0))
    unit = "prompts" if gspo else "rows"
    if batch < 0 or pdbs < 0:
        errors.append(f"data.batch_size={batch} and data.per_device_batch_size={pdbs} are >= 0")
    elif batch == 0 and pdbs == 0:
        errors.append("set data.batch_size (global) or data.per_device_batch_size (> 0)")
    elif batch == 0:
        batch = pdbs * shards
    fix = (
        f"set data.batch_size to a multiple of {shards}, or data.batch_size=0 with "
        f"data.per_device_batch_size=N (N x {shards} {unit} a step), or change the mesh "
        f"(mesh.data / mesh.fsdp; mesh.tensor shares rows)"
    )
    if batch > 0 and not problems:
        if batch % shards:
            errors.append(
                f"data.batch_size={batch} {unit} do not split over the {shards} batch shards "
                f"({shard_fields}): {fix}"
            )
        if batch % num_processes:
            errors.append(
                f"data.batch_size={batch} {unit} do not split over {num_processes} processes "
                f"(each feeds its own rows): set data.batch_size to a multiple of "
                f"{math.lcm(shards, num_processes)}, or raise data.per_device_batch_size"
            )
    micro = int(config.optim.get("microbatches", 1))
    if micro < 1:
        errors.append(f"optim.microbatches={micro} must be >= 1")
        micro = 1

    # ---- GSPO groups and minibatches
    rows_per_update = batch
    g = mbs = nup = 1
    if gspo:
        rl = config.rl
        g, mbs, nup = int(rl.group_size), int(rl.minibatches), int(rl.num_updates)
        for name, v in (("group_size", g), ("minibatches", mbs), ("num_updates", nup)):
            if v < 1:
                errors.append(f"rl.{name}={v} must be >= 1")
        if g >= 1 and mbs >= 1 and batch > 0:
            rows = batch * g
            if rows % mbs:
                errors.append(
                    f"the {rows} rollout rows (data.batch_size={batch} x rl.group_size={g}) do "
                    f"not split into rl.minibatches={mbs}"
                )
            else:
                rows_per_update = rows // mbs
                if not problems and rows_per_update % shards:
                    errors.append(
                        f"an update minibatch of {rows_per_update} rows (data.batch_size={batch}"
                        f" x rl.group_size={g} / rl.minibatches={mbs}) does not split over the "
                        f"{shards} batch shards ({shard_fields}): fewer rl.minibatches or a "
                        f"larger batch ({fix})"
                    )
                elif batch % mbs:
                    warnings.append(
                        f"data.batch_size={batch} prompts do not split into rl.minibatches={mbs}"
                        ": minibatches then mix rows of different groups and repeat the pixels"
                    )
    if rows_per_update > 0 and micro > 1 and not problems:
        what = "an update minibatch" if gspo else "the batch"
        if rows_per_update % micro or (rows_per_update // micro) % shards:
            errors.append(
                f"{what} of {rows_per_update} rows does not split into optim.microbatches={micro}"
                f" microbatches of a multiple of {shards} rows ({shard_fields})"
            )

    # ---- run length and schedule
    total = int(config.total_steps)
    if total <= 0:
        epochs, n = float(config.get("epochs", 0.0)), int(d.get("num_examples", 0))
        if epochs > 0 and n > 0 and batch > 0:
            total = max(math.ceil(epochs * n / batch), 1)
        else:
            errors.append(
                f"total_steps={total}: set it (> 0), or epochs and data.num_examples to derive it"
            )
    per = max(nup, 1) * max(mbs, 1)
    horizon = total * per
    explicit = int(config.optim.total_steps)
    if explicit > 0 and total > 0 and explicit != horizon:
        msg = (
            f"optim.total_steps={explicit} optimiser updates, but the run makes {horizon} "
            f"(total_steps={total} x {per} updates per step"
            + (f": rl.num_updates={nup} x rl.minibatches={mbs}" if gspo else "")
            + ")"
        )
        if explicit < horizon:
            errors.append(
                msg + f": the lr schedule would end at update {explicit} and stay at its final "
                "value; set optim.total_steps=-1 to derive it"
            )
        else:
            warnings.append(msg + ": the schedule is cut off before its end")
        horizon = explicit
    elif explicit == 0 or explicit < -1:
        errors.append(f"optim.total_steps={explicit}: -1 (derived) or the number of updates")
    warmup = int(config.optim.warmup_steps) * per
    if warmup < 0 or (horizon > 0 and warmup > horizon):
        errors.append(
            f"optim.warmup_steps={config.optim.warmup_steps} run steps ({warmup} updates) must "
            f"lie in [0, {horizon // max(per, 1)}] (the run's steps)"
        )
    if config.optim.schedule not in SCHEDULES:
        errors.append(f"optim.schedule={config.optim.schedule!r} is not one of {SCHEDULES}")

    # ---- GSPO prompt buckets vs the length budget
    buckets: tuple[int, ...] = ()
    budget = 0
    if gspo:
        budget = int(d.max_seq_len) - int(config.rl.max_new_tokens)
        if int(config.rl.max_new_tokens) < 1 or budget < 1:
            errors.append(
                f"data.max_seq_len={d.max_seq_len} leaves no prompt room after "
                f"rl.max_new_tokens={config.rl.max_new_tokens}"
            )
        else:
            given = tuple(int(b) for b in config.rl.prompt_buckets)
            if not given:
                buckets = derive_buckets(budget)
            elif min(given) < 1:
                errors.append(f"rl.prompt_buckets={list(given)} must be positive")
            elif max(given) > budget:
                errors.append(
                    f"rl.prompt_buckets={list(given)}: the largest exceeds the prompt budget "
                    f"data.max_seq_len - rl.max_new_tokens = {budget}, so training rows would "
                    "outgrow data.max_seq_len; lower it, raise data.max_seq_len, or set "
                    "rl.prompt_buckets=[] to derive them"
                )
            else:
                buckets = tuple(sorted(set(given)))
                if buckets[-1] < budget:
                    warnings.append(
                        f"rl.prompt_buckets={list(given)} stop below the prompt budget {budget} "
                        f"(data.max_seq_len - rl.max_new_tokens): longer prompts are skipped and "
                        "counted under data.max_error_fraction"
                    )
                budget = min(budget, buckets[-1])

    # ---- weights vs the mesh: every sharded weight dimension must split evenly
    if not problems:
        errors += _weight_errors(config, mesh, warnings)

    # ---- GSPO rollouts: the serving layout
    serving_tensor = 0
    if gspo and not problems:
        host = host_devices or num_devices // num_processes
        serving_tensor = _serving_errors(config, num_devices, host, batch, errors, warnings)

    if errors:
        raise PreflightError(
            f"config does not fit {num_devices} devices ({num_processes} processes):\n  - "
            + "\n  - ".join(errors)
        )
    return Resolved(
        num_devices=num_devices,
        num_processes=num_processes,
        mesh=mesh,
        batch_shards=shards,
        batch_size=batch,
        per_device_batch_size=batch // shards,
        total_steps=total,
        updates_per_step=per,
        schedule_steps=horizon,
        warmup_updates=warmup,
        rows_per_update=rows_per_update,
        prompt_buckets=buckets,
        prompt_budget=budget,
        warnings=tuple(warnings),
        serving_tensor=serving_tensor,
    )


def weight_dims(model_config) -> dict[str, tuple[int, ...]]:
    """Sizes of the weight dimensions that carry each logical axis name (models/qwen2_5_vl:
    q/o_proj "heads" = N x H, k/v_proj "kv_heads" = K x H, the vision qkv "vision_qkv" = 3 x d
    and its proj d, the merger's "merger_in" = 4 d)."""
    t, v = model_config.text, model_config.vision
    merge = v.spatial_merge_size**2
    return {
        "vocab": (model_config.vocab_size,),
        "embed": (t.hidden_size, v.out_hidden_size),
        "heads": (t.num_attention_heads * t.head_dim,),
        "kv_heads": (t.num_key_value_heads * t.head_dim,),
        "mlp": (t.intermediate_size,),
        "vision_embed": (v.hidden_size,),
        "vision_qkv": (3 * v.hidden_size, v.hidden_size),
        "vision_mlp": (v.intermediate_size,),
        "merger_in": (merge * v.hidden_size,),
    }


def _weight_errors(config, mesh: dict[str, int], warnings: list[str]) -> list[str]:
    from o3video_jax.drivers.model_config import model_config  # jax/flax: only when checked

    try:
        mc = model_config(config)
    except (OSError, ValueError) as e:  # an unreadable HF config.json: checked at load time
        warnings.append(f"model dimensions not checked against the mesh: {e}")
        return []
    dims = weight_dims(mc)
    errors = []
    for name, axes in (tuple(r) for r in config.sharding.rules):
        if name not in dims or axes is None:
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        split = math.prod(mesh.get(a, 1) for a in axes)
        bad = [d for d in dims[name] if d % split]
        if bad:
            fields = "x".join(f"mesh.{a}={mesh.get(a, 1)}" for a in axes)
            errors.append(
                f"weights with logical axis {name!r} have dimension {bad[0]}, which does not "
                f"split over {fields} = {split} chips (model.preset={config.model.preset!r}); "
                f"change those mesh sizes or the {name!r} entry of sharding.rules"
            )
    return errors


SERVING_LAYOUTS = ("serving", "training")  # as `rl.serving.LAYOUTS` (no jax here)


def _serving_errors(config, num_devices: int, host: int, batch: int, errors, warnings) -> int:
    """Checks `rl.serving` (see the module docstring); returns the resolved tensor width (0 for
    rollouts on the training layout), appending to `errors` / `warnings`."""
    serving = config.rl.get("serving")
    if serving is None or serving.layout == "training":
        return 0
    if serving.layout not in SERVING_LAYOUTS:
        errors.append(f"rl.serving.layout={serving.layout!r} is not one of {SERVING_LAYOUTS}")
        return 0
    from o3video_jax.train.model_config import model_config  # jax/flax: only when checked

    try:
        mc = model_config(config)
    except (OSError, ValueError) as e:
        warnings.append(f"serving layout not checked against the model: {e}")
        return int(serving.tensor)
    heads, kv = mc.text.num_attention_heads, mc.text.num_key_value_heads
    tensor = int(serving.tensor) or math.gcd(max(host, 1), math.gcd(heads, kv))
    fix = (
        f"set rl.serving.tensor to a divisor of {math.gcd(num_devices, math.gcd(heads, kv))} "
        "(0 = the chips of one host, reduced to divide the heads), or "
        "rl.serving.layout='training'"
    )
    if tensor < 1 or num_devices % tensor:
        errors.append(
            f"rl.serving.tensor={serving.tensor} does not divide the {num_devices} devices: {fix}"
        )
        return tensor
    model = f"model.preset={config.model.preset!r}"
    if heads % tensor or kv % tensor:
        errors.append(
            f"rl.serving.tensor={tensor} does not split the {heads} attention heads and {kv} KV "
            f"heads of {model} evenly: {fix}"
        )
    dims = weight_dims(mc)
    for name, axes in (tuple(r) for r in config.sharding.rules):
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        if name in dims and "tensor" in axes:
            bad = [d for d in dims[name] if d % tensor]
            if bad and name not in ("heads", "kv_heads"):
                errors.append(
                    f"serving layout: weights with logical axis {name!r} have dimension "
                    f"{bad[0]}, which does not split over rl.serving.tensor={tensor} chips "
                    f"({model}): {fix}"
                )
    rows = num_devices // tensor
    if batch > 0 and batch % rows:
        errors.append(
            f"data.batch_size={batch} prompts do not split over the {rows} serving row shards "
            f"({num_devices} devices / rl.serving.tensor={tensor}): set data.batch_size to a "
            f"multiple of {rows}, or raise rl.serving.tensor"
        )
    if tensor > host:
        warnings.append(
            f"rl.serving.tensor={tensor} spans more than one host's {host} chips: every decode "
            "step's tensor-parallel all-reduces cross hosts"
        )
    return tensor


def apply(
    config: ml_collections.ConfigDict,
    num_devices: int,
    num_processes: int = 1,
    host_devices: int = 0,
) -> Resolved:
    """`check`, then writes the resolved batch, run length, schedule horizon, GSPO buckets and
    serving tensor width into `config` (its existing fields; a locked config stays locked).
    Idempotent."""
    r = check(config, num_devices, num_processes, host_devices)
    config.data.batch_size = r.batch_size
    config.total_steps = r.total_steps
    config.optim.total_steps = r.schedule_steps
    if config.stage == "gspo":
        config.rl.prompt_buckets = list(r.prompt_buckets)
        if r.serving_tensor and config.rl.get("serving") is not None:
            config.rl.serving.tensor = r.serving_tensor
    return r


def summary(r: Resolved) -> str:
    """One line for the launch log."""
    mesh = ",".join(f"{k}={v}" for k, v in r.mesh.items())
    text = (
        f"preflight: {r.num_devices} devices ({mesh}), batch {r.batch_size} "
        f"({r.per_device_batch_size} per batch shard), {r.total_steps} steps x "
        f"{r.updates_per_step} updates (lr horizon {r.schedule_steps})"
    )
    if r.prompt_buckets:
        text += f", prompt buckets {list(r.prompt_buckets)}"
    if r.serving_tensor:
        rows = r.num_devices // r.serving_tensor
        text += f", rollouts on a serving layout (tensor={r.serving_tensor}, rows={rows})"
    return text


def as_dict(r: Resolved) -> dict[str, Any]:
    return dataclasses.asdict(r)


def save_plan(config: ml_collections.ConfigDict, step_seconds: float | None, source: str) -> str:
    """One line: the planned checkpoint interval in steps and minutes.

    step_seconds: a measured step time or the AOT roofline floor (`source` says which); None
    when neither is known, and the line says so rather than guess.
    """
    every, minutes = int(config.ckpt.save_every), float(config.ckpt.save_every_minutes)
    rules = []
    if every > 0:
        rules.append(f"every {every} steps")
    if minutes > 0:
        rules.append(f"every {minutes:g} min")
    if not rules:
        return "checkpoints: only at the end and on preemption (ckpt.save_every = 0, no minutes)"
    text = "checkpoints: " + " and ".join(rules)
    if not step_seconds or step_seconds <= 0:
        return text + "; step time unknown, so the interval in the other unit is unknown"
    by_steps = every * step_seconds / 60 if every > 0 else math.inf
    by_minutes = max(1, math.ceil(60 * minutes / step_seconds)) if minutes > 0 else math.inf
    steps = min(every if every > 0 else math.inf, by_minutes)
    text += (
        f"; at {step_seconds:.3g} s/step ({source}) a save about every {steps} steps = "
        f"{min(by_steps, minutes if minutes > 0 else math.inf):.1f} min"
    )
    return text
