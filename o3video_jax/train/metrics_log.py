"""Run logging on the host: metrics.jsonl, TensorBoard events and a tqdm progress bar.

Only process 0 writes. `metrics.jsonl` holds one JSON object per logged step
(`{"step": s, name: value, ...}`); on resume the lines past the restored step are dropped
first, so the file always reads as one uninterrupted run. On a `gs://` workdir both files
are written locally and uploaded as they grow (`io.Mirror`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from o3video_jax import io

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, METRICS_FILE)
    if not io.exists(path):
        return []
    return [json.loads(line) for line in io.read_text(path).splitlines() if line.strip()]


def _scalar(v) -> float | int:
    v = np.asarray(v)
    if v.dtype.kind in "iub":
        return int(v)
    x = float(v)
    return x if math.isfinite(x) else str(x)  # "nan" / "inf" stay valid JSON


class MetricsWriter:
    """Writes step metrics. `bar_keys` are shown on the tqdm bar (short names)."""

    def __init__(
        self,
        workdir: str,
        *,
        start_step: int,
        total_steps: int,
        bar_keys: Sequence[str] = (),
        tensorboard: bool = True,
        progress: bool = True,
        desc: str = "train",
    ):
        self.enabled = jax.process_index() == 0
        self.bar_keys = tuple(bar_keys)
        self._tb = self._bar = self._file = self._mirror = None
        if not self.enabled:
            return
        self._mirror = io.Mirror(workdir)
        path = os.path.join(self._mirror.local, METRICS_FILE)
        kept = [m for m in read_metrics(workdir) if m["step"] <= start_step]
        with open(path, "w") as f:
            f.writelines(json.dumps(m) + "\n" for m in kept)
        self._file = open(path, "a")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(self._mirror.local, "tb"))
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True)

    def write(self, step: int, metrics: Mapping[str, object]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, int | float):
                    self._tb.add_scalar(k, v, step)
        self._mirror.sync()
        if self._bar is not None:
            shown = {k: row[k] for k in self.bar_keys if k in row}
            self._bar.set_postfix(
                {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in shown.items()},
                refresh=False,
            )

    def flush(self) -> None:
        """Makes the rows written so far durable in the workdir (uploads them on gs://); the
        loops call it when a checkpoint is saved, so a resumed run finds every row up to it."""
        if self._tb is not None:
            self._tb.flush()
        if self._mirror is not None:
            self._mirror.flush()

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()
        if self._mirror is not None:
            self._mirror.close()
