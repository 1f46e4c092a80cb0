"""The package's floors (docs/design.md decision 19, docs/architecture.md), read off the imports.

Every module is assigned a floor; an import may only go to the same floor or lower, and no set
of modules may import each other in a circle (imports inside functions count: they are how
circles hide). There is no circle. Today's upward imports are listed below, each by its edge:
the restructuring of issue 22 removes them, and this test fails on any new one. A listed
violation that no longer exists also fails the test, so the list only shrinks.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "o3video_jax"

# Floors, lowest first. A module takes the floor of its longest matching prefix.
FLOORS = {
    "o3video_jax.io": 0,
    "o3video_jax.models": 1,
    "o3video_jax.data": 2,
    "o3video_jax.rewards": 2,
    "o3video_jax.checkpoints": 2,
    "o3video_jax.eval": 2,  # metrics, parsers, voting, drawing
    # the training and RL libraries
    "o3video_jax.train.sharding": 3,
    "o3video_jax.train.state": 3,
    "o3video_jax.train.steps": 3,
    "o3video_jax.train.losses": 3,
    "o3video_jax.train.roofline": 3,
    "o3video_jax.train.metrics_log": 3,
    "o3video_jax.train.distributed": 3,
    "o3video_jax.train.completion": 3,
    "o3video_jax.rl.sampler": 3,
    "o3video_jax.rl.gspo": 3,
    "o3video_jax.rl.rollouts": 3,
    "o3video_jax.rl": 3,  # the package's __init__ re-exports the library
    # drivers
    "o3video_jax.train": 4,
    "o3video_jax.rl.loop": 4,
    "o3video_jax.rl.heldout": 4,
    "o3video_jax.evaluate": 4,
    "o3video_jax.sweep": 4,
    "o3video_jax.demo": 4,
    "o3video_jax.infer": 4,
    "o3video_jax": 4,
}

# Today's upward imports (importer -> imported), to be removed by the restructuring.
KNOWN_UPWARD = {
    ("o3video_jax.checkpoints.hf", "o3video_jax.train.sharding"),
    ("o3video_jax.data.plan", "o3video_jax.train.experiment"),
    # the model's host geometry lives in data/ (issue 22: the model owns it)
    ("o3video_jax.models.qwen2_5_vl.hf_inputs", "o3video_jax.data.positions"),
    ("o3video_jax.models.qwen2_5_vl.hf_inputs", "o3video_jax.data.vision_layout"),
}


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: pathlib.Path, modules) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:  # `from pkg import module` imports the module
                found.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod)
    return {m for m in found if m in modules and m != name}


def _floor(name: str) -> int:
    best = max((p for p in FLOORS if name == p or name.startswith(p + ".")), key=len)
    return FLOORS[best]


def _graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_module_has_a_floor():
    for name in _graph():
        _floor(name)  # raises ValueError (max of an empty sequence) for an unassigned module


def test_no_new_upward_import_and_the_known_list_is_current():
    upward = {(a, b) for a, targets in _graph().items() for b in targets if _floor(b) > _floor(a)}
    new = sorted(upward - KNOWN_UPWARD)
    assert not new, f"imports that run up a floor (see docs/architecture.md): {new}"
    gone = sorted(KNOWN_UPWARD - upward)
    assert not gone, f"no longer imported: remove from KNOWN_UPWARD: {gone}"


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [frozenset("abc")]


def test_no_import_circle():
    circles = [sorted(c) for c in _cycles(_graph())]
    assert not circles, f"modules that import each other in a circle: {circles}"
