"""Multislice meshes (the data axis over DCN) and no silent placement fallback, on TPU
topologies described by libtpu on this CPU host (no TPU needed)."""

import importlib.util
import os
import sys

import numpy as np
import pytest

from o3video_jax import mesh as mesh_lib
from o3video_jax.drivers import aot
from o3video_jax.train import sharding

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None, reason="needs libtpu (pip install jax[tpu])"
)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments", "configs"))


def _slices(mesh, axis):
    """For each index along `axis`, the set of slice ids of its devices."""
    grid = np.moveaxis(mesh.devices, mesh.axis_names.index(axis), 0)
    return [{d.slice_index for d in row.flat} for row in grid]


def test_two_slices_put_the_data_axis_across_slices():
    devices = aot.topology_devices("v5p:2x2x1", num_slices=2)
    assert len(devices) == 8 and sharding.num_slices(devices) == 2
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4, "tensor": 1}, devices)
    # Each data index is one whole slice: FSDP's all-gathers stay on ICI.
    assert _slices(mesh, "data") == [{0}, {1}]
    mesh = sharding.make_mesh({"data": 4, "fsdp": 2, "tensor": 1}, devices)
    assert [len(s) for s in _slices(mesh, "data")] == [1, 1, 1, 1]
    assert sorted(next(iter(s)) for s in _slices(mesh, "data")) == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="multiple of 2"):
        sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1}, devices)


def test_one_slice_has_no_slice_axis_and_splits_the_torus_when_needed(capsys):
    devices = aot.topology_devices("v6e:8x8")
    assert sharding.num_slices(devices) == 1
    # tensor=4 on an 8x8 torus needs a physical axis split: topology-aware, not plain order.
    mesh = sharding.make_mesh({"data": 1, "fsdp": 16, "tensor": 4}, devices)
    assert mesh.devices.shape == (1, 16, 4)
    assert "plain device order" not in capsys.readouterr().out


def test_a_placement_that_cannot_follow_the_topology_is_an_error(monkeypatch, capsys):
    devices = aot.topology_devices("v5p:2x2x1")

    def cannot(*args, **kwargs):
        raise NotImplementedError("no assignment")

    monkeypatch.setattr(mesh_lib.mesh_utils, "create_device_mesh", cannot)
    with pytest.raises(ValueError, match="mesh_fallback"):
        sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 1}, devices)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 1}, devices, allow_fallback=True)
    assert list(mesh.devices.flat) == list(devices)  # asked for: plain order, and said so
    assert "plain device order" in capsys.readouterr().out


def test_the_sft_step_compiles_for_two_slices():
    import sft_qwen2_5_vl

    c = sft_qwen2_5_vl.get_config("runlocal")
    with c.unlocked():
        c.mesh.update({"data": 2, "fsdp": 4, "tensor": 1})
        c.data.batch_size = 8
        c.data.max_seq_len = 64
        c.data.max_patches = 16
    compiled = aot.compile_step(c, aot.topology_devices("v5p:2x2x1", num_slices=2))
    assert compiled.memory_analysis().argument_size_in_bytes > 0


def test_aot_cli_num_slices_and_the_save_plan():
    import subprocess

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = os.path.join(repo, "experiments", "configs", "sft_qwen2_5_vl.py")
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "o3video_jax.train.aot",
            f"--config={cfg}:runlocal",
            "--topology=v5p:2x2x1",
            "--num_slices=2",
            "--only=sft_step",
            "--config.mesh.data=2",
            "--config.mesh.fsdp=4",
            "--config.data.batch_size=8",
            "--config.data.max_seq_len=64",
            "--config.data.max_patches=16",
            "--config.ckpt.save_every=500",
            "--config.ckpt.save_every_minutes=30",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", "")),
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "2 slices of v5p:2x2x1: 8 devices" in p.stdout
    assert "mesh {'data': 2, 'fsdp': 4, 'tensor': 1}" in p.stdout
    plan = [x for x in p.stdout.splitlines() if x.startswith("checkpoints:")]
    assert len(plan) == 1 and "every 500 steps and every 30 min; at " in plan[0], plan
    assert "(AOT roofline, programs summed)" in plan[0]
