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
from jax import lax

from o3video_jax.rewards.config import (
    GENERAL_FREE_FORM,
    GENERAL_MCQ,
    OPEN_O3_REWARDS,
    TASK_IDS,
    TEMPORAL_QA,
    TEMPORAL_QA_MCQ,
    TEMPORAL_SPATIAL,
    VISUAL_QA,
)
from o3video_jax.rewards.parse import TAG_COUNT_NAMES

_COUNT = {name: i for i, name in enumerate(TAG_COUNT_NAMES)}
_CHUNK = 512  # entries per step of sparse_map's loop


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


def sparse_map(fn, index, count, chunk: int = _CHUNK):
    """fn at the flat entries index[:count] only: float[M] (M = index.size), fn's values
    there, 0 elsewhere.

    fn maps int32[S] flat indices to float[S]. The host lists the entries that exist
    (ParsedBatch.time_index, claim_index), and the loop over them, `chunk` at a time, runs as
    many steps as there are entries: the padding of fixed budgets (most of an [N, C] claim
    grid) costs no work.
    """
    m = index.shape[0]
    if m == 0:
        return jnp.zeros(0)
    s = min(chunk, m)
    index = jnp.pad(index, (0, -m % s))  # whole chunks: dynamic_slice would clamp the last

    def body(i, out):
        ids = lax.dynamic_slice(index, (i * s,), (s,))
        valid = i * s + jnp.arange(s) < count
        return out.at[ids].add(jnp.where(valid, fn(ids), 0.0))

    return lax.fori_loop(0, (count + s - 1) // s, body, jnp.zeros(m))


def _claim_spatial(p, t, gate, scored):
    """Temporal-spatial thk_spatial: float[N].

    For each claim: eligible key-frame times g (reference gate g - T < 1, intended |g - T| < 1),
    the first eligible one nearest to T, then max over its objects of the mean over the
    object's GT boxes of the max IoU over the claim's boxes (object names are not compared).
    Claims without an eligible frame score 0 but count in the denominator (all parsed
    claims). Only claims of `scored` rows (bool[N]) with a finite time and a valid box can
    score above 0, so only those are evaluated.
    """
    n, c, mb = p["claim_box_ok"].shape
    g = t["kf_boxes"].shape[2]
    claim_time = p["claim_time"].reshape(n * c)
    claim_boxes = p["claim_boxes"].reshape(n * c, mb, 4)
    claim_box_ok = p["claim_box_ok"].reshape(n * c, mb)
    claim_time_ok = p["claim_time_ok"].reshape(n * c)

    def claim_score(ids):  # int32[S] flat claim indices -> float[S]
        live = claim_time_ok[ids] & scored[ids // c] & claim_box_ok[ids].any(-1)
        example = t["example"][ids // c]
        kf_time = t["kf_time"][example]  # [S, K]
        dt = kf_time - claim_time[ids][:, None]  # g - T
        eligible = (dt < 1.0) if gate == "reference" else (jnp.abs(dt) < 1.0)
        eligible &= t["kf_mask"][example]
        frame = jnp.argmin(jnp.where(eligible, jnp.abs(dt), jnp.inf), axis=-1)  # first minimum
        nearest = jnp.take_along_axis(kf_time, frame[:, None], axis=-1)[:, 0]
        # The original marks "no frame" with closest_time = -1, so a GT time of exactly -1 s
        # is indistinguishable from none; kept for parity.
        found = eligible.any(-1) & (nearest != -1.0)
        gt_boxes = t["kf_boxes"][example, frame]  # [S, G, 4]
        iou = box_iou(gt_boxes[:, :, None, :], claim_boxes[ids][:, None, :, :])  # [S, G, MB]
        iou = jnp.where(claim_box_ok[ids][:, None, :], iou, 0.0)
        best = iou.max(-1)  # [S, G]
        # Mean over each object's boxes: add the boxes in slot order, which is each object's
        # box order, so the sums are the original's sequential ones (adding 0.0 is exact).
        owner = t["kf_box_object"][example, frame].astype(jnp.int32) - 1  # [S, G], -1: none
        sums, count = jnp.zeros_like(best), jnp.zeros(best.shape, jnp.int32)  # per object
        for j in range(g):
            hit = owner[:, j : j + 1] == jnp.arange(g)  # [S, G]: the object of box slot j
            sums, count = sums + jnp.where(hit, best[:, j : j + 1], 0.0), count + hit
        per_object = jnp.where(count > 0, sums / jnp.maximum(count, 1), 0.0)
        return jnp.where(live & found, per_object.max(-1), 0.0)

    claim = sparse_map(claim_score, p["claim_index"], p["claim_count"]).reshape(n, c)
    return _mean_over(claim.sum(-1), p["num_claims"])


def _time_scores(p, t, sigma, is_ts, live):
    """float[N, MT] per bare think time tau of `live` rows (bool[N]): temporal-spatial rows
    exp(-d^2 / (2 sigma^2)) with d = min_g |tau - g| over the key frames (0 without key
    frames); other rows 1 if tau lies in the GT span [start, end] (inclusive), else 0."""
    n, mt = p["times"].shape
    times = p["times"].reshape(n * mt)

    def time_score(ids):  # int32[S] flat time indices -> float[S]
        row = ids // mt
        tau = times[ids]
        example = t["example"][row]
        kf_mask = t["kf_mask"][example]  # [S, K]
        gap = jnp.where(kf_mask, jnp.abs(tau[:, None] - t["kf_time"][example]), jnp.inf).min(-1)
        has_gt = kf_mask.any(-1)
        proximity = jnp.exp(-(jnp.where(has_gt, gap, 0.0) ** 2) / (2 * sigma**2))
        proximity = jnp.where(has_gt, proximity, 0.0)
        span = t["span"][row]
        inside = (span[:, 0] <= tau) & (tau <= span[:, 1])
        score = jnp.where(is_ts[row], proximity, inside.astype(proximity.dtype))
        return jnp.where(live[row], score, 0.0)

    return sparse_map(time_score, p["time_index"], p["time_count"]).reshape(n, mt)


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


@functools.partial(jax.jit, static_argnames=("gate", "added"))
def score_batch(p, t, ans_acc, sigma, weights, *, gate="intended", added=()):
    """All seven rewards, the added ones, and their weighted total.

    p: ParsedBatch.arrays(); t: Targets.arrays(); ans_acc: float[N] (host-side text reward);
    sigma: scalar Gaussian width of thk_temporal_point; added: the added `registry.Reward`s
    (each `score(p, t) -> float[N]`); weights: float[7 + len(added)], the seven in
    OPEN_O3_REWARDS order, then the added ones. Returns dict name -> float[N] for every reward
    and "total".
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
        # thk_temporal_point (temporal-spatial) and thk_temporal_segment (temporal QA, TG-MCQ)
        # both average a per-time score over the think block's times.
        live = (is_ts | is_temporal) & think
        per_time = _time_scores(p, t, sigma, is_ts, live).sum(-1)
        point = jnp.where(is_ts & think, _mean_over(per_time, p["num_times"]), 0.0)
        segment = jnp.where(is_temporal & think, _mean_over(per_time, p["num_times"]), 0.0)

    with jax.named_scope("rewards/spatial"):
        think_iou = box_iou(t["box"][:, None, :], p["think_boxes"])  # [N, TB]
        think_iou = jnp.where(p["think_box_ok"], think_iou, 0.0).max(-1)
        vqa_spatial = jnp.where(t["box_ok"] & (p["num_think_boxes"] > 0), think_iou, 0.0)
        scored = think & p["has_answer"]
        claims = _claim_spatial(p, t, gate, is_ts & scored)
        spatial = jnp.where(is_vqa, vqa_spatial, jnp.where(is_ts, claims, 0.0))
        spatial = jnp.where(scored, spatial, 0.0)

    out = {
        "ans_acc": ans_acc,
        "ans_tiou": ans_tiou,
        "ans_viou": ans_viou,
        "thk_temporal_point": point,
        "thk_temporal_segment": segment,
        "thk_spatial": spatial,
        "format": _format(p, task),
    }
    for reward in added:
        out[reward.name] = jnp.asarray(reward.score(p, t), ans_acc.dtype)
    names = (*OPEN_O3_REWARDS, *(r.name for r in added))
    out["total"] = sum(weights[i] * out[name] for i, name in enumerate(names))
    return out
