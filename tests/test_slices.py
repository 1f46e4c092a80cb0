"""The slices the configs book (`slice=`): mesh, batch, run length and the device check, derived
by hand from the slice names (v5p names count TensorCores, 2 per chip; v6e names count chips)."""

import math
import os
import sys

import pytest

from o3video_jax.drivers import preflight

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments", "configs"))
import common  # noqa: E402
import gspo_qwen2_5_vl  # noqa: E402
import sft_qwen2_5_vl  # noqa: E402

SFT_RECORDS, RL_RECORDS = 31166, 37228


def test_slice_names_and_topologies_agree():
    from o3video_jax.drivers import aot

    for name, (topology, chips, hosts, _) in common.SLICES.items():
        gen, n = name.split("-")
        per_name = int(n) // 2 if gen in ("v5p", "v4") else int(n)  # TensorCores vs chips
        assert chips == per_name, name
        _, dims = aot.parse_topology(topology)
        assert math.prod(dims) == chips, (name, topology)
        assert topology.split(":")[0] == {"v5litepod": "v5e"}.get(gen, gen)
        assert hosts == (1 if chips <= 8 and gen in ("v6e", "v5litepod") else chips // 4), name
    assert common.SLICES["v5p-64"][:3] == ("v5p:2x4x4", 32, 8)  # not v5p:4x4x4 (64 chips)
    assert common.SLICES["v6e-64"][:3] == ("v6e:8x8", 64, 16)


# stage, size, slice, num_slices -> (mesh, rows or prompts per step, steps)
CASES = [
    (
        "sft",
        "7b",
        "v5p-64",
        1,
        {"data": 1, "fsdp": 32, "tensor": 1},
        32,
        math.ceil(SFT_RECORDS / 32),
    ),
    ("sft", "3b", "v5p-64", 1, {"data": 1, "fsdp": 32, "tensor": 1}, 32, 974),
    ("sft", "7b", "v6e-64", 1, {"data": 1, "fsdp": 16, "tensor": 4}, 16, 1948),
    ("sft", "3b", "v6e-64", 1, {"data": 1, "fsdp": 64, "tensor": 1}, 64, 487),
    (
        "gspo",
        "7b",
        "v6e-64",
        1,
        {"data": 1, "fsdp": 16, "tensor": 4},
        16,
        math.ceil(RL_RECORDS / 16),
    ),
    ("gspo", "7b", "v5p-64", 1, {"data": 1, "fsdp": 32, "tensor": 1}, 32, 1164),
    ("sft", "7b", "v5p-64", 2, {"data": 2, "fsdp": 32, "tensor": 1}, 64, 487),
]


@pytest.mark.parametrize("stage,size,slice_,n,mesh,batch,steps", CASES)
def test_slice_presets(stage, size, slice_, n, mesh, batch, steps):
    mod = sft_qwen2_5_vl if stage == "sft" else gspo_qwen2_5_vl
    arg = f"size={size},slice={slice_}" + (f",num_slices={n}" if n > 1 else "")
    c = mod.get_config(arg)
    chips = common.SLICES[slice_][1] * n
    assert c.slice.devices == chips and c.model.remat == "full" and c.optim.microbatches == 1
    r = preflight.check(c, chips, num_processes=chips // 4)
    assert r.mesh == mesh and r.batch_size == batch and r.total_steps == steps
    with pytest.raises(preflight.PreflightError, match="devices are here"):
        preflight.check(c, chips * 2, num_processes=chips // 2)


def test_unknown_slice_and_stray_num_slices():
    with pytest.raises(ValueError, match="unknown slice 'v5p-63'"):
        sft_qwen2_5_vl.get_config("size=7b,slice=v5p-63")
    with pytest.raises(ValueError, match="needs slice="):
        gspo_qwen2_5_vl.get_config("size=7b,num_slices=2")
    assert sft_qwen2_5_vl.get_config("size=7b").slice.devices == 0  # no slice: any devices
