"""Regenerates every measured table of the README: one command, medians with their spread.

    python benchmarks/run_all.py [--quick] [--repeats 5] [--only forward sampler ...]
                                 [--out benchmarks/results.md]

Runs each benchmark's `bench(repeats, quick)` (forward, sampler, rewards, data_pipeline,
evaluate), which measures ours and the reference back to back in every repeat, each in a fresh
process (XLA:CPU sizes its thread pool when a process starts; the sampler runs twice: pinned to
one core, its default, and on all cores; evaluate twice: 16 and 128 new tokens), and prints and
writes markdown:
for each figure and each ratio the median and the min-max over the repeats, with the machine
(CPU model, cores), the date and the load average before and after each benchmark. On a shared
machine run it with a raised priority (`nice -n -10 python benchmarks/run_all.py`) and read
the load averages: the ratios are the result, the absolute numbers move with the load.
--quick shrinks every workload (smaller video, fewer tokens and completions, one clip): a smoke
test of the whole command in a few minutes, not figures to quote. `--only evaluate` (or any
subset) runs only those benchmarks; `--out` then names a file other than results.md if the
other tables there should stay.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import stats  # noqa: E402

BENCHMARKS = ("forward", "sampler", "rewards", "data_pipeline", "evaluate")
# Keyword arguments of each process's `bench` call, per benchmark (one process each).
RUNS = {
    "sampler": ({}, {"cores": 0}),
    "evaluate": ({"max_new_tokens": 16}, {"max_new_tokens": 128}),
}
_TABLE = "<<<table>>>"


def _child(name: str, kwargs: dict, repeats: int, quick: bool) -> None:
    """In the child process: one benchmark, its markdown table printed after a marker."""
    module = importlib.import_module(f"benchmarks.{name}")
    result = module.bench(repeats=repeats, quick=quick, **kwargs)
    print(_TABLE + "\n" + stats.table(result), flush=True)


def _run_one(name: str, kwargs: dict, repeats: int, quick: bool) -> str:
    """Runs `_child` in a fresh interpreter; returns its table (the rest of its output goes
    to stderr). Exits with the child's output if it fails."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--kwargs"]
    cmd += [json.dumps(kwargs), "--repeats", str(repeats)] + ["--quick"] * quick
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0 or _TABLE not in proc.stdout:
        sys.stderr.write(proc.stdout[-4000:])
        raise SystemExit(f"benchmark {name} {kwargs or ''} failed (exit {proc.returncode})")
    before, table = proc.stdout.split(_TABLE + "\n", 1)
    sys.stderr.write(before)  # anything the benchmark printed (e.g. a token mismatch)
    return table.rstrip("\n")


def run(names, repeats: int, quick: bool) -> str:
    """Runs the benchmarks in order; returns the markdown report (also printed as it goes)."""
    head = [
        f"# Benchmarks ({'quick, ' if quick else ''}{repeats} repeats)",
        "",
        f"- date: {stats.now()}",
        f"- machine: {stats.machine()}",
        f"- command: `{' '.join(['python benchmarks/run_all.py', *sys.argv[1:]])}`",
        f"- process priority (nice): {os.nice(0)}",
        "",
    ]
    print("\n".join(head), flush=True)
    sections = []
    for name in names:
        for kwargs in RUNS.get(name, ({},)):
            before, start = stats.load_average(), time.perf_counter()
            table = _run_one(name, kwargs, repeats, quick)
            wall = time.perf_counter() - start
            text = table + (
                f"\n\nLoad average (1/5/15 min) before: {before}; after: {stats.load_average()}; "
                f"wall {wall:.0f} s.\n"
            )
            print(text, flush=True)
            sections.append(text)
    return "\n".join(head + sections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.md")
    )
    parser.add_argument("--child", choices=BENCHMARKS, help=argparse.SUPPRESS)
    parser.add_argument("--kwargs", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.child:
        _child(args.child, json.loads(args.kwargs), args.repeats, args.quick)
        return
    report = run(args.only, args.repeats, args.quick)
    with open(args.out, "w") as f:
        f.write(report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
