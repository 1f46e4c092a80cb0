"""The parts of a per-item record (a line of items.jsonl) that every benchmark shares.

A record is the item's own fields (less its media: paths differ between machines) with
`status`: "ok" (scored), "failed" (over the evaluation's token / patch budgets: scored as
wrong / zero inside n, as upstream scores every item it can read) or "bad" (the item or its
video cannot be read: counted and listed, not scored; written by the runner).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["accuracy_by", "base", "failed_base"]

_DROP = ("video", "image_bytes")  # not results; paths differ between machines


def base(item: Mapping) -> dict:
    """An ok record's start: the item's fields, then `status: "ok"`."""
    return {k: v for k, v in item.items() if k not in _DROP} | {"status": "ok"}


def failed_base(item: Mapping, reason: str, detail: str) -> dict:
    """A failed record's start; the benchmark adds the fields that score it as a failure."""
    return base(item) | {"status": "failed", "reason": reason, "detail": detail}


def accuracy_by(records: Sequence[Mapping], fields: Sequence[str]) -> dict:
    """n / correct / acc overall and `by_<field>` for each field some record has."""

    def acc(rs):
        c = sum(bool(r["correct"]) for r in rs)
        return {"n": len(rs), "correct": c, "acc": c / len(rs)}

    out = acc(records)
    for f in fields:
        if not any(f in r for r in records):
            continue
        groups: dict[str, list] = {}
        for r in records:
            groups.setdefault(str(r.get(f, "unknown")), []).append(r)
        out[f"by_{f}"] = {k: acc(v) for k, v in sorted(groups.items())}
    return out
