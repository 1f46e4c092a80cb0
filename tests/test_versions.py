"""setup.py's version floors against the APIs the code uses and against what is installed.

`API_FLOORS` is the table "API -> first release that has it (or behaves as we need)", each
entry checked to be used by the code and present in the installed package; the floors in
setup.py must be at least the table's, and the installed versions at least the floors.
"""

import ast
import importlib
import importlib.metadata
import os
import re
import sys

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (package, first release, API as used, regex that finds it in o3video_jax/, where it was read)
API_FLOORS = [
    ("jax", "0.7.1", "jax.set_mesh", r"jax\.set_mesh\(", "jax CHANGELOG 0.7.1"),
    ("jax", "0.5.0", "jax.sharding.AxisType", r"AxisType\.", "jax CHANGELOG 0.5.0"),
    ("jax", "0.4.25", "jax.tree", r"jax\.tree\.map", "jax CHANGELOG 0.4.25"),
    (
        "flax",
        "0.11.2",
        "flax.linen.with_logical_constraint under jax.set_mesh",
        r"nn\.with_logical_constraint\(",
        "flax commit 3aa32309 (first in v0.11.2): linen reads jax's abstract mesh; with jax "
        "0.7.1, flax 0.11.1 traces no sharding_constraint under jax.set_mesh, 0.11.2 does",
    ),
    (
        "orbax-checkpoint",
        "0.11.17",
        "orbax.checkpoint.CheckpointManager under jax >= 0.7",
        r"ocp\.CheckpointManager\b",
        "orbax commit 08c7b6e6 (first in v0.11.17) uses jax.experimental.layout.Layout; "
        "0.11.0 fails to import with jax 0.7.1 (no DeviceLocalLayout), tried in a venv",
    ),
    ("optax", "0.2.5", "optax.tree.norm", r"optax\.tree\.norm\(", "optax/tree at v0.2.5"),
    ("grain", "0.2.12", "grain.MultiprocessingOptions", r"grain\.MultiprocessingOptions\(",
     "grain/__init__.py at v0.2.12"),
    ("grain", "0.2.8", "grain.ReadOptions", r"grain\.ReadOptions\(", "grain/__init__.py v0.2.8"),
]  # fmt: skip

# The attribute path each table API resolves to in the installed package.
_ATTRS = {
    "jax.set_mesh": "jax.set_mesh",
    "jax.sharding.AxisType": "jax.sharding.AxisType.Auto",
    "jax.tree": "jax.tree.map",
    "flax.linen.with_logical_constraint under jax.set_mesh": "flax.linen.with_logical_constraint",
    "optax.tree.norm": "optax.tree.norm",
    "orbax.checkpoint.CheckpointManager under jax >= 0.7": "orbax.checkpoint.CheckpointManager",
    "grain.MultiprocessingOptions": "grain.MultiprocessingOptions",
    "grain.ReadOptions": "grain.ReadOptions",
}


def _setup_lists():
    """INSTALL_REQUIRES, EXTRAS and python_requires, read from setup.py without running it."""
    tree = ast.parse(open(os.path.join(REPO, "setup.py")).read())
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            name = getattr(node.targets[0], "id", None)
            if name in ("INSTALL_REQUIRES", "EVAL", "EXTRAS"):
                # Literal lists and dicts, which may splice an earlier list (`*EVAL`).
                expr = compile(ast.Expression(node.value), "setup.py", "eval")
                found[name] = eval(expr, {"__builtins__": {}}, dict(found))
        if isinstance(node, ast.keyword) and node.arg == "python_requires":
            found["python_requires"] = ast.literal_eval(node.value)
    return found["INSTALL_REQUIRES"], found["EXTRAS"], found["python_requires"]


def _floors() -> dict[str, Version]:
    out = {}
    for line in _setup_lists()[0]:
        req = Requirement(line)
        for spec in req.specifier:
            if spec.operator == ">=":
                out[req.name] = Version(spec.version)
    return out


def _source() -> str:
    parts = []
    for root, _, files in os.walk(os.path.join(REPO, "o3video_jax")):
        parts += [open(os.path.join(root, f)).read() for f in files if f.endswith(".py")]
    return "\n".join(parts)


def test_every_requirement_has_a_floor():
    for line in _setup_lists()[0]:
        req = Requirement(line)
        assert any(s.operator == ">=" for s in req.specifier), f"{line}: no >= floor"


@pytest.mark.parametrize("package,first,api,pattern,where", API_FLOORS, ids=lambda x: str(x))
def test_floor_covers_api(package, first, api, pattern, where):
    floors = _floors()
    assert package in floors, f"{package} has no floor in setup.py"
    assert floors[package] >= Version(first), (
        f"setup.py has {package}>={floors[package]}, but {api} needs {first} ({where})"
    )
    assert re.search(pattern, _source()), f"{api} is no longer used: drop it from the table"
    parts = _ATTRS[api].split(".")
    for n in range(len(parts), 0, -1):  # the longest importable module, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:n]))
            break
        except ImportError:
            continue
    for part in parts[n:]:
        obj = getattr(obj, part)  # the installed package has the API the table names


def test_installed_versions_meet_the_floors():
    low = []
    for name, floor in _floors().items():
        try:
            installed = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            low.append(f"{name} is not installed")
            continue
        if installed < floor:
            low.append(f"{name} {installed} < {floor}")
    assert not low, "installed below setup.py's floors: " + "; ".join(low)


def test_python_floor_matches_jax():
    # jax >= 0.7.0 supports Python >= 3.11 only (jax CHANGELOG 0.7.0).
    python_requires = _setup_lists()[2]
    assert python_requires == ">=3.11"
    assert sys.version_info >= (3, 11)


def test_accelerator_extras_do_not_mix():
    install, extras, _ = _setup_lists()

    def mentions_tpu(reqs):
        return [r for r in reqs if "tpu" in Requirement(r).extras or "libtpu" in r]

    assert not mentions_tpu(install)
    assert not mentions_tpu(extras["gpu"]) and not mentions_tpu(extras["cuda13"])
    assert not mentions_tpu(extras["test"]), ".[gpu,test] must not pull libtpu"
    assert mentions_tpu(extras["aot"]) and mentions_tpu(extras["tpu"])
    assert [Requirement(r).extras for r in extras["gpu"]] == [{"cuda12"}]
    # CI installs what the AOT tests need, with the README's command.
    ci = open(os.path.join(REPO, ".ci", "run")).read()
    readme = open(os.path.join(REPO, "README.md")).read()
    assert 'pip install -e ".[test,aot]"' in ci and 'pip install -e ".[test,aot]"' in readme
