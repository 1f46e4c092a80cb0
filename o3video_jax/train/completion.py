"""A run's own record that it finished: WORKDIR/COMPLETE.json.

Written by process 0 after the final checkpoint has landed (on every process) and after the HF
export, so its existence means "nothing left to do". A run stopped by a preemption, killed, or
crashed never writes it, whatever checkpoints it left. The sweep runner and
tpu_scripts/run_until_done.sh trust only this file: a checkpoint step compared with a
`total_steps` read outside the run (0 in the shipped configs before preflight resolves it) says
nothing about whether the run finished.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
from jax.experimental import multihost_utils

from o3video_jax import io

FILE = "COMPLETE.json"


def path(workdir: str) -> str:
    return os.path.join(workdir, FILE)


def read(workdir: str) -> dict[str, Any] | None:
    """The marker's content ({"step", "total_steps", "finished", "hf_export"}) or None."""
    p = path(workdir)
    if not io.exists(p):
        return None
    return json.loads(io.read_text(p))


def clear(workdir: str) -> None:
    """Removes a marker left by an earlier, shorter run in this workdir (process 0 only), so that
    a run continued to a larger total_steps is not taken for finished while it trains."""
    if jax.process_index() == 0 and io.exists(path(workdir)):
        io.path(path(workdir)).unlink()


def mark(workdir: str, step: int, total_steps: int, hf_export: str | None) -> None:
    """Writes the marker once every process is past its final save and export."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("o3video run complete")
    if jax.process_index() != 0:
        return
    record = {
        "step": int(step),
        "total_steps": int(total_steps),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hf_export": hf_export,
    }
    io.write_text(path(workdir), json.dumps(record) + "\n")
