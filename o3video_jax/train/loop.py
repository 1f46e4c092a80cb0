"""The SFT training loop: `train(config, workdir)`.

One jitted, donated step per batch (`steps.make_sft_step`); everything else happens on the host
after an explicit `device_get`: metrics to metrics.jsonl / TensorBoard / the progress bar, the
NaN policy, Orbax checkpoints (params, optimiser state, step, rng and the grain iterator state)
every `ckpt.save_every` steps and on SIGTERM (then the loop returns cleanly), and at the end an
HF export (`WORKDIR/hf`, with the tokenizer files) that transformers can load, and then the
completion marker `WORKDIR/COMPLETE.json` (`train.completion`; a preempted run never writes it).
Checkpoints are also saved every `ckpt.save_every_minutes`. With
`log.eval_every` > 0, every that many steps and after the last one the held-out loss and token
accuracy on `data.eval_json` (`train.evaluation`) join that step's metrics row as `eval/*`.

Each metrics row has `lr` (the schedule at this step's optimiser update: skipped non-finite
steps do not advance it) and `data/skipped` (examples the pipeline skipped so far).

A run directory that holds a checkpoint is resumed automatically, and continues with exactly
the batches and random streams of an uninterrupted run (tests/test_train_loop.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from o3video_jax import io
from o3video_jax.checkpoints import hf
from o3video_jax.data import pipeline
from o3video_jax.train import completion, evaluation, experiment, preflight, sharding, steps
from o3video_jax.train.metrics_log import MetricsWriter
from o3video_jax.train.state import make_schedule, update_count

TIMING_KEYS = ("step_time", "data_time", "tokens_per_s")  # differ between identical runs
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


class Profiler:
    """Captures a jax.profiler trace from the first to the last of `profile_steps`."""

    def __init__(self, profile_steps: Sequence[int], workdir: str):
        self.steps = sorted(int(s) for s in profile_steps)
        self.dir = os.path.join(workdir, "profile")
        self.active = False
        self._mirror = None

    def before(self, step: int) -> None:
        if self.steps and step == self.steps[0] and not self.active:
            self._mirror = io.Mirror(self.dir)  # traced locally, uploaded at the end
            jax.profiler.start_trace(self._mirror.local)
            self.active = True

    def after(self, step: int) -> None:
        if self.active and step >= self.steps[-1]:
            jax.profiler.stop_trace()
            self._mirror.close()
            self.active = False


def sft_step_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The fields `steps.make_sft_step` reads, from the experiment config."""
    return ml_collections.ConfigDict(
        {
            "optimizer": preflight.optimizer_config(config).to_dict(),
            "loss": {"chunk": config.sft.ce_chunk, "normalize": config.sft.loss_norm},
            "nan_policy": config.nan_policy,
        }
    )


def export_hf(exp: experiment.Experiment, params: Any) -> str:
    """Writes WORKDIR/hf: config.json + safetensors + the tokenizer files."""
    out = os.path.join(exp.workdir, "hf")
    hf.save(out, exp.model_config, params, progress=False)
    tok_dir = exp.config.data.tokenizer_dir or exp.config.model.hf_checkpoint
    if jax.process_index() == 0:
        for name in _TOKENIZER_FILES:
            src = os.path.join(tok_dir, name)
            if io.exists(src) and io.abspath(src) != io.abspath(os.path.join(out, name)):
                io.copy(src, os.path.join(out, name))
    return out


def data_skipped(it) -> int:
    """Examples the pipeline skipped so far (bad records, over budget), over all processes."""
    n = int(it.stats.num_skipped)
    if jax.process_count() > 1:  # a collective, as the loops' other global summaries
        n = int(np.sum(multihost_utils.process_allgather(np.int64(n))))
    return n


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
    total = int(config.total_steps)
    ds = experiment.dataset(
        config,
        exp.tokenizer,
        exp.model_config,
        "sft",
        config.data.train_json,
        config.data.media_root,
        batch_size=experiment.local_batch_size(config.data.batch_size),
        shuffle=config.data.shuffle,
        num_epochs=None,
    )
    it = iter(ds)
    if exp.data_state is not None:
        it.set_state(exp.data_state)
    step_fn = steps.make_sft_step(
        exp.model, sft_step_config(config), exp.mesh, exp.shardings, rules=exp.rules
    )
    evaluate = evaluation.make_sft_evaluator(exp) if eval_every else None
    schedule = make_schedule(preflight.optimizer_config(config))
    writer = MetricsWriter(
        workdir,
        start_step=exp.start_step,
        total_steps=total,
        bar_keys=("loss", "accuracy", "grad_norm", "tokens_per_s"),
        tensorboard=config.log.tensorboard,
        progress=config.log.progress,
        desc="sft",
    )
    profiler = Profiler(config.log.profile_steps, workdir)
    state, step, last = exp.state, exp.start_step, {}
    data_state = exp.data_state
    # Optimiser updates applied so far (the schedule's step; skipped steps do not count).
    updates = int(jax.device_get(update_count(state.opt_state)))
    if step < total:  # more to do: an earlier, shorter run's marker no longer holds
        completion.clear(workdir)
    try:
        while step < total:
            t0 = time.perf_counter()
            host = next(it)
            data_state = it.get_state()  # after this batch: a resume continues with the next
            batch = sharding.shard_batch(sft_batch(host), exp.mesh)
            t1 = time.perf_counter()
            profiler.before(step + 1)
            with jax.transfer_guard("disallow"):
                state, metrics = step_fn(state, batch)
            metrics = jax.device_get(metrics)
            profiler.after(step + 1)
            step += 1
            t2 = time.perf_counter()
            metrics = {k: np.asarray(v).item() for k, v in metrics.items()}
            metrics["lr"] = float(schedule(updates))  # the lr this step's update used
            updates += 0 if metrics["skipped"] else 1
            metrics["data/skipped"] = data_skipped(it)
            metrics["step_time"] = t2 - t1
            metrics["data_time"] = t1 - t0
            tokens = (host.inputs.segment_ids > 0).sum()
            if jax.process_count() > 1:  # every process's rows (a collective)
                tokens = np.sum(multihost_utils.process_allgather(np.int64(tokens)))
            metrics["tokens_per_s"] = float(tokens) / (t2 - t1)
            # Before the checkpoint: a run killed in between redoes this step and its eval.
            evaluated = evaluation.is_eval_step(step, eval_every, total)
            if evaluated:
                metrics.update(evaluate(state.params))
            last = metrics
            if step == exp.start_step + 2 and jax.process_index() == 0:  # past compilation
                print(preflight.save_plan(config, t2 - t0, "measured"), flush=True)
            if step % config.log.every == 0 or step == total or metrics["skipped"] or evaluated:
                writer.write(step, metrics)
            writer.advance()
            steps.check_finite(metrics, config.nan_policy)
            # The rows up to a checkpoint are durable (gs://: uploaded) before its commit.
            exp.checkpointer.save(step, state, data_state, before_save=writer.flush)
            if exp.checkpointer.preempted:
                print(f"preempted at step {step}: checkpoint saved, exiting", flush=True)
                return last
        exp.checkpointer.save(step, state, data_state, force=True, before_save=writer.flush)
        exported = export_hf(exp, state.params) if config.ckpt.export_hf else None
        exp.checkpointer.wait()  # the final checkpoint has landed, then the marker
        writer.flush()
        completion.mark(workdir, step, total, exported)
        return last
    finally:
        writer.close()
        exp.checkpointer.close()
        pipeline.close(it)
