"""Runs a sweep: one workdir per run under the sweep's root, each run a separate
`python -m o3video_jax.train` (locally one after another, or printed as one
`tpu_scripts/launch.sh` command per run for separate TPU slices).

ROOT/NAME/sweep.json records the run's overrides (and the overrides common to the sweep).
A run is done only when it wrote its own completion marker (ROOT/NAME/COMPLETE.json, see
`train.completion`: after its final checkpoint and export). A checkpoint is never taken for
the end (the `total_steps` a sweep sees before preflight may be 0, "derive"), and a run that
exits 0 without the marker was preempted: a second invocation skips done runs and re-launches
the others, which resume from their own Orbax checkpoints.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ml_collections
from etils import epath

from o3video_jax.sweep import spec
from o3video_jax.train import completion

RUN_FILE = "sweep.json"
DONE_FILE = completion.FILE
LOG_FILE = "sweep.log"


@dataclass
class Run:
    index: int
    name: str
    overrides: dict[str, Any]
    workdir: str
    total_steps: int


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """A copy of `config` with the dotted overrides set; unknown fields and wrong types raise."""
    c = copy.deepcopy(config)
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        node = c
        for i, part in enumerate(path):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise KeyError(
                    f"sweep override {key!r}: the config has no field {'.'.join(path[: i + 1])!r}"
                )
            node = node[part]
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            raise KeyError(f"sweep override {key!r}: the config has no field {key!r}")
        if isinstance(node[leaf], ml_collections.ConfigDict):
            raise TypeError(f"sweep override {key!r} names a config section, not a field")
        try:
            node[leaf] = value
        except TypeError as e:
            raise TypeError(f"sweep override {key}={value!r}: {e}") from None
    return c


def plan(
    config: ml_collections.ConfigDict,
    runs: Sequence[Mapping[str, Any]],
    root: str,
    fixed: Mapping[str, Any] = (),
) -> list[Run]:
    """Names and validates every run before anything starts."""
    out, names = [], {}
    for i, overrides in enumerate(runs):
        clash = sorted(set(overrides) & set(dict(fixed)))
        if clash:
            raise ValueError(f"run {i} sets {clash}, which the command line fixes for every run")
        c = apply_overrides(config, overrides)
        name = spec.run_name(overrides)
        if name in names:
            raise ValueError(f"runs {names[name]} and {i} are both named {name!r}")
        names[name] = i
        workdir = os.path.join(root, name)
        out.append(Run(i, name, dict(overrides), workdir, int(c.total_steps)))
    return out


def latest_step(workdir: str) -> int | None:
    """The newest Orbax checkpoint step in WORKDIR/ckpt (None without one)."""
    d = epath.Path(workdir) / "ckpt"
    if not d.exists():
        return None
    steps = [int(p.name) for p in d.iterdir() if p.name.isdigit()]
    return max(steps) if steps else None


def status(run: Run) -> tuple[str, int | None]:
    """("done" | "partial" | "new", step): done only with the run's completion marker (its
    step); otherwise the latest checkpoint step, whatever `run.total_steps` says."""
    marker = completion.read(run.workdir)
    if marker is not None:
        return "done", marker["step"]
    step = latest_step(run.workdir)
    return ("new", None) if step is None else ("partial", step)


def _record(run: Run, fixed: Mapping[str, Any], config_name: str) -> None:
    """Writes (or checks) ROOT/NAME/sweep.json: a run folder belongs to one set of overrides."""
    wd = epath.Path(run.workdir)
    record = {
        "name": run.name,
        "overrides": run.overrides,
        "fixed": dict(fixed),
        "config": config_name,
    }
    path = wd / RUN_FILE
    if path.exists():
        old = json.loads(path.read_text())
        for key in ("overrides", "fixed"):
            if old.get(key) != json.loads(json.dumps(record[key])):
                raise ValueError(
                    f"{run.workdir} holds a run with {key} {old.get(key)}, not "
                    f"{record[key]}: use another --workdir for a different sweep"
                )
        return
    wd.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")


def train_args(config_name: str, workdir: str, fixed_argv: Sequence[str], overrides) -> list[str]:
    return [
        "-m",
        "o3video_jax.train",
        "--config",
        config_name,
        "--workdir",
        workdir,
        *fixed_argv,
        *(f"--config.{k}={spec.flag_value(v)}" for k, v in overrides.items()),
    ]


def _log_path(run: Run) -> str:
    if "://" in run.workdir:  # logs stream line by line: keep them on this machine
        os.makedirs("sweep_logs", exist_ok=True)
        return os.path.join("sweep_logs", f"{run.name}.log")
    return os.path.join(run.workdir, LOG_FILE)


def _tail(path: str, n: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def run_local(
    runs: Sequence[Run],
    config_name: str,
    fixed: Mapping[str, Any],
    fixed_argv: Sequence[str],
    *,
    dry_run: bool = False,
    env: Mapping[str, str] | None = None,
    out=sys.stdout,
) -> list[str]:
    """Runs every unfinished run in turn as a subprocess (with `env`, default this process's
    environment). Returns the names of the runs that did not finish (failed or preempted)."""
    failed = []
    n = len(runs)
    for run in runs:
        tag = f"[{run.index + 1}/{n}] {run.name}"
        state, step = status(run)
        if state == "done":
            print(f"{tag}: done (step {step}), skipped", file=out, flush=True)
            continue
        cmd = [sys.executable, *train_args(config_name, run.workdir, fixed_argv, run.overrides)]
        if dry_run:
            what = "would start" if state == "new" else f"would resume from step {step}"
            print(f"{tag}: {what}: {shlex.join(cmd)}", file=out, flush=True)
            continue
        _record(run, fixed, config_name)
        log = _log_path(run)
        how = "starting" if state == "new" else f"resuming from step {step}"
        print(f"{tag}: {how} (log {log})", file=out, flush=True)
        t0 = time.time()
        with open(log, "a") as f:
            f.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} {shlex.join(cmd)}\n")
            f.flush()
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
        state, step = status(run)
        minutes = (time.time() - t0) / 60
        if rc == 0 and state == "done":
            print(f"{tag}: done (step {step}, {minutes:.1f} min)", file=out, flush=True)
        elif rc == 0:  # a clean stop without the marker: SIGTERM (stop.sh, a preemption)
            print(
                f"{tag}: preempted at step {step}, {minutes:.1f} min (not done; run the sweep "
                "again to resume it)",
                file=out,
                flush=True,
            )
            failed.append(run.name)
        else:
            print(f"{tag}: FAILED (exit status {rc}); last lines of {log}:\n{_tail(log)}", file=out)
            failed.append(run.name)
    return failed


def print_launch(
    runs: Sequence[Run],
    config_name: str,
    fixed: Mapping[str, Any],
    fixed_argv: Sequence[str],
    *,
    tpu_names: Sequence[str] = (),
    dry_run: bool = False,
    out=sys.stdout,
) -> None:
    """One tpu_scripts/launch.sh command per run (each on its own slice)."""
    if tpu_names and len(tpu_names) != len(runs):
        raise ValueError(f"--tpu_names lists {len(tpu_names)} TPUs for {len(runs)} runs")
    for run in runs:
        try:
            if dry_run and "://" in run.workdir:  # a dry run does not touch remote storage
                state, step = "unknown", None
            else:
                if not dry_run:
                    _record(run, fixed, config_name)
                state, step = status(run)
        except (ImportError, OSError) as e:  # e.g. gs:// without gcsfs: the commands still hold
            print(f"# warning: cannot reach {run.workdir}: {e}", file=out)
            state, step = "unknown", None
        note = {"done": " (done)", "partial": f" (resumes from step {step})"}.get(state, "")
        tpu = ["--name", tpu_names[run.index]] if tpu_names else []
        cmd = ["tpu_scripts/launch.sh", *tpu, "--run", run.name, "--", "python3"]
        cmd += train_args(config_name, run.workdir, fixed_argv, run.overrides)
        print(f"# {run.index + 1}/{len(runs)} {run.name}{note}", file=out)
        print(shlex.join(cmd), file=out, flush=True)
