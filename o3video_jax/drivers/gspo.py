"""The GSPO training loop: `train(config, workdir)`.

Per step (docs/design.md decision 8):
  1. a prompt batch (grain, RL mode) -> G samples per prompt (`rl.sampler`: one prefill per
     prompt, KV cache broadcast to the group), on the serving layout the policy is resharded
     into first (`rl.serving`, docs/design.md decision 15)                        [rollout]
  2. completions decoded to text -> `rewards.compute_rewards` (step_fraction = (step + 1) / total)
     -> group advantages
  3. rollout-policy log-probs (the params before this step's updates) and, when beta > 0, the
     frozen reference's (the run's initial params, recomputed on resume)           [logprobs]
  4. `num_updates` passes over `minibatches` shuffled minibatches of the rows     [update]
Diagnostics: `lr` (mean over the step's updates; `lr_last`: its last update's; the schedule
counts optimiser updates, `drivers.preflight`), `data/skipped` (examples the pipeline skipped so
far: prompts longer than the largest prompt bucket among them), clip fractions, ratio
min/mean/max, KL, advantage stats, zero-variance groups, each reward term, completion lengths,
and the time of each phase. Checkpoints, resume, NaN policy, logging and the HF export are as in
the SFT loop (`drivers.sft`, on the shared skeleton `drivers.loop`). With
`log.eval_every` > 0, every that many steps and after the last one, greedy completions of the
held-out prompts `data.eval_json` (`drivers.heldout.evaluate`, at most `log.eval_prompts`) add
`eval/<reward term>`, `eval/acc`, `eval/tiou`, `eval/viou`, `eval/mAM`, ... to that step's row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from o3video_jax.drivers import evaluation, experiment, heldout, loop, preflight
from o3video_jax.rewards import compute_rewards, step_fraction
from o3video_jax.rl import gspo, rollouts, serving
from o3video_jax.rl import sampler as sampler_lib
from o3video_jax.rl.rollouts import REWARD_TERMS, sampling_config
from o3video_jax.train import sharding, steps
from o3video_jax.train.state import make_schedule, update_count

DEFAULT_EVAL_PROMPTS = 64
_EVAL_KEYS = (*REWARD_TERMS, "acc", "mcq_acc", "tiou", "viou", "mAM", "mLGM", "n")
_MEAN_KEYS = ("loss", "grad_norm", "update_norm", "clip_frac", "clip_low_frac", "clip_high_frac")


def gspo_step_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The fields `gspo.make_gspo_update` reads, from the experiment config."""
    rl = config.rl
    return ml_collections.ConfigDict(
        {
            "gspo": {
                "eps_low": rl.eps_low,
                "eps_high": rl.eps_high,
                "beta": rl.beta,
                "kl_clamp": rl.kl_clamp,
                "ratio": rl.ratio,
                "old_logp": rl.old_logp,
                "temperature": rl.temperature if rl.temperature > 0 else 1.0,
            },
            "optimizer": preflight.optimizer_config(config).to_dict(),
            "loss": {"chunk": config.sft.ce_chunk},
            "nan_policy": config.nan_policy,
        }
    )


def train_length(config) -> int:
    """Text positions of a training row: the largest prompt bucket + max_new_tokens."""
    return max(int(b) for b in config.rl.prompt_buckets) + int(config.rl.max_new_tokens)


def _minibatches(batch: dict[str, Any], config, mesh, rng) -> list[dict]:
    """Minibatches of whole groups (`rollouts.group_minibatches`); each keeps the pixels once
    per prompt (the vision tower runs once per group) when `rl.share_vision` and the mesh's
    batch shards allow it."""
    return rollouts.group_minibatches(
        batch,
        int(config.rl.group_size),
        int(config.rl.minibatches),
        rng,
        shared=bool(config.rl.get("share_vision", True)),
        shards=rollouts.batch_shards(mesh, local=True),
        microbatches=int(config.optim.get("microbatches", 1)),
    )


def _combine(updates: list[dict[str, float]]) -> dict[str, float]:
    out = {}
    for k in updates[0]:
        vals = [u[k] for u in updates]
        if k == "ratio_min":
            out[k] = min(vals)
        elif k == "ratio_max":
            out[k] = max(vals)
        elif k == "skipped":
            out[k] = int(sum(vals))
        elif k in _MEAN_KEYS or k.startswith(("ratio", "kl", "advantage")):
            out[k] = float(np.mean(vals))
        else:
            out[k] = vals[-1]
    return out


def _global_rows(rewards: dict, adv, lengths, valid):
    """(rewards, advantages, lengths, valid) of every process's rows, in process order."""
    if jax.process_count() == 1:
        return rewards, np.asarray(adv), np.asarray(lengths), np.asarray(valid, bool)
    gather = lambda x: np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=True))
    return (
        {k: gather(v) for k, v in rewards.items()},
        gather(adv),
        gather(lengths),
        gather(valid).astype(bool),
    )


def make_evaluator(exp: experiment.Experiment) -> Callable[[Any], dict[str, float]]:
    """`evaluate(params) -> {"eval/...": value}`: greedy held-out rollouts of the first
    `log.eval_prompts` (default 64) records of data.eval_json.

    It runs on every process with the global params, as the training rollouts do: the
    params are sharded over every host's devices, so any computation on them (sampling
    included) is a collective that all processes must enter; fetching them to process 0
    instead would gather the whole model into one host. Each process answers its own slice
    of the prompts and `heldout.evaluate` combines the scores, so every process logs the same
    summary (only process 0 writes it).
    """
    config = exp.config
    json_path = config.data.eval_json
    media_root = evaluation.eval_media_root(config, exp.synthetic, json_path)
    max_prompts = int(config.log.get("eval_prompts", DEFAULT_EVAL_PROMPTS))
    if max_prompts < 1:
        raise ValueError(f"log.eval_prompts must be >= 1, got {max_prompts}")
    batch_size = experiment.local_batch_size(config.data.batch_size)

    def evaluate(params) -> dict[str, float]:
        summary, _ = heldout.evaluate(
            config,
            exp.model_config,
            params,
            exp.tokenizer,
            json_path,
            media_root,
            batch_size=batch_size,
            max_prompts=max_prompts,
            mesh=exp.mesh,
            rules=exp.rules,
        )
        if not summary["n"]:
            raise ValueError(f"data.eval_json {json_path} gave no held-out prompt to evaluate")
        return {f"eval/{k}": summary[k] for k in _EVAL_KEYS}

    return evaluate


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) GSPO to `config.total_steps`. Returns the last step's metrics."""
    if config.stage != "gspo":
        raise ValueError(f"drivers.gspo.train runs GSPO; config.stage is {config.stage!r}")
    eval_every = evaluation.check_config(config)
    exp = experiment.setup(config, workdir)
    rl, total, g = config.rl, int(config.total_steps), int(config.rl.group_size)
    tok = exp.tokenizer
    it = experiment.train_iterator(exp, "rl", group_size=g)

    scfg = sampling_config(config.rl, (tok.eos_id, tok.pad_id), tok.pad_id)
    # docs/design.md decision 15: prefill and decode on the serving layout (None: training's).
    layout = serving.layout_for(config, exp.mesh, exp.rules, exp.shardings.params, exp.model_config)
    if layout is None:
        sample = sampler_lib.make_sampler(exp.model, scfg, mesh=exp.mesh, rules=exp.rules)
    else:
        sample = sampler_lib.make_sampler(
            exp.model, scfg, mesh=layout.mesh, rules=layout.rules, feed_mesh=exp.mesh
        )
    ucfg = gspo_step_config(config)
    update = gspo.make_gspo_update(exp.model, ucfg, exp.mesh, exp.shardings, rules=exp.rules)
    logprobs = rollouts.make_logprob_fn(
        exp.model,
        exp.mesh,
        exp.rules,
        chunk=config.sft.ce_chunk,
        temperature=ucfg.gspo.temperature,
    )
    need_old = rl.old_logp == "rollout"
    ref_params = experiment.initial_params(exp) if rl.beta else None
    length = train_length(config)
    weights = dict(rl.reward_weights)
    evaluate = make_evaluator(exp) if eval_every else None

    base_key = jax.random.PRNGKey(config.seed + 1)
    # The lr schedule counts optimiser updates: num_updates x minibatches per rollout step.
    schedule = make_schedule(ucfg.optimizer)
    updates = int(jax.device_get(update_count(exp.state.opt_state)))

    def step_fn(state, step, host, data_time):
        nonlocal updates
        t0 = time.perf_counter() - data_time  # the rollout phase includes reading the batch
        prompt = rollouts.trim_left(
            rollouts.fill_padding_rows(host.inputs, host.valid), tok.pad_id, rl.prompt_buckets
        )
        n = prompt.batch_size * g
        # One global stream: process p takes keys [p * n, (p + 1) * n), so a sample's noise
        # does not depend on how many hosts share the batch.
        pid = jax.process_index()
        keys = jax.random.split(jax.random.fold_in(base_key, step), n * jax.process_count())
        keys = keys[pid * n : (pid + 1) * n]
        # The policy in its serving layout for this batch only (the update changes it).
        policy = state.params if layout is None else layout.reshard(state.params)
        out = sample(policy, prompt, keys)
        del policy
        out_host = jax.tree.map(lambda x: rollouts.host_local(x, exp.mesh), out)
        t1 = time.perf_counter()

        texts = rollouts.decode_completions(tok, out_host.tokens, out_host.lengths, scfg.eos_ids)
        examples = [host.records[i] for i in host.group_index]
        valid = np.repeat(host.valid, g)
        examples = [e if e is not None else host.records[0] for e in examples]
        r = compute_rewards(
            texts,
            examples,
            step_fraction=step_fraction(step, total),
            weights=weights,
            spatial_gate=rl.spatial_gate,
        )
        adv = np.asarray(gspo.group_advantages(r["total"], g)) * valid
        rows = rollouts.training_rows(
            prompt,
            out_host,
            g,
            length,
            tok.pad_id,
            share=bool(rl.get("share_vision", True)),
            mesh=exp.mesh,
        )
        rows["mask"] = rows["mask"] * valid[:, None]
        rows["advantages"] = adv.astype(np.float32)
        t2 = time.perf_counter()

        placed = sharding.shard_batch(rows, exp.mesh)
        zeros = np.zeros(rows["targets"].shape, np.float32)
        old = rollouts.host_local(logprobs(state.params, placed), exp.mesh) if need_old else zeros
        ref = rollouts.host_local(logprobs(ref_params, placed), exp.mesh) if rl.beta else zeros
        rows["old_logp"], rows["ref_logp"] = old, ref
        t3 = time.perf_counter()

        results, lrs = [], []
        for u in range(rl.num_updates):
            rng = np.random.default_rng([config.seed, step, u])
            for mb in _minibatches(rows, config, exp.mesh, rng):
                placed_mb = sharding.shard_batch(mb, exp.mesh)
                with jax.transfer_guard("disallow"):
                    state, m = update(state, placed_mb)
                m = {k: np.asarray(v).item() for k, v in jax.device_get(m).items()}
                lrs.append(float(schedule(updates)))
                updates += 0 if m["skipped"] else 1
                results.append(m)
                steps.check_finite(m, config.nan_policy)
        t4 = time.perf_counter()

        metrics = _combine(results)
        metrics["lr"] = float(np.mean(lrs))  # mean over this step's updates
        metrics["lr_last"] = lrs[-1]
        # Summaries over the global batch (every process's rows; a collective).
        r, adv, lengths, valid = _global_rows(
            {k: np.asarray(r[k]) for k in REWARD_TERMS}, adv, out_host.lengths, valid
        )
        lengths = lengths[valid]
        metrics.update(
            {
                "reward": float(r["total"][valid].mean()),
                "reward_std": float(r["total"][valid].std()),
                **{f"reward/{k}": float(r[k][valid].mean()) for k in REWARD_TERMS},
                "zero_variance_groups": float(gspo.zero_variance_fraction(np.asarray(adv), g)),
                "adv_mean": float(adv[valid].mean()),
                "adv_std": float(adv[valid].std()),
                "completion_len": float(lengths.mean()),
                "completion_len_max": int(lengths.max()),
                "completion_len_min": int(lengths.min()),
                "truncated_frac": float((lengths >= rl.max_new_tokens).mean()),
                "time/rollout": t1 - t0,
                "time/rewards": t2 - t1,
                "time/logprobs": t3 - t2,
                "time/update": t4 - t3,
            }
        )
        return state, metrics

    def evaluate_timed(params):
        t5 = time.perf_counter()
        out = evaluate(params)
        out["time/eval"] = time.perf_counter() - t5
        return out

    return loop.run(
        exp,
        it,
        step_fn,
        desc="gspo",
        bar_keys=("reward", "clip_frac", "kl_mean", "completion_len"),
        evaluate=evaluate_timed if eval_every else None,
        eval_every=eval_every,
    )
