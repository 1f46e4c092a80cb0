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
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from o3video_jax.data.tokenizer import Tokenizer
from o3video_jax.eval import grounding, mcq, vstar
from o3video_jax.models.qwen2_5_vl import Qwen25VL, Qwen25VLConfig
from o3video_jax.rewards import compute_rewards, parse_completion
from o3video_jax.rewards.config import GENERAL_MCQ, TEMPORAL_QA, TEMPORAL_SPATIAL
from o3video_jax.rl import rollouts
from o3video_jax.rl import sampler as sampler_lib
from o3video_jax.rl.loop import REWARD_TERMS, sampling_config
from o3video_jax.train import experiment


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


def evaluate(
    config: ml_collections.ConfigDict,
    model_config: Qwen25VLConfig,
    params: Any,
    tokenizer: Tokenizer,
    json_path: str,
    media_root: str,
    *,
    batch_size: int = 8,
) -> tuple[dict[str, float], list[dict]]:
    """Greedy completions for every record of `json_path`; returns (summary, items).

    Single-process (the demo and small evaluations); params may live on any device.
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
    scfg = sampling_config(config, tokenizer, greedy=True, group_size=1)
    sample = sampler_lib.make_sampler(model, scfg)
    keys = jax.random.split(jax.random.PRNGKey(0), batch_size)
    items = []
    for batch in ds:
        prompt = rollouts.trim_left(
            rollouts.fill_padding_rows(batch.inputs, batch.valid),
            tokenizer.pad_id,
            config.rl.prompt_buckets,
        )
        out = jax.device_get(sample(params, prompt, keys))
        texts = rollouts.decode_completions(tokenizer, out.tokens, out.lengths, scfg.eos_ids)
        keep = [i for i in range(batch_size) if batch.valid[i]]
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
    return summarize(items), items
