"""Periodic held-out evaluation of the SFT loop (`log.eval_every`): masked CE and accuracy.

Every `log.eval_every` steps (and after the last one) the loop runs a jitted, forward-only
step over the held-out records `data.eval_json`: the same chunked log-probs and the same
loss weights as the train step (`losses.token_logprobs`, `losses.loss_weights`), under the
same mesh and logical-axis rules. The step returns *sums* (Σ w·nll, Σ w, Σ correct, Σ
tokens), so the eval loss is the train step's normalisation applied to the whole held-out
set at once: "token" = mean over its trained tokens, "sequence" = mean over its examples.

Shapes are fixed (the pipeline pads every batch to `batch_size` rows, `max_seq_len` tokens and
`max_patches` patches; the rows of a final partial batch are empty, loss mask 0), so the step
compiles once. The evaluation reads no random state, and the held-out dataset is its own
grain iterator: training batches and random streams are those of a run without evaluation.

Config: log.eval_every (0 = off), data.eval_json, data.eval_media_root (default: the
training media_root), log.eval_batches (default 8): the cap on batches per evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from o3video_jax import io
from o3video_jax.drivers import experiment
from o3video_jax.train import losses, sharding
from o3video_jax.train.sharding import MeshAxes
from o3video_jax.train.steps import split_microbatches

DEFAULT_EVAL_BATCHES = 8
_SUMS = ("nll", "weight", "correct", "tokens")


def check_config(config: ml_collections.ConfigDict) -> int:
    """`log.eval_every`, validated before anything is built; 0 means no evaluation."""
    every = int(config.log.eval_every)
    if every < 0:
        raise ValueError(f"log.eval_every must be >= 0 (0 = off), got {every}")
    # A synthetic run (`experiment.prepare_synthetic`) fills data.eval_json itself.
    synthetic = config.data.synthetic.videos > 0 and not config.data.train_json
    if every and not config.data.eval_json and not synthetic:
        raise ValueError(
            f"log.eval_every={every} needs held-out records: set data.eval_json "
            "(or log.eval_every=0 to train without evaluation)"
        )
    return every


def is_eval_step(step: int, every: int, total: int) -> bool:
    """Evaluate every `every` steps and after the last one."""
    return every > 0 and (step % every == 0 or step == total)


def eval_media_root(
    config: ml_collections.ConfigDict, synthetic: Any = None, json_path: str | None = None
) -> str:
    """Where the held-out records' media live: data.eval_media_root when set; the synthetic
    held-out directory for records under it (a synthetic run's held-out split); else the
    training media_root."""
    explicit = config.data.get("eval_media_root", "")
    if explicit:
        return explicit
    json_path = json_path or config.data.eval_json
    if synthetic is not None:
        held = io.abspath(synthetic.heldout_media_root)
        if io.abspath(json_path).startswith(held + "/"):
            return held
    return config.data.media_root


def any_process(flag: bool) -> bool:
    """True when `flag` holds on any process: every process runs the same number of jitted
    steps over global arrays (a collective), so they must agree on when the data ends."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.bool_))))


def make_sft_eval_step(
    model: nn.Module,
    *,
    chunk: int,
    normalize: str,
    mesh: Mesh,
    params_shardings: Any,
    rules: Sequence[tuple[str, MeshAxes]],
    microbatches: int = 1,
) -> Callable[[Any, dict[str, Any]], dict[str, jax.Array]]:
    """The jitted forward-only step `(params, batch) -> sums` (replicated float32 scalars).

    batch: the SFT step's batch (inputs ModelInputs [B, L], targets int32[B, L], loss_mask
    float32[B, L]), placed with `sharding.shard_batch`. sums: nll = Σ w·(-log p), weight = Σ w
    (w from `losses.loss_weights`: the train step's normaliser, unclamped), correct = Σ mask ·
    [argmax == target], tokens = Σ mask. With `microbatches` > 1 the rows go through the
    model in the train step's strided microbatches, so the peak memory stays below its.
    """
    if normalize not in losses.NORMALIZATIONS:
        raise ValueError(
            f"loss.normalize must be one of {losses.NORMALIZATIONS}, got {normalize!r}"
        )

    def sums(params, mb):
        variables = {"params": params}
        hidden = model.apply(variables, mb["inputs"], method="hidden_states")
        unembed = lambda h: model.apply(variables, h, method="unembed")
        logp, correct = losses.token_logprobs(hidden, mb["targets"], unembed, chunk=chunk)
        mask, weights = mb["loss_mask"].astype(jnp.float32), mb["weights"]
        return {
            "nll": -jnp.where(weights != 0, weights * logp, 0.0).sum(),
            "weight": weights.sum(),
            "correct": (correct * mask).sum(),
            "tokens": mask.sum(),
        }

    def step(params, batch):
        weights, _ = losses.loss_weights(batch["loss_mask"], batch["inputs"].segment_ids, normalize)
        batch = {**batch, "weights": weights}
        if microbatches == 1:
            return sums(params, batch)

        def one(mb):
            mb = jax.lax.with_sharding_constraint(mb, sharding.batch_sharding(mb, mesh))
            return sums(params, mb)

        per_mb = jax.lax.map(one, split_microbatches(batch, microbatches))
        return jax.tree.map(lambda x: x.sum(0), per_mb)

    replicated = NamedSharding(mesh, PartitionSpec())
    compiled: dict[Any, Any] = {}

    def jitted_for(batch):
        key = jax.tree.structure(batch)
        if key not in compiled:
            compiled[key] = jax.jit(
                step,
                in_shardings=(params_shardings, sharding.batch_sharding(batch, mesh)),
                out_shardings=replicated,
            )
        return compiled[key]

    def run(params, batch):
        with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
            return jitted_for(batch)(params, batch)

    run.compiled = compiled  # for tests: one entry, whose _cache_size() is 1
    return run


def _host_batch(host) -> dict[str, Any]:
    return {"inputs": host.inputs, "targets": host.targets, "loss_mask": host.loss_mask}


def make_sft_evaluator(
    exp: experiment.Experiment, *, max_batches: int | None = None
) -> Callable[[Any], dict[str, float]]:
    """`evaluate(params) -> {"eval/loss", "eval/accuracy", "eval/tokens"}` over the first
    `max_batches` (default log.eval_batches, else 8) batches of data.eval_json, in file
    order, one epoch. Runs on every process (the params are global arrays)."""
    config = exp.config
    json_path = config.data.eval_json
    if not json_path:
        raise ValueError("SFT evaluation needs data.eval_json")
    if max_batches is None:
        max_batches = int(config.log.get("eval_batches", DEFAULT_EVAL_BATCHES))
    if max_batches < 1:
        raise ValueError(f"log.eval_batches must be >= 1, got {max_batches}")
    ds = experiment.dataset(
        config,
        exp.tokenizer,
        exp.model_config,
        "sft",
        json_path,
        eval_media_root(config, exp.synthetic, json_path),
        batch_size=experiment.local_batch_size(config.data.batch_size),
        shuffle=False,
        num_epochs=1,
    )
    # Fail now rather than at the first evaluation: e.g. STGR-RL records (no reasoning) give
    # no SFT example. Every process raises, so none is left waiting in a collective.
    if any_process(next(iter(ds), None) is None):
        raise ValueError(
            f"data.eval_json {json_path} gives no SFT example on some process: SFT evaluation "
            "needs STGR-SFT records (with reasoning_process) whose media are under "
            f"{eval_media_root(config, exp.synthetic, json_path)!r}"
        )
    step = make_sft_eval_step(
        exp.model,
        chunk=int(config.sft.ce_chunk),
        normalize=config.sft.loss_norm,
        mesh=exp.mesh,
        params_shardings=exp.shardings.params,
        rules=exp.rules,
        microbatches=int(config.optim.microbatches),
    )

    def evaluate(params) -> dict[str, float]:
        totals = dict.fromkeys(_SUMS, 0.0)
        it, template = iter(ds), None
        for _ in range(max_batches):
            host = next(it, None)
            if not any_process(host is not None):
                break
            if host is not None:
                batch = template = _host_batch(host)
            elif template is None:
                raise ValueError(
                    f"data.eval_json {json_path} has no usable example for process "
                    f"{jax.process_index()} (fewer held-out records than processes?)"
                )
            else:  # this process ran out first: a batch that counts nothing, shapes unchanged
                batch = {**template, "loss_mask": np.zeros_like(template["loss_mask"])}
            placed = sharding.shard_batch(batch, exp.mesh)
            with jax.transfer_guard("disallow"):
                out = step(params, placed)
            for k, v in jax.device_get(out).items():
                totals[k] += float(v)
        if totals["tokens"] == 0:
            raise ValueError(
                f"data.eval_json {json_path} gave no trained tokens: SFT evaluation needs "
                "STGR-SFT records (with reasoning_process) whose media are found under "
                f"{eval_media_root(config, exp.synthetic, json_path)!r}"
            )
        return {
            "eval/loss": totals["nll"] / max(totals["weight"], 1e-12),
            "eval/accuracy": totals["correct"] / totals["tokens"],
            "eval/tokens": int(round(totals["tokens"])),
        }

    evaluate.step = step
    return evaluate
