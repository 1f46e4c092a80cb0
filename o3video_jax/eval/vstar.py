"""V-STaR metrics: What (answer accuracy), When (temporal IoU), Where (spatial IoU), AM, LGM.

`metrics(items)` reproduces the original `eval_vstar.py` on result records; the aggregates
AM/LGM reproduce the paper's Table 1 from its per-dimension numbers (see
`aggregate_from_dims`). All values are fractions in [0, 1] (multiply by 100 for tables).

Item record (one dict per V-STaR question, as the original inference script writes it):
  domain, fps, frame_count (or duration in seconds), question, answer (GT), timestamps
  [s, e], bboxes [{timestamp, xmin, ymin, xmax, ymax}], answer_vqa (the predicted answer
  text), answer_temporal / answer_temporal_2 (parsed [s, e] or []) and/or the raw outputs
  answer_temporal_pre / answer_temporal_pre_2 (parsed here when the parsed one is empty),
  answer_spatial / answer_spatial_2 (parsed {second: box}) and/or answer_spatial_pre(_2),
  optional vqa_score (judge rating 0-3, -1 = unparseable judge reply).

Answer score: `vqa_score` if present, else the `judge` callable if given, else exact match
of normalised strings (3 if equal, 0 otherwise). Score >= 2 counts as correct.

Returned keys (chain k in {1, 2}; "chain 1" = When then Where with GT time given, "chain 2"
= Where then When with GT boxes given):
  n, n_rated, acc, avg_score, avg_valid_score,
  tiou_k, r1@0.3_k, r1@0.5_k, r1@0.7_k,
  viou_k, ap@0.1_k, ap@0.3_k, ap@0.5_k, ap@0.7_k, ap@0.9_k,
  AM1, AM2, mAM, LGM1, LGM2, mLGM,
  vqa&temp_k, vqa&spat_k, temp&spat_k, vqa&temp&spat_k,
  by_domain {domain: same flat keys}, by_duration {Short|Medium|Long: same flat keys}.

Faithful to the original: an item with an empty predicted answer is "not rated": it is left
out of every mean but still counts in the overall accuracy and joint-rate denominator `n`.
A judge rating outside 0..3 counts as written (upstream's `int(reply)`); only an unparseable
reply is -1. An item with `status: "failed"` (not run: over the evaluation budgets) is rated
0 with zero IoUs, so it counts inside every mean.
Per-group denominators are the group's rated items. Groups with no rated item are omitted.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from o3video_jax.eval.grounding import temporal_iou
from o3video_jax.eval.vstar_parse import (
    answer_content,
    balance_brackets,
    parse_judge_reply,
    parse_spatial_answer,
    parse_temporal_answer,
)

__all__ = [
    "aggregate_from_dims",
    "answer_content",
    "balance_brackets",
    "box_iou",
    "duration_bucket",
    "metrics",
    "normalize_answer",
    "parse_judge_reply",
    "parse_spatial_answer",
    "parse_temporal_answer",
    "score_item",
    "spatial_scores",
]

TEMPORAL_THRESHOLDS = (0.3, 0.5, 0.7)
SPATIAL_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
CORRECT_SCORE = 2  # judge ratings 2 ("largely correct") and 3 count as correct
JOINT_TIOU = 0.3
JOINT_VIOU = 0.1
# ln(1 - x) is -inf for a perfect dimension (x = 1). We clip 1 - x at this floor so LGM stays
# finite and JSON-serialisable: a perfect dimension adds -ln(1e-6)/3 ~= 4.61 to LGM_k.
LGM_EPS = 1e-6

Judge = Callable[[str, str, str], "int | str"]


def normalize_answer(text) -> str:
    """Lower-case, punctuation to spaces, whitespace collapsed (for the exact-match fallback)."""
    text = (
        str(text)
        .lower()
        .translate(str.maketrans(string.punctuation, " " * len(string.punctuation)))
    )
    return re.sub(r"\s+", " ", text).strip()


def duration_bucket(seconds: float) -> str:
    """Short < 60 s <= Medium < 180 s <= Long."""
    if seconds < 60:
        return "Short"
    return "Medium" if seconds < 180 else "Long"


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def box_iou(gt: Mapping, pred) -> float:
    """IoU of a GT box `{xmin, ymin, xmax, ymax}` and a predicted `[x1, y1, x2, y2]` (0 if bad)."""
    if not isinstance(pred, (list, tuple)) or len(pred) != 4 or not all(map(_is_number, pred)):
        return 0.0
    px1, py1, px2, py2 = pred
    ix = max(0.0, min(gt["xmax"], px2) - max(gt["xmin"], px1))
    iy = max(0.0, min(gt["ymax"], py2) - max(gt["ymin"], py1))
    inter = ix * iy
    union = (
        (gt["xmax"] - gt["xmin"]) * (gt["ymax"] - gt["ymin"]) + (px2 - px1) * (py2 - py1) - inter
    )
    return inter / union if union > 0 else 0.0


def _best_iou(gt: Mapping, pred_at_second) -> float:
    """Max IoU over the box (or list of boxes) predicted at the GT box's second."""
    if not isinstance(pred_at_second, (list, tuple)) or not pred_at_second:
        return 0.0
    if _is_number(pred_at_second[0]):  # a single flat box
        pred_at_second = [pred_at_second]
    return max(box_iou(gt, box) for box in pred_at_second)


def spatial_scores(gt_boxes: Sequence[Mapping], pred) -> tuple[float, tuple[float, ...]]:
    """Item mIoU and AP@SPATIAL_THRESHOLDS of a `{str(second): box}` prediction.

    Each GT box looks up `str(box["timestamp"])` in `pred`; a missing key (or a prediction
    that is not a dict, e.g. the list the parser's retry may return) gives IoU 0. AP@thr is the
    fraction of GT boxes with IoU >= thr. An item without GT boxes scores 0 everywhere.
    """
    ious = []
    for gt in gt_boxes:
        key = str(gt["timestamp"])
        hit = isinstance(pred, Mapping) and key in pred
        ious.append(_best_iou(gt, pred[key]) if hit else 0.0)
    if not ious:
        return 0.0, (0.0,) * len(SPATIAL_THRESHOLDS)
    arr = np.asarray(ious)
    return float(arr.mean()), tuple(float(np.mean(arr >= t)) for t in SPATIAL_THRESHOLDS)


def _temporal_pred(item: Mapping, chain: int):
    suffix = "" if chain == 1 else "_2"
    pred = item.get(f"answer_temporal{suffix}")
    if isinstance(pred, str):
        return parse_temporal_answer(pred)
    if not pred:
        return parse_temporal_answer(item.get(f"answer_temporal_pre{suffix}", ""))
    return pred


def _spatial_pred(item: Mapping, chain: int):
    suffix = "" if chain == 1 else "_2"
    pred = item.get(f"answer_spatial{suffix}")
    if isinstance(pred, str):
        return parse_spatial_answer(pred)
    if pred is None:
        return parse_spatial_answer(item.get(f"answer_spatial_pre{suffix}", ""))
    return pred


def _answer_score(item: Mapping, judge: Judge | None) -> tuple[int, str]:
    if item.get("vqa_score") is not None:
        score, source = item["vqa_score"], "judge"
    elif judge is not None:
        score, source = judge(item["question"], item["answer"], item["answer_vqa"]), "judge"
        score = parse_judge_reply(score) if isinstance(score, str) else score
    else:
        same = normalize_answer(item["answer_vqa"]) == normalize_answer(item["answer"])
        return (3 if same else 0), "exact"
    if isinstance(score, bool) or not isinstance(score, (int, np.integer)):
        raise ValueError(f"judge score must be an int (0..3, -1 unparseable), got {score!r}")
    return int(score), source  # out-of-range integers count as written, as upstream


def _duration_seconds(item: Mapping) -> float:
    if "duration" in item:
        return float(item["duration"])
    if "frame_count" in item and "fps" in item:
        return round(item["frame_count"] / item["fps"], 2)
    raise ValueError("item needs 'duration' or both 'frame_count' and 'fps'")


def score_item(item: Mapping, judge: Judge | None = None) -> dict:
    """Per-item scores: the record `metrics` aggregates and `results.write_jsonl` stores."""
    for key in ("answer", "timestamps", "bboxes"):
        if key not in item:
            raise ValueError(f"V-STaR item lacks required field {key!r}")
    seconds = _duration_seconds(item)
    out = {
        "vid": item.get("vid"),
        "domain": item.get("domain", "unknown"),
        "duration_s": seconds,
        "duration": duration_bucket(seconds),
        "rated": bool(str(item.get("answer_vqa") or "").strip()),
    }
    if item.get("status") == "failed":  # not run (over budget): zero everywhere, inside n
        out.update(rated=True, score=0, score_source="failed")
        for chain in (1, 2):
            out[f"pred_temporal_{chain}"] = []
            out[f"tiou_{chain}"] = out[f"viou_{chain}"] = 0.0
            out[f"aps_{chain}"] = [0.0] * len(SPATIAL_THRESHOLDS)
        return out
    if not out["rated"]:
        return out
    out["score"], out["score_source"] = _answer_score(item, judge)
    for chain in (1, 2):
        pred_t = _temporal_pred(item, chain)
        miou, aps = spatial_scores(item["bboxes"], _spatial_pred(item, chain))
        out[f"pred_temporal_{chain}"] = pred_t
        out[f"tiou_{chain}"] = temporal_iou(item["timestamps"], pred_t)
        out[f"viou_{chain}"] = miou
        out[f"aps_{chain}"] = list(aps)
    return out


def aggregate_from_dims(acc: float, tiou_1: float, tiou_2: float, viou_1: float, viou_2: float):
    """AM_k, mAM, LGM_k, mLGM from per-dimension fractions in [0, 1].

    AM_k = (Acc + tIoU_k + vIoU_k) / 3; LGM_k = -[ln(1-Acc) + ln(1-tIoU_k) + ln(1-vIoU_k)] / 3
    with 1 - x clipped at LGM_EPS; mAM and mLGM average the two chains.
    """
    dims = {"acc": acc, "tiou_1": tiou_1, "tiou_2": tiou_2, "viou_1": viou_1, "viou_2": viou_2}
    for name, value in dims.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}")

    def neg_log1m(x):
        return -math.log(max(1.0 - x, LGM_EPS))

    am = {k: (acc + dims[f"tiou_{k}"] + dims[f"viou_{k}"]) / 3 for k in (1, 2)}
    lgm = {
        k: (neg_log1m(acc) + neg_log1m(dims[f"tiou_{k}"]) + neg_log1m(dims[f"viou_{k}"])) / 3
        for k in (1, 2)
    }
    return {
        "AM1": am[1],
        "AM2": am[2],
        "mAM": (am[1] + am[2]) / 2,
        "LGM1": lgm[1],
        "LGM2": lgm[2],
        "mLGM": (lgm[1] + lgm[2]) / 2,
    }


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def _aggregate(scored: Sequence[dict], n: int) -> dict:
    """Flat metrics over `scored` items; accuracy and joint rates are divided by `n`."""
    rated = [s for s in scored if s["rated"]]
    scores = np.asarray([s["score"] for s in rated], dtype=np.int64)
    correct = scores >= CORRECT_SCORE
    out = {
        "n": n,
        "n_rated": len(rated),
        "acc": float(correct.sum()) / n,
        # upstream: -1 (judge reply not an int) counts as 0 here and is left out of the valid
        # mean; any other integer counts as written
        "avg_score": _mean(np.where(scores == -1, 0, scores)),
        "avg_valid_score": _mean(scores[scores != -1]),
    }
    for k in (1, 2):
        tious = np.asarray([s[f"tiou_{k}"] for s in rated])
        vious = np.asarray([s[f"viou_{k}"] for s in rated])
        aps = np.asarray([s[f"aps_{k}"] for s in rated]).reshape(len(rated), -1)
        out[f"tiou_{k}"] = _mean(tious)
        for thr in TEMPORAL_THRESHOLDS:
            out[f"r1@{thr}_{k}"] = _mean(tious >= thr)
        out[f"viou_{k}"] = _mean(vious)
        for j, thr in enumerate(SPATIAL_THRESHOLDS):
            out[f"ap@{thr}_{k}"] = _mean(aps[:, j])
        t_ok, v_ok = tious >= JOINT_TIOU, vious >= JOINT_VIOU
        out[f"vqa&temp_{k}"] = float(np.sum(correct & t_ok)) / n
        out[f"vqa&spat_{k}"] = float(np.sum(correct & v_ok)) / n
        out[f"temp&spat_{k}"] = float(np.sum(t_ok & v_ok)) / n
        out[f"vqa&temp&spat_{k}"] = float(np.sum(correct & t_ok & v_ok)) / n
    out.update(
        aggregate_from_dims(out["acc"], out["tiou_1"], out["tiou_2"], out["viou_1"], out["viou_2"])
    )
    return out


def _by(scored: Sequence[dict], field: str) -> dict:
    groups: dict[str, list[dict]] = {}
    for s in scored:
        groups.setdefault(s[field], []).append(s)
    return {
        name: _aggregate(members, sum(m["rated"] for m in members))
        for name, members in groups.items()
        if any(m["rated"] for m in members)
    }


def metrics(items: Sequence[Mapping], judge: Judge | None = None, *, scored=None) -> dict:
    """Dataset V-STaR metrics (keys in the module docstring).

    Args:
      items: V-STaR result records.
      judge: optional `judge(question, gt_answer, candidate) -> int | str` (0-3 rating or the
        judge's raw reply) used for items without `vqa_score`.
      scored: optional precomputed `[score_item(item) ...]` (avoids re-running the judge).
    """
    if not items:
        raise ValueError("metrics() needs at least one item")
    if scored is None:
        scored = []
        for i, item in enumerate(items):
            try:
                scored.append(score_item(item, judge))
            except ValueError as e:
                raise ValueError(f"item {i} (vid {item.get('vid')!r}): {e}") from None
    elif len(scored) != len(items):
        raise ValueError(f"scored has {len(scored)} entries for {len(items)} items")
    out = _aggregate(scored, len(items))
    out["by_domain"] = _by(scored, "domain")
    out["by_duration"] = _by(scored, "duration")
    return out
