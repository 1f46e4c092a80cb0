"""Sweep definitions: override lists, their product/zip helpers, run names.

A sweep file defines `get_sweep()` returning a list of override dicts, one per run, with
dotted config paths as keys (`{"optim.lr": 1e-3, "seed": 0}`), as in big_vision / XManager:

    from o3video_jax.sweep import product, sweep, zip

    def get_sweep():
        return product(sweep("optim.lr", [1e-3, 3e-3]), zip({"seed": [0, 1], "data.shuffle": [True, False]}))

Each run's name is derived from its overrides alone (`lr=0.001,seed=0`), so it is stable when
the sweep grows and names the run's folder under the sweep's root.
"""

from __future__ import annotations

import builtins
import hashlib
import itertools
import json
import os
import re
import runpy
from collections.abc import Mapping, Sequence
from typing import Any

Overrides = dict[str, Any]
Factor = Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]

_SCALARS = (bool, int, float, str)
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_SAFE = re.compile(r"[^A-Za-z0-9._+-]")
MAX_NAME = 96


def sweep(key: str, values: Sequence[Any]) -> list[Overrides]:
    """One override per value: sweep("optim.lr", [1e-3, 3e-3])."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise TypeError(f"sweep({key!r}, ...) needs a list of values, got {values!r}")
    return [{key: v} for v in values]


def _as_list(factor: Factor, how: str) -> list[Overrides]:
    if isinstance(factor, Mapping):  # {key: [values]}: product or zip over its keys
        lists = [sweep(k, v) for k, v in factor.items()]
        return product(*lists) if how == "product" else zip(*lists)
    if isinstance(factor, str | bytes) or not isinstance(factor, Sequence):
        raise TypeError(
            f"{how}() takes lists of override dicts or {{key: [values]}}, got {factor!r}"
        )
    for d in factor:
        if not isinstance(d, Mapping):
            raise TypeError(f"{how}(): {d!r} is not an override dict")
    return [dict(d) for d in factor]


def _merge(dicts: Sequence[Mapping[str, Any]], how: str) -> Overrides:
    out: Overrides = {}
    for d in dicts:
        for k, v in d.items():
            if k in out:
                raise ValueError(f"{how}(): key {k!r} is set by two factors")
            out[k] = v
    return out


def product(*factors: Factor) -> list[Overrides]:
    """Every combination; the first factor varies slowest."""
    lists = [_as_list(f, "product") for f in factors]
    return [_merge(combo, "product") for combo in itertools.product(*lists)]


def zip(*factors: Factor) -> list[Overrides]:  # noqa: A001 (XManager's name)
    """Element-wise combination of equally long factors."""
    lists = [_as_list(f, "zip") for f in factors]
    lengths = [len(x) for x in lists]
    if len(set(lengths)) > 1:
        raise ValueError(f"zip() of factors with different lengths {lengths}")
    return [_merge(combo, "zip") for combo in builtins.zip(*lists, strict=True)]


def check(runs: Any, origin: str = "get_sweep()") -> list[Overrides]:
    """Validates a sweep: a non-empty list of distinct {dotted.key: scalar} dicts."""
    if isinstance(runs, Mapping) or not isinstance(runs, Sequence) or isinstance(runs, str):
        raise TypeError(f"{origin} must return a list of override dicts, got {type(runs).__name__}")
    if not runs:
        raise ValueError(f"{origin} returned no runs")
    seen: dict[str, int] = {}
    out = []
    for i, run in enumerate(runs):
        if not isinstance(run, Mapping):
            raise TypeError(f"{origin}[{i}] is {run!r}, not an override dict")
        for k, v in run.items():
            if not isinstance(k, str) or not _KEY.match(k):
                raise ValueError(f"{origin}[{i}]: {k!r} is not a dotted config path")
            if not isinstance(v, _SCALARS):
                raise TypeError(
                    f"{origin}[{i}][{k!r}] = {v!r}: values must be str, int, float or bool"
                )
        key = canonical(run)
        if key in seen:
            raise ValueError(f"{origin}[{i}] repeats run {seen[key]}: {dict(run)}")
        seen[key] = i
        out.append(dict(run))
    return out


def load(path: str) -> list[Overrides]:
    """Runs SWEEP.py's get_sweep() and validates what it returns."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"sweep file {path!r} does not exist")
    module = runpy.run_path(path)
    if not callable(module.get("get_sweep")):
        raise ValueError(f"{path} defines no get_sweep()")
    return check(module["get_sweep"](), f"{os.path.basename(path)}:get_sweep()")


def canonical(overrides: Mapping[str, Any]) -> str:
    return json.dumps(overrides, sort_keys=True)


def _value_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)  # exact and stable: 0.001, 0.0003, 1e-05
    return str(v)


def run_name(overrides: Mapping[str, Any]) -> str:
    """A short, filesystem-safe, stable name: `lr=0.001,seed=0` (key = last path component,
    the full path where two keys share it). Lossy (sanitised or long) names get a hash of the
    overrides, so distinct overrides never share a name."""
    if not overrides:
        return "base"
    last = [k.rsplit(".", 1)[-1] for k in overrides]
    parts, lossy = [], False
    for key, short in builtins.zip(overrides, last, strict=True):
        label = short if last.count(short) == 1 else key
        text = _value_text(overrides[key])
        safe = _SAFE.sub("_", text)
        lossy |= safe != text
        parts.append(f"{label}={safe}")
    name = ",".join(parts)
    if lossy or len(name) > MAX_NAME:
        digest = hashlib.sha1(canonical(overrides).encode()).hexdigest()[:8]
        name = f"{name[: MAX_NAME - 9].rstrip(',=')}-{digest}"
    return name


def flag_value(v: Any) -> str:
    """The text of `--config.key=TEXT` that absl / ml_collections parse back to v."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if isinstance(v, float) else str(v)


def fixed_argv(argv: list[str]) -> list[str]:
    """The --config.x=... flags of this command line, forwarded verbatim to every run."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--config."):
            out.append(a)
            if "=" not in a and i + 1 < len(argv):
                out.append(argv[i + 1])
                i += 1
        i += 1
    return out
