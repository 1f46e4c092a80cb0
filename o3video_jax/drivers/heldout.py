"""Held-out evaluation with greedy rollouts: mean reward terms and V-STAR-style metrics.

The prompts are STGR-RL records the model never trained on (the demo's held-out split).
Each is answered greedily with the GSPO sampler (group of 1) and scored two ways:
  - the training rewards (`rewards.compute_rewards`, sigma at its final value), averaged;
  - V-STAR-style dimensions (`o3video_jax.eval`): What = answer accuracy (option letter for
    multiple choice, exact normalised answer for free-form questions), When = temporal IoU of
    the `<t>a</t>s to <t>b</t>s` answer on temporal questions (mIoU and R1@0.3/0.5/0.7),
    Where = the grounded-claim box IoU (thk_spatial) on spatio-temporal questions, then
    AM / LGM (`vstar.aggregate_from_dims`).
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from o3video_jax.data.tokenizer import Tokenizer
from o3video_jax.drivers import experiment
from o3video_jax.eval import grounding, mcq, vstar
from o3video_jax.models.qwen2_5_vl import Qwen25VL, Qwen25VLConfig
from o3video_jax.rewards import compute_rewards, parse_completion
from o3video_jax.rewards.config import GENERAL_MCQ, TEMPORAL_QA, TEMPORAL_SPATIAL
from o3video_jax.rl import rollouts
from o3video_jax.rl import sampler as sampler_lib
from o3video_jax.rl.rollouts import REWARD_TERMS, sampling_config
from o3video_jax.train.sharding import DEFAULT_RULES, MeshAxes


def _item_scores(text: str, record: Mapping[str, Any], rewards: Mapping[str, float]) -> dict:
    task, comp = record["task"], parse_completion(text)
    out = {"task": task, **{f"reward/{k}": float(v) for k, v in rewards.items()}}
    if task == TEMPORAL_QA:
        gt = [float(x) for x in ast.literal_eval(record["answer"])]
        out["tiou"] = grounding.temporal_iou(gt, list(comp.span) if comp.span else None)
    elif task == GENERAL_MCQ:
        out["correct"] = float(mcq.extract_letter(text) == record["answer"].strip())
    elif task == TEMPORAL_SPATIAL:
        same = vstar.normalize_answer(comp.answer) == vstar.normalize_answer(record["answer"])
        out["correct"] = float(same)
        out["viou"] = float(rewards["thk_spatial"])
    return out


def summarize(items: list[dict]) -> dict[str, float]:
    """Mean reward terms and the V-STAR-style dimensions of scored items."""
    mean = lambda xs: float(np.mean(xs)) if xs else 0.0
    out = {k: mean([it[f"reward/{k}"] for it in items]) for k in REWARD_TERMS}
    tious = [it["tiou"] for it in items if "tiou" in it]
    out["acc"] = mean([it["correct"] for it in items if "correct" in it])
    out["mcq_acc"] = mean([it["correct"] for it in items if it["task"] == GENERAL_MCQ])
    out["tiou"] = mean(tious)
    out.update(grounding.recall_at(tious))
    out["viou"] = mean([it["viou"] for it in items if "viou" in it])
    agg = vstar.aggregate_from_dims(out["acc"], out["tiou"], out["tiou"], out["viou"], out["viou"])
    out["mAM"], out["mLGM"] = agg["mAM"], agg["mLGM"]
    out["n"] = len(items)
    return out


def _gather_items(items: list[dict], rows: int) -> list[dict]:
    """Every process's scored items (numbers only: task, reward terms, correct, tiou, viou),
    for a summary over the whole held-out set. `rows` >= len(items), equal on all processes."""
    tasks = sorted({TEMPORAL_QA, GENERAL_MCQ, TEMPORAL_SPATIAL})
    terms = [f"reward/{k}" for k in REWARD_TERMS]
    fields = ["correct", "tiou", "viou"]
    table = np.full((rows, 2 + len(terms) + len(fields)), np.nan, np.float64)
    table[:, 0] = 0.0
    for r, it in enumerate(items):
        task = tasks.index(it["task"]) if it["task"] in tasks else -1
        table[r, :2] = 1.0, task
        table[r, 2:] = [it[k] for k in terms] + [it.get(f, np.nan) for f in fields]
    out = []
    for row in np.asarray(multihost_utils.process_allgather(table)).reshape(-1, table.shape[1]):
        if row[0] != 1.0:
            continue
        it = {"task": tasks[int(row[1])] if row[1] >= 0 else "other"}
        it.update(zip(terms, row[2 : 2 + len(terms)].tolist(), strict=True))
        it.update(
            {
                f: v
                for f, v in zip(fields, row[2 + len(terms) :].tolist(), strict=True)
                if not np.isnan(v)
            }
        )
        out.append(it)
    return out


def evaluate(
    config: ml_collections.ConfigDict,
    model_config: Qwen25VLConfig,
    params: Any,
    tokenizer: Tokenizer,
    json_path: str,
    media_root: str,
    *,
    batch_size: int = 8,
    max_prompts: int | None = None,
    mesh: Mesh | None = None,
    rules: Sequence[tuple[str, MeshAxes]] = DEFAULT_RULES,
) -> tuple[dict[str, float], list[dict]]:
    """Greedy completions for the records of `json_path` (the first `max_prompts` of them,
    in file order); returns (summary, items).

    Without a mesh: single-process (the demo and small evaluations); params may live on any
    device. With `mesh` (the training loop): params are the run's global arrays and the
    prompts go through the sampler exactly as training rollouts do. Multi-process, every
    process must call this (the sampler's steps are collectives over the global params):
    each answers its own slice of the records (`batch_size` prompts a batch, its local rows;
    max_prompts is split evenly), the processes agree on the number of batches, and the
    summary covers every process's items; the returned items are this process's.
    """
    model = Qwen25VL(model_config)
    ds = experiment.dataset(
        config,
        tokenizer,
        model_config,
        "eval",
        json_path,
        media_root,
        batch_size=batch_size,
        shuffle=False,
        num_epochs=1,
    )
    processes = jax.process_count() if mesh is not None else 1
    # Records are dealt to processes p, p + P, p + 2P, ... (unshuffled): this process's share
    # of the first `max_prompts` records.
    pid = jax.process_index() if processes > 1 else 0
    local_cap = None if max_prompts is None else max(-(-(int(max_prompts) - pid) // processes), 0)
    scfg = sampling_config(
        config.rl, (tokenizer.eos_id, tokenizer.pad_id), tokenizer.pad_id, greedy=True, group_size=1
    )
    sample = sampler_lib.make_sampler(model, scfg, mesh=mesh, rules=rules)
    keys = jax.random.split(jax.random.PRNGKey(0), batch_size)
    items, template, loops = [], None, 0
    it = iter(ds)
    while True:
        # (a process whose share is empty still reads one batch: the shapes for the calls)
        want = local_cap is None or len(items) < local_cap or template is None
        batch = next(it, None) if want else None
        more = batch is not None
        if processes > 1:  # the same number of sampler calls on every process
            more = bool(np.any(multihost_utils.process_allgather(np.asarray(more))))
        if not more:
            break
        loops += 1
        if batch is not None:
            template = batch
        elif template is None:
            raise ValueError(f"{json_path} has no usable prompt for process {jax.process_index()}")
        else:  # done here, not elsewhere: rerun a batch whose results are all dropped
            batch = dataclasses.replace(template, valid=np.zeros_like(template.valid))
        valid = np.asarray(batch.valid, bool)
        if local_cap is not None:  # the cap may fall inside this batch: drop its tail
            valid = valid & (np.arange(batch_size) + len(items) < local_cap)
        inputs, filled = (batch.inputs, valid) if valid.any() else (template.inputs, template.valid)
        prompt = rollouts.trim_left(
            rollouts.fill_padding_rows(inputs, filled),
            tokenizer.pad_id,
            config.rl.prompt_buckets,
        )
        out = jax.tree.map(lambda x: rollouts.host_local(x, mesh), sample(params, prompt, keys))
        texts = rollouts.decode_completions(tokenizer, out.tokens, out.lengths, scfg.eos_ids)
        keep = [i for i in range(batch_size) if valid[i]]
        if not keep:
            continue
        recs = [batch.records[i] for i in keep]
        r = compute_rewards(
            [texts[i] for i in keep],
            recs,
            step_fraction=1.0,
            weights=dict(config.rl.reward_weights),
            spatial_gate=config.rl.spatial_gate,
        )
        for j, i in enumerate(keep):
            item = _item_scores(texts[i], recs[j], {k: r[k][j] for k in REWARD_TERMS})
            item.update(id=batch.record_ids[i], completion=texts[i])
            items.append(item)
    everyone = _gather_items(items, loops * batch_size) if processes > 1 else items
    return summarize(everyone), items
