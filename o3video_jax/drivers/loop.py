"""The loop skeleton that SFT and GSPO share: `run(exp, it, step_fn, ...)`.

A loop supplies one function, `step_fn(state, step, host, data_time) -> (state, metrics)`, that
turns one host batch into an updated state and that step's metrics (host floats, with a
`skipped` entry). Around it this module does, identically for both stages:
  - the data iterator's state after each batch (so a resume continues with the next one),
  - the profiler window (`log.profile_steps`),
  - `data/skipped`, the held-out evaluation every `log.eval_every` steps and after the last,
  - the measured step-time line of the save plan (two steps past compilation),
  - the metrics row (every `log.every` steps, the last, a skipped or evaluated one),
  - the NaN policy, checkpoints (`ckpt.save_every`, `ckpt.save_every_minutes`, SIGTERM: save,
    then return cleanly), and at the end the final checkpoint, the HF export and the
    completion marker `WORKDIR/COMPLETE.json` (written after the checkpoint has landed),
  - closing the metrics writer, the checkpointer and the data workers, whatever happened.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from o3video_jax import io
from o3video_jax.checkpoints import hf
from o3video_jax.data import pipeline
from o3video_jax.drivers import evaluation, experiment, preflight
from o3video_jax.train import completion, steps
from o3video_jax.train.metrics_log import MetricsWriter

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")

StepFn = Callable[[Any, int, Any, float], tuple[Any, dict[str, Any]]]


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


def run(
    exp: experiment.Experiment,
    it,
    step_fn: StepFn,
    *,
    desc: str,
    bar_keys: Sequence[str],
    evaluate: Callable[[Any], dict[str, float]] | None = None,
    eval_every: int = 0,
) -> dict[str, Any]:
    """Runs `step_fn` from `exp.start_step` to `config.total_steps` (see the module docstring).
    Returns the last step's metrics; a preempted run returns after its checkpoint, without the
    export and the completion marker."""
    config, workdir = exp.config, exp.workdir
    total = int(config.total_steps)
    writer = MetricsWriter(
        workdir,
        start_step=exp.start_step,
        total_steps=total,
        bar_keys=tuple(bar_keys),
        tensorboard=config.log.tensorboard,
        progress=config.log.progress,
        desc=desc,
    )
    profiler = Profiler(config.log.profile_steps, workdir)
    state, step, last = exp.state, exp.start_step, {}
    data_state = exp.data_state  # a finished run (start_step == total) saves it unchanged
    if step < total:  # more to do: an earlier, shorter run's marker no longer holds
        completion.clear(workdir)
    try:
        while step < total:
            t0 = time.perf_counter()
            host = next(it)
            data_state = it.get_state()  # after this batch: a resume continues with the next
            profiler.before(step + 1)
            state, metrics = step_fn(state, step, host, time.perf_counter() - t0)
            profiler.after(step + 1)
            step += 1
            elapsed = time.perf_counter() - t0
            metrics["data/skipped"] = data_skipped(it)
            # Before the checkpoint: a run killed in between redoes this step and its eval.
            evaluated = evaluation.is_eval_step(step, eval_every, total)
            if evaluated:
                metrics.update(evaluate(state.params))
            last = metrics
            if step == exp.start_step + 2 and jax.process_index() == 0:  # past compilation
                print(preflight.save_plan(config, elapsed, "measured"), flush=True)
            if step % config.log.every == 0 or step == total or metrics["skipped"] or evaluated:
                writer.write(step, metrics)
            writer.advance()
            steps.check_finite(metrics, config.nan_policy)  # after the bad step is logged
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
