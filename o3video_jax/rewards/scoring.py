"""The numeric half of the rewards: one jitted function over the whole batch.

Inputs are the fixed-size arrays of `ParsedBatch` and `Targets` (shapes fixed by
`RewardConfig`, so it compiles once per batch size). Dispatch is per sample, on `task`
(the original read the task of element 0 for the whole batch). The caller runs it in float64
(`jax.enable_x64`) on the CPU: the temporal gate and the segment test are discontinuous, and
float32 flips decisions the original's float64 makes (e.g. 1.4 - 0.4 < 1 is true in float64,
false in float32), and the rewards are host data anyway.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from o3video_jax.rewards.config import (
    GENERAL_FREE_FORM,
    GENERAL_MCQ,
    REWARD_NAMES,
    TASK_IDS,
    TEMPORAL_QA,
    TEMPORAL_QA_MCQ,
    TEMPORAL_SPATIAL,
    VISUAL_QA,
)
from o3video_jax.rewards.parse import TAG_COUNT_NAMES

_COUNT = {name: i for i, name in enumerate(TAG_COUNT_NAMES)}


def box_iou(gt, pred):
    """`calculate_iou(gt, pred)` of the original, broadcast over [..., 4] (x1, y1, x2, y2):
    inter = max(0, xB - xA) * max(0, yB - yA), union = area_gt + area_pred - inter,
    IoU = inter / union if union > 0 else 0 (areas are not clamped, as in the original)."""
    xa = jnp.maximum(gt[..., 0], pred[..., 0])
    ya = jnp.maximum(gt[..., 1], pred[..., 1])
    xb = jnp.minimum(gt[..., 2], pred[..., 2])
    yb = jnp.minimum(gt[..., 3], pred[..., 3])
    inter = jnp.maximum(0.0, xb - xa) * jnp.maximum(0.0, yb - ya)
    area_gt = (gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1])
    area_pred = (pred[..., 2] - pred[..., 0]) * (pred[..., 3] - pred[..., 1])
    union = area_gt + area_pred - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def temporal_iou(pred, gt):
    """ans_tiou's IoU of [start, end] pairs [..., 2]; 0 when the hull has zero length."""
    inter = jnp.maximum(
        0.0, jnp.minimum(pred[..., 1], gt[..., 1]) - jnp.maximum(pred[..., 0], gt[..., 0])
    )
    union = jnp.maximum(pred[..., 1], gt[..., 1]) - jnp.minimum(pred[..., 0], gt[..., 0])
    return jnp.where(union != 0, inter / jnp.where(union != 0, union, 1.0), 0.0)


def _mean_over(total, count):
    return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)


def _claim_spatial(p, t, gate):
    """Temporal-spatial thk_spatial: float[N].

    For each claim: eligible key-frame times g (reference gate g - T < 1, intended |g - T| < 1),
    the first eligible one nearest to T, then max over its objects of the mean over the
    object's GT boxes of the max IoU over the claim's boxes (object names are not compared). Claims without an eligible frame
    score 0 but count in the denominator (all parsed claims).
    """
    dt = t["kf_time"][:, None, :] - p["claim_time"][:, :, None]  # [N, C, K]: g - T
    eligible = (dt < 1.0) if gate == "reference" else (jnp.abs(dt) < 1.0)
    eligible &= t["kf_mask"][:, None, :] & p["claim_time_ok"][:, :, None]
    frame = jnp.argmin(jnp.where(eligible, jnp.abs(dt), jnp.inf), axis=-1)  # first minimum
    nearest = jnp.take_along_axis(t["kf_time"][:, None, :], frame[..., None], axis=-1)[..., 0]
    # The original marks "no frame" with closest_time = -1, so a GT time of exactly -1 s is
    # indistinguishable from none; kept for parity.
    found = eligible.any(-1) & (nearest != -1.0)  # [N, C]

    n, c = frame.shape
    rows = jnp.arange(n)[:, None]
    gt_boxes = t["kf_boxes"][rows, frame]  # [N, C, G, 4]
    gt_mask = t["kf_box_mask"][rows, frame]  # [N, C, G]
    iou = box_iou(gt_boxes[:, :, :, None, :], p["claim_boxes"][:, :, None, :, :])  # [N,C,G,MB]
    iou = jnp.where(p["claim_box_ok"][:, :, None, :], iou, 0.0)
    best = jnp.where(gt_mask, iou.max(-1), 0.0)  # [N, C, G]: max over the claim's boxes
    # Mean over each object's boxes: segment sums with one segment per (row, claim, object).
    g = best.shape[-1]
    segment = (rows[..., None] * c + jnp.arange(c)[None, :, None]) * g
    segment = segment + t["kf_box_object"][rows, frame]
    sums = jax.ops.segment_sum(best.ravel(), segment.ravel(), num_segments=n * c * g)
    count = t["kf_object_boxes"][rows, frame]  # [N, C, G] boxes per object slot
    per_object = jnp.where(count > 0, sums.reshape(n, c, g) / jnp.maximum(count, 1), 0.0)
    claim = jnp.where(found & p["claim_mask"], per_object.max(-1), 0.0)  # [N, C]
    return _mean_over(claim.sum(-1), p["num_claims"])


def _format(p, task):
    """format: 0 unless think/answer blocks exist and tags pair up; then 1.0 if grounded
    reasoning (per task rule) or a General task, else 0.5."""
    c = p["tag_counts"]
    n = {name: c[:, i] for name, i in _COUNT.items()}
    ok = p["has_think"] & p["has_answer"]
    for opening, closing in (
        ("think", "think"),
        ("answer", "answer"),
        ("obj", "obj"),
        ("t", "t"),
        ("box", "box"),
    ):
        ok &= n[f"{opening}_open"] == n[f"{closing}_close"]
    grounded = (n["obj_open"] > 0) & (n["t_open"] > 0) & (n["box_open"] > 0)
    temporal = (task == TASK_IDS[TEMPORAL_QA]) | (task == TASK_IDS[TEMPORAL_QA_MCQ])
    grounded = jnp.where(temporal, n["t_open"] >= 2, grounded)
    grounded |= (task == TASK_IDS[VISUAL_QA]) & p["vqa_pair"]
    general = (task == TASK_IDS[GENERAL_MCQ]) | (task == TASK_IDS[GENERAL_FREE_FORM])
    return jnp.where(ok, jnp.where(grounded | general, 1.0, 0.5), 0.0)


@functools.partial(jax.jit, static_argnames=("gate",))
def score_batch(p, t, ans_acc, sigma, weights, *, gate="intended"):
    """All seven rewards and their weighted total.

    p: ParsedBatch.arrays(); t: Targets.arrays(); ans_acc: float[N] (host-side text reward);
    sigma: scalar Gaussian width of thk_temporal_point; weights: float[7] in REWARD_NAMES
    order. Returns dict name -> float[N] for REWARD_NAMES and "total".
    """
    task = t["task"]
    is_ts = task == TASK_IDS[TEMPORAL_SPATIAL]
    is_vqa = task == TASK_IDS[VISUAL_QA]
    is_temporal = (task == TASK_IDS[TEMPORAL_QA]) | (task == TASK_IDS[TEMPORAL_QA_MCQ])
    think = p["has_think"]

    with jax.named_scope("rewards/answer"):
        ans_tiou = jnp.where(is_temporal & p["span_ok"], temporal_iou(p["span"], t["span"]), 0.0)
        ans_viou = jnp.where(
            is_vqa & p["answer_box_ok"] & t["box_ok"], box_iou(t["box"], p["answer_box"]), 0.0
        )

    with jax.named_scope("rewards/temporal"):
        times, times_ok, num_times = p["times"], p["times_ok"], p["num_times"]  # [N, MT]
        gap = jnp.abs(times[:, :, None] - t["kf_time"][:, None, :])  # [N, MT, K]: |tau - g|
        gap = jnp.where(t["kf_mask"][:, None, :], gap, jnp.inf).min(-1)
        has_gt = t["kf_mask"].any(-1)[:, None]
        proximity = jnp.exp(-(jnp.where(has_gt, gap, 0.0) ** 2) / (2 * sigma**2))
        proximity = jnp.where(times_ok & has_gt, proximity, 0.0)
        point = jnp.where(is_ts & think, _mean_over(proximity.sum(-1), num_times), 0.0)
        inside = times_ok & (t["span"][:, :1] <= times) & (times <= t["span"][:, 1:])
        segment = jnp.where(is_temporal & think, _mean_over(inside.sum(-1), num_times), 0.0)

    with jax.named_scope("rewards/spatial"):
        think_iou = box_iou(t["box"][:, None, :], p["think_boxes"])  # [N, TB]
        think_iou = jnp.where(p["think_box_ok"], think_iou, 0.0).max(-1)
        vqa_spatial = jnp.where(t["box_ok"] & (p["num_think_boxes"] > 0), think_iou, 0.0)
        spatial = jnp.where(is_vqa, vqa_spatial, jnp.where(is_ts, _claim_spatial(p, t, gate), 0.0))
        spatial = jnp.where(think & p["has_answer"], spatial, 0.0)

    out = {
        "ans_acc": ans_acc,
        "ans_tiou": ans_tiou,
        "ans_viou": ans_viou,
        "thk_temporal_point": point,
        "thk_temporal_segment": segment,
        "thk_spatial": spatial,
        "format": _format(p, task),
    }
    out["total"] = sum(weights[i] * out[name] for i, name in enumerate(REWARD_NAMES))
    return out
