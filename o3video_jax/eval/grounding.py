"""Temporal grounding metrics (Charades-STA / TVGBench style): mIoU and R1@{0.3, 0.5, 0.7}.

A prediction is one span `[start, end]` in seconds per query ("R1": only the top-1 span is
scored). A missing or malformed prediction scores IoU 0 but still counts in the denominator,
which is how V-STaR and the usual grounding benchmarks treat unparseable outputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

R1_THRESHOLDS = (0.3, 0.5, 0.7)


def _as_span(span) -> tuple[float, float] | None:
    """Two finite real numbers, or None (bools and strings are not times)."""
    if not isinstance(span, (list, tuple)) or len(span) != 2:
        return None
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in span):
        return None
    if not all(math.isfinite(x) for x in span):
        return None
    return float(span[0]), float(span[1])


def temporal_iou(gt: Sequence[float], pred) -> float:
    """Overlap / hull of two spans; 0 for a missing or malformed prediction.

    The denominator is the hull `max(ends) - min(starts)`, not the union: for disjoint spans
    they differ, but the overlap is 0 there anyway, so the value equals the usual union IoU.
    A reversed prediction `[b, a]` with b > a is scored as written (no swap), as the original
    V-STaR script does; its overlap comes out 0.

    Raises:
      ValueError: if `gt` is not two finite numbers.
    """
    gt_span = _as_span(gt)
    if gt_span is None:
        raise ValueError(f"ground-truth span must be two finite numbers, got {gt!r}")
    pred_span = _as_span(pred)
    if pred_span is None:
        return 0.0
    (gs, ge), (ps, pe) = gt_span, pred_span
    overlap = max(0.0, min(ge, pe) - max(gs, ps))
    hull = max(ge, pe) - min(gs, ps)
    return overlap / hull if hull > 0 else 0.0


def recall_at(ious: Sequence[float], thresholds: Sequence[float] = R1_THRESHOLDS) -> dict:
    """`{"r1@thr": fraction of ious >= thr}`; 0.0 for an empty list."""
    arr = np.asarray(ious, dtype=np.float64)
    return {f"r1@{thr}": float(np.mean(arr >= thr)) if arr.size else 0.0 for thr in thresholds}


def metrics(
    gt_spans: Sequence[Sequence[float]],
    pred_spans: Sequence,
    thresholds: Sequence[float] = R1_THRESHOLDS,
) -> dict:
    """Dataset metrics for top-1 temporal grounding.

    Args:
      gt_spans: N ground-truth `[start, end]` spans in seconds.
      pred_spans: N predictions; each `[start, end]` or anything else (scored 0), e.g. the
        `[]` that `vstar.parse_temporal_answer` returns for an unparseable answer.
      thresholds: IoU thresholds for R1.

    Returns:
      `{"n", "miou", "r1@0.3", "r1@0.5", "r1@0.7"}` with fractions in [0, 1].
    """
    if len(gt_spans) != len(pred_spans):
        raise ValueError(
            f"gt_spans and pred_spans differ in length: {len(gt_spans)} vs {len(pred_spans)}"
        )
    if not gt_spans:
        raise ValueError("metrics() needs at least one item")
    ious = [temporal_iou(g, p) for g, p in zip(gt_spans, pred_spans, strict=True)]
    return {"n": len(ious), "miou": float(np.mean(ious)), **recall_at(ious, thresholds)}
