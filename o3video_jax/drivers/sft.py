"""The SFT training loop: `train(config, workdir)`.

One jitted, donated step per batch (`steps.make_sft_step`); everything else happens on the host
after an explicit `device_get`: metrics to metrics.jsonl / TensorBoard / the progress bar, the
NaN policy, Orbax checkpoints (params, optimiser state, step, rng and the grain iterator state)
every `ckpt.save_every` steps and on SIGTERM (then the loop returns cleanly), and at the end an
HF export (`WORKDIR/hf`, with the tokenizer files) that transformers can load, and then the
completion marker `WORKDIR/COMPLETE.json` (`train.completion`; a preempted run never writes it).
Checkpoints are also saved every `ckpt.save_every_minutes`. With
`log.eval_every` > 0, every that many steps and after the last one the held-out loss and token
accuracy on `data.eval_json` (`drivers.evaluation`) join that step's metrics row as `eval/*`.

Each metrics row has `lr` (the schedule at this step's optimiser update: skipped non-finite
steps do not advance it) and `data/skipped` (examples the pipeline skipped so far).

A run directory that holds a checkpoint is resumed automatically, and continues with exactly
the batches and random streams of an uninterrupted run (tests/test_train_loop.py).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from o3video_jax.drivers import evaluation, experiment, loop, preflight
from o3video_jax.train import sharding, steps
from o3video_jax.train.state import make_schedule, update_count

TIMING_KEYS = ("step_time", "data_time", "tokens_per_s")  # differ between identical runs
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def sft_step_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The fields `steps.make_sft_step` reads, from the experiment config."""
    return ml_collections.ConfigDict(
        {
            "optimizer": preflight.optimizer_config(config).to_dict(),
            "loss": {"chunk": config.sft.ce_chunk, "normalize": config.sft.loss_norm},
            "nan_policy": config.nan_policy,
        }
    )


def sft_batch(host) -> dict[str, Any]:
    """pipeline.SFTBatch -> the dict the SFT step takes (numpy leaves)."""
    return {"inputs": host.inputs, "targets": host.targets, "loss_mask": host.loss_mask}


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) SFT to `config.total_steps`. Returns the last logged metrics.

    Raises steps.NonFiniteLossError under nan_policy="stop" (after logging the bad step).
    """
    if config.stage != "sft":
        raise ValueError(f"train() runs SFT; config.stage is {config.stage!r}")
    eval_every = evaluation.check_config(config)
    exp = experiment.setup(config, workdir)
    it = experiment.train_iterator(exp, "sft")
    sft_step = steps.make_sft_step(
        exp.model, sft_step_config(config), exp.mesh, exp.shardings, rules=exp.rules
    )
    schedule = make_schedule(preflight.optimizer_config(config))
    # Optimiser updates applied so far (the schedule's step; skipped steps do not count).
    updates = int(jax.device_get(update_count(exp.state.opt_state)))

    def step_fn(state, _, host, data_time):
        nonlocal updates
        batch = sharding.shard_batch(sft_batch(host), exp.mesh)
        t1 = time.perf_counter()
        with jax.transfer_guard("disallow"):
            state, metrics = sft_step(state, batch)
        metrics = jax.device_get(metrics)
        t2 = time.perf_counter()
        metrics = {k: np.asarray(v).item() for k, v in metrics.items()}
        metrics["lr"] = float(schedule(updates))  # the lr this step's update used
        updates += 0 if metrics["skipped"] else 1
        metrics["step_time"] = t2 - t1
        metrics["data_time"] = data_time
        tokens = (host.inputs.segment_ids > 0).sum()
        if jax.process_count() > 1:  # every process's rows (a collective)
            tokens = np.sum(multihost_utils.process_allgather(np.int64(tokens)))
        metrics["tokens_per_s"] = float(tokens) / (t2 - t1)
        return state, metrics

    return loop.run(
        exp,
        it,
        step_fn,
        desc="sft",
        bar_keys=("loss", "accuracy", "grad_norm", "tokens_per_s"),
        evaluate=evaluation.make_sft_evaluator(exp) if eval_every else None,
        eval_every=eval_every,
    )
