"""The package's floors (docs/design.md decision 19, docs/architecture.md), read off the imports.

Every module is assigned a floor; an import may only go to the same floor or lower, and no set
of modules may import each other in a circle (imports inside functions count: they are how
circles hide). The only exceptions are the aliases at old module paths, which forward to the
module's new home and hold nothing else.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1] / "o3video_jax"

# Floors, lowest first. A module takes the floor of its longest matching prefix.
FLOORS = {
    "o3video_jax.io": 0,
    "o3video_jax.mesh": 0,  # the mesh and the logical-axis rules
    "o3video_jax.tasks": 0,  # the task vocabulary
    "o3video_jax.models": 1,  # the model owns its host geometry (positions, vision layout)
    "o3video_jax.data": 2,
    "o3video_jax.rewards": 2,
    "o3video_jax.checkpoints": 2,
    "o3video_jax.eval": 2,  # metrics, parsers, voting, drawing
    # the training and RL libraries
    "o3video_jax.train": 3,
    "o3video_jax.rl": 3,
    # drivers
    "o3video_jax.drivers": 4,
    "o3video_jax.evaluate": 4,
    "o3video_jax.sweep": 4,
    "o3video_jax.demo": 4,
    "o3video_jax.infer": 4,
    "o3video_jax": 4,
}

# Old module paths kept as aliases of a module that moved (the command lines
# `python -m o3video_jax.train`, `.train.aot`, `.train.smoke`, `.train.supervise`,
# `.data.plan` and old imports). An alias may import upward because it is nothing but the
# forward: `test_aliases_only_forward` checks each body.
ALIASES = {
    "o3video_jax.train.__main__": "o3video_jax.drivers.cli",
    "o3video_jax.train.experiment": "o3video_jax.drivers.experiment",
    "o3video_jax.train.model_config": "o3video_jax.drivers.model_config",
    "o3video_jax.train.preflight": "o3video_jax.drivers.preflight",
    "o3video_jax.train.aot": "o3video_jax.drivers.aot",
    "o3video_jax.train.two_stage": "o3video_jax.drivers.two_stage",
    "o3video_jax.train.evaluation": "o3video_jax.drivers.evaluation",
    "o3video_jax.train.smoke": "o3video_jax.drivers.smoke",
    "o3video_jax.train.supervise": "o3video_jax.drivers.supervise",
    "o3video_jax.train.loop": "o3video_jax.drivers.sft",
    "o3video_jax.train.synthetic_data": "o3video_jax.data.synthetic_runs",
    "o3video_jax.rl.loop": "o3video_jax.drivers.gspo",
    "o3video_jax.rl.heldout": "o3video_jax.drivers.heldout",
    "o3video_jax.data.plan": "o3video_jax.drivers.plan",
    "o3video_jax.data.positions": "o3video_jax.models.qwen2_5_vl.positions",
    "o3video_jax.data.vision_layout": "o3video_jax.models.qwen2_5_vl.vision_layout",
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


def test_no_upward_import():
    graph = _graph()
    upward = sorted(
        (a, b)
        for a, targets in graph.items()
        if a not in ALIASES
        for b in targets
        if _floor(b) > _floor(a)
    )
    assert not upward, f"imports that run up a floor (see docs/architecture.md): {upward}"


def test_the_floor_check_catches_an_upward_import(tmp_path):
    # a library module that reaches into a driver, as data/plan.py once did
    assert _floor("o3video_jax.data.planner") < _floor("o3video_jax.drivers.experiment")
    assert _floor("o3video_jax.train.sharding") < _floor("o3video_jax.drivers.aot")
    assert _floor("o3video_jax.checkpoints.hf") > _floor("o3video_jax.mesh")


def test_aliases_only_forward():
    """An alias module imports its new home and hands it over (`sys.modules[__name__] = ...`),
    or calls its command line when run with `python -m`; it defines nothing."""
    modules = _modules()
    for old, new in ALIASES.items():
        assert old in modules, f"alias {old} is missing"
        assert new in modules, f"{old} forwards to a module that does not exist: {new}"
        assert _imports(old, modules[old], modules) == {new}, old
        tree = ast.parse(modules[old].read_text())
        defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert not defs, f"{old} defines {[d.name for d in defs]}: move them to {new}"
        importlib.import_module(old)
        assert sys.modules[old] is importlib.import_module(new), old


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
