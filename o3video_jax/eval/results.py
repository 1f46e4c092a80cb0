"""Evaluation result files: per-item JSONL and a summary table (printed, markdown and JSON).

A summary is the dict a metrics function returns (`vstar.metrics`, `mcq.accuracy`,
`grounding.metrics`): scalar metrics at the top level plus optional `by_<field>` dicts of
`{group: {scalar metrics}}`. The table has one row for "overall" and one per group.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from o3video_jax import io

__all__ = [
    "read_jsonl",
    "summary_rows",
    "summary_table",
    "to_jsonable",
    "write_jsonl",
    "write_summary",
]


def to_jsonable(value):
    """numpy scalars/arrays, tuples and nested containers as plain JSON types.

    Non-finite floats become None: strict JSON has no NaN or Infinity.
    """
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping]) -> int:
    """Writes one JSON object per line (parent directories created); returns the count."""
    io.makedirs(os.path.dirname(os.fspath(path)) or ".")
    count = 0
    with io.open(path, "w") as f:
        for record in records:
            f.write(json.dumps(to_jsonable(record), ensure_ascii=False, allow_nan=False) + "\n")
            count += 1
    return count


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSONL file (blank lines skipped); a bad line raises naming its number."""
    records = []
    with io.open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return records


def _is_scalar(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def summary_rows(summary: Mapping) -> list[tuple[str, dict]]:
    """`[("overall", scalars), ("<field>=<group>", scalars), ...]` from a summary dict."""
    rows = [("overall", {k: v for k, v in summary.items() if _is_scalar(v)})]
    for key, groups in summary.items():
        if key.startswith("by_") and isinstance(groups, Mapping):
            for name, scalars in groups.items():
                rows.append(
                    (f"{key[3:]}={name}", {k: v for k, v in scalars.items() if _is_scalar(v)})
                )
    return rows


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.4f}"


def summary_table(summary: Mapping, columns: Sequence[str] | None = None, title: str = "") -> str:
    """A markdown table: rows from `summary_rows`, columns `columns` (default: overall's keys).

    Values are printed as stored (fractions to 4 decimals, counts as integers); a metric a
    row lacks prints as "-".
    """
    rows = summary_rows(summary)
    columns = list(columns) if columns is not None else list(rows[0][1])
    lines = [f"### {title}", ""] if title else []
    lines.append("| group | " + " | ".join(columns) + " |")
    lines.append("|---|" + "---|" * len(columns))
    for name, scalars in rows:
        lines.append(f"| {name} | " + " | ".join(_fmt(scalars.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_summary(
    out_dir: str | os.PathLike,
    name: str,
    summary: Mapping,
    columns: Sequence[str] | None = None,
    *,
    echo: bool = True,
) -> tuple[str, str]:
    """Writes `<name>.md` (the table) and `<name>.json` (the full summary); prints the table.

    Returns:
      (markdown path, json path).
    """
    io.makedirs(out_dir)
    table = summary_table(summary, columns, title=name)
    md_path = os.path.join(out_dir, f"{name}.md")
    json_path = os.path.join(out_dir, f"{name}.json")
    io.write_text(md_path, table)
    with io.open(json_path, "w") as f:
        json.dump(to_jsonable(summary), f, indent=2, ensure_ascii=False, allow_nan=False)
        f.write("\n")
    if echo:
        print(table)
    return md_path, json_path
