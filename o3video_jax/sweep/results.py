r"""Results of a sweep: one row per run with its overrides and final / best metrics.

  python -m o3video_jax.sweep.results ROOT [--metric loss] [--metrics 'loss,eval/*,reward']

Reads every ROOT/*/sweep.json (the run's overrides) and the run's metrics.jsonl, prints a
markdown table, and writes ROOT/results.csv and ROOT/results_<metric>.png (the chosen
metric's curve per run). "best" is the minimum for loss-like metrics (loss, kl, error,
perplexity, time) and the maximum otherwise; the best run by --metric is marked with `*`.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from absl import app, flags
from etils import epath

from o3video_jax.sweep.runner import DONE_FILE, RUN_FILE, latest_step
from o3video_jax.train.metrics_log import read_metrics

DEFAULT_METRICS = "loss,accuracy,reward,eval/*"
_LOWER_IS_BETTER = re.compile(r"(loss|kl|error|perplexity|time)", re.I)


@dataclass
class RunResult:
    name: str
    overrides: dict[str, Any]
    status: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def curve(self, metric: str) -> list[tuple[int, float]]:
        return [(r["step"], _num(r[metric])) for r in self.rows if metric in r]


def _num(v) -> float:
    try:
        return float(v)  # "nan" / "inf" strings of metrics.jsonl included
    except (TypeError, ValueError):
        return math.nan


def lower_is_better(metric: str) -> bool:
    return bool(_LOWER_IS_BETTER.search(metric))


def final_and_best(points: Sequence[tuple[int, float]], metric: str) -> tuple[float, float]:
    if not points:
        return math.nan, math.nan
    finite = [v for _, v in points if math.isfinite(v)]
    best = (min if lower_is_better(metric) else max)(finite) if finite else math.nan
    return points[-1][1], best


def collect(root: str) -> list[RunResult]:
    """Every run of the sweep under `root`, in name order."""
    root_path = epath.Path(root)
    if not root_path.exists():
        raise FileNotFoundError(f"sweep root {root} does not exist")
    out = []
    for run_dir in sorted(root_path.iterdir(), key=lambda p: p.name):
        record = run_dir / RUN_FILE
        if not record.exists():
            continue
        meta = json.loads(record.read_text())
        rows = read_metrics(str(run_dir))
        if (run_dir / DONE_FILE).exists():
            state = "done"
        else:
            step = latest_step(str(run_dir))
            state = "not started" if step is None else f"partial ({step})"
        out.append(RunResult(meta["name"], meta["overrides"], state, rows))
    if not out:
        raise FileNotFoundError(f"no runs under {root} (no */{RUN_FILE}): is it a sweep root?")
    return out


def metric_names(runs: Sequence[RunResult], patterns: str) -> list[str]:
    """The metrics present in the runs that match the comma-separated glob patterns."""
    present: list[str] = []
    for run in runs:
        for row in run.rows:
            present += [k for k in row if k != "step" and k not in present]
    out = []
    for pattern in filter(None, (p.strip() for p in patterns.split(","))):
        out += [m for m in present if fnmatch.fnmatchcase(m, pattern) and m not in out]
    return out


def table(runs: Sequence[RunResult], metrics: Sequence[str], main: str | None):
    """(header, rows) of the results: run, overrides, status, steps, final/best per metric."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.overrides if k not in keys]
    header = ["run", *keys, "status", "steps"]
    for m in metrics:
        header += [f"{m} final", f"{m} best ({'min' if lower_is_better(m) else 'max'})"]
    best_run = None
    if main is not None:
        scored = [(final_and_best(r.curve(main), main)[1], r.name) for r in runs]
        scored = [(v, n) for v, n in scored if math.isfinite(v)]
        if scored:
            best_run = (min if lower_is_better(main) else max)(scored)[1]
    rows = []
    for run in runs:
        steps = run.rows[-1]["step"] if run.rows else 0
        row = [run.name + (" *" if run.name == best_run else "")]
        row += [run.overrides.get(k, "") for k in keys] + [run.status, steps]
        for m in metrics:
            row += list(final_and_best(run.curve(m), m))
        rows.append(row)
    return header, rows


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: str, header, rows) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for row in rows:
        w.writerow([r.removesuffix(" *") if i == 0 else r for i, r in enumerate(row)])
    epath.Path(path).write_text(buf.getvalue())


def plot(path: str, runs: Sequence[RunResult], metric: str) -> int:
    """The metric's curve per run; returns how many runs have one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    drawn = 0
    styles = ("-", "--", ":", "-.")
    for i, run in enumerate(runs):
        points = run.curve(metric)
        if points:
            ax.plot(
                [s for s, _ in points],
                [v for _, v in points],
                styles[i % len(styles)],  # runs that share a curve stay visible
                marker="o" if len(points) < 30 else None,
                markersize=3,
                label=run.name,
                lw=1.4,
            )
            drawn += 1
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    epath.Path(path).write_bytes(buf.getvalue())
    return drawn


def report(root: str, metric: str | None = None, metrics: str = DEFAULT_METRICS, out=sys.stdout):
    """Prints the table; writes ROOT/results.csv and the PNG. Returns (header, rows)."""
    runs = collect(root)
    names = metric_names(runs, metrics)
    if metric is None:
        metric = next((m for m in ("loss", "reward") if m in metric_names(runs, m)), None)
    elif not metric_names(runs, metric):
        raise ValueError(f"no run logged metric {metric!r}; logged: {metric_names(runs, '*')}")
    if metric is not None and metric not in names:
        names.insert(0, metric)
    header, rows = table(runs, names, metric)
    print(markdown(header, rows), file=out)
    csv_path = str(epath.Path(root) / "results.csv")
    write_csv(csv_path, header, rows)
    print(f"\nwrote {csv_path}", file=out)
    if metric is not None:
        png = str(epath.Path(root) / f"results_{re.sub(r'[^A-Za-z0-9._-]', '_', metric)}.png")
        drawn = plot(png, runs, metric)
        print(f"wrote {png} ({metric} of {drawn} runs)", file=out)
    return header, rows


_METRIC = flags.DEFINE_string("metric", None, "metric of the PNG and the * mark (default loss)")
_METRICS = flags.DEFINE_string("metrics", DEFAULT_METRICS, "table columns: comma-separated globs")


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("usage: python -m o3video_jax.sweep.results ROOT [--metric M]")
    report(argv[1], _METRIC.value, _METRICS.value)


if __name__ == "__main__":
    app.run(main)
