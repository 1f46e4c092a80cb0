"""benchmarks/stats.pin_cores: the process is pinned before JAX sizes its CPU thread pool, and a
call after JAX started is refused with a clear error (each case in a fresh interpreter)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parents[1]


def _run(code: str) -> subprocess.CompletedProcess:
    prelude = f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import os, stats\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=120
    )


needs_two = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="needs a process allowed on >= 2 CPUs"
)


@needs_two
def test_pin_before_jax_gives_one_core_and_is_idempotent():
    first = min(os.sched_getaffinity(0))
    proc = _run(
        "print(stats.pin_cores(1))\n"
        "import jax; jax.devices()\n"
        "print(len(os.sched_getaffinity(0)))\n"
        "print(stats.pin_cores(1))\n"  # already pinned: no error after JAX started
        "print(stats.pin_cores(0))\n"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
        proc.stdout.split("\n")[:4]
        == [f"1 core (CPU {first})", "1"] + [f"1 core (CPU {first})"] * 2
    )


@needs_two
def test_pin_after_jax_started_is_refused():
    proc = _run("import jax; jax.devices(); stats.pin_cores(1)")
    assert proc.returncode != 0
    assert "after JAX created its CPU client" in proc.stderr


def test_negative_cores_is_an_error():
    proc = _run("stats.pin_cores(-1)")
    assert proc.returncode != 0
    assert "cores must be >= 0, got -1" in proc.stderr
