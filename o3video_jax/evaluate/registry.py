"""The one list of benchmarks `eval.benchmark` can name: a `spec.Benchmark` per entry.

A benchmark in the repository is one module under `evaluate/bench/` defining `BENCHMARK`, and
its entry in `_BUILTIN` below (docs/extending.md has a worked example). Code outside the
package (a test, a user's own benchmark) adds one at run time with `register(BENCHMARK)`.
"""

from __future__ import annotations

from o3video_jax.evaluate.bench import tvg, videomme, videommmu, vstar, worldsense
from o3video_jax.evaluate.spec import Benchmark

__all__ = ["Benchmark", "get", "multiple_choice_names", "names", "register", "unregister"]

_BUILTIN: tuple[Benchmark, ...] = (
    vstar.BENCHMARK,
    videomme.BENCHMARK,
    worldsense.BENCHMARK,
    videommmu.BENCHMARK,
    tvg.BENCHMARK,
)

_REGISTRY: dict[str, Benchmark] = {b.name: b for b in _BUILTIN}
BUILTIN_NAMES: tuple[str, ...] = tuple(b.name for b in _BUILTIN)


def register(benchmark: Benchmark, *, replace: bool = False) -> Benchmark:
    """Adds `benchmark` under its name (an existing name raises unless `replace`)."""
    if not isinstance(benchmark, Benchmark):
        raise TypeError(f"register() takes a spec.Benchmark, got {type(benchmark).__name__}")
    if benchmark.name in _REGISTRY and not replace:
        raise ValueError(f"benchmark {benchmark.name!r} is already registered")
    _REGISTRY[benchmark.name] = benchmark
    return benchmark


def unregister(name: str) -> None:
    """Removes a benchmark added with `register` (the built-in ones stay)."""
    if name in BUILTIN_NAMES:
        raise ValueError(f"{name!r} is a built-in benchmark")
    _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """Every registered benchmark, built-in ones first, in registration order."""
    return tuple(_REGISTRY)


def get(name: str) -> Benchmark:
    """The benchmark called `name`; ValueError (listing the known ones) if there is none."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown benchmark {name!r}; known: {list(_REGISTRY)}") from None


def multiple_choice_names() -> tuple[str, ...]:
    """The benchmarks that take `eval.samples > 1` and voting."""
    return tuple(n for n, b in _REGISTRY.items() if b.mcq is not None)
