"""Shared by the benchmark scripts: repeated-measurement summaries and the machine line.

Every benchmark exposes `bench(repeats, quick) -> Result`: per-repeat values of each figure
(ours and the reference measured back to back inside each repeat, so both see the same
machine load), ratios computed per repeat, and fixed facts (FLOP counts, max differences).
`table` renders one Result as markdown: the median and the min-max over the repeats.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import statistics
import time


@dataclasses.dataclass
class Result:
    """title: one line; setup: what was run; figures: name -> per-repeat values (a name
    ending in "x" is a ratio); facts: name -> a value measured once; notes: free lines."""

    title: str
    setup: str
    figures: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    facts: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    def add(self, name: str, value: float) -> None:
        self.figures.setdefault(name, []).append(float(value))


def timed(fn, inner: int = 1) -> float:
    """Mean wall seconds of `inner` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def _fmt(x: float) -> str:
    if x == 0 or 0.01 <= abs(x) < 1e5:
        return f"{x:.4g}" if abs(x) < 1000 else f"{x:,.0f}"
    return f"{x:.3g}"


def table(result: Result) -> str:
    """Markdown: one row per figure with median and min-max over the repeats."""
    n = max((len(v) for v in result.figures.values()), default=0)
    lines = [
        f"### {result.title}",
        "",
        result.setup,
        "",
        f"| figure | median of {n} | min - max |",
        "|---|---|---|",
    ]
    for name, values in result.figures.items():
        med = statistics.median(values)
        bold = "**" if name.endswith("x") or name.endswith("%") else ""
        lines.append(
            f"| {name} | {bold}{_fmt(med)}{bold} | {_fmt(min(values))} - {_fmt(max(values))} |"
        )
    for name, value in result.facts.items():
        lines.append(f"| {name} | {value} | (once) |")
    lines += [""] + [f"{line}" for line in result.notes] + [""] * bool(result.notes)
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine() -> str:
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}"
    )


def pin_cores(cores: int) -> str:
    """Restricts this process to the first `cores` CPUs it may run on (0: leave it as is) and
    returns a phrase for the setup line. Call it before JAX starts its CPU client: XLA:CPU
    sizes its intra-op thread pool from the affinity mask when the client is created, so
    `cores=1` runs every XLA op on one thread, with no intra-op pool (what `taskset -c 0` does
    from the shell). Every thread of the process is pinned. Raises if the client already
    exists with a different core count; where the OS has no affinity call (macOS), leaves the
    process as is and says so."""
    if cores < 0:
        raise ValueError(f"cores must be >= 0, got {cores}")
    if not hasattr(os, "sched_setaffinity"):
        return f"all {os.cpu_count()} cores (this OS cannot pin a process)"
    allowed = sorted(os.sched_getaffinity(0))
    describe = lambda cpus: (
        f"{len(cpus)} core{'s' * (len(cpus) > 1)} (CPU {', '.join(map(str, cpus))})"
    )
    if cores == 0 or cores >= len(allowed):
        return describe(allowed)
    try:
        from jax._src import xla_bridge

        started = xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):  # private API moved: trust the caller
        started = False
    if started:
        raise RuntimeError(
            f"pin_cores({cores}) after JAX created its CPU client on {len(allowed)} cores: "
            "call it first thing (the thread pool is sized when the client starts)"
        )
    for tid in os.listdir("/proc/self/task"):  # the calling thread and any started already
        try:
            os.sched_setaffinity(int(tid), allowed[:cores])
        except ProcessLookupError:  # the thread ended meanwhile
            pass
    return describe(allowed[:cores])


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
