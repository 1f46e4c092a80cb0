"""AOT-compile the real train steps for TPU topologies on this CPU host (STYLE 13).

Needs libtpu (installed with the test extra on linux x86_64); elsewhere these tests are
skipped. Topology parsing and the missing-libtpu error are tested in test_train_loop.py.
"""

import importlib.util
import os
import sys

import pytest

from o3video_jax.train import aot

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments", "configs"))


def _config(stage: str, mesh: dict):
    import gspo_qwen2_5_vl
    import sft_qwen2_5_vl

    mod = sft_qwen2_5_vl if stage == "sft" else gspo_qwen2_5_vl
    c = mod.get_config("runlocal")
    with c.unlocked():
        c.mesh.update(mesh)
        c.data.batch_size = 4
        # A small batch, so that the train state dominates the step's arguments.
        c.data.max_seq_len = 64
        c.data.max_patches = 16
    return c


@pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu (pip install jax[tpu])")
def test_sft_step_compiles_for_v5p_and_fsdp_shards_the_state():
    devices = aot.topology_devices("v5p:2x2x1")
    assert len(devices) == 4
    fsdp = aot.compile_step(_config("sft", {"data": 1, "fsdp": 4, "tensor": 1}), devices)
    data = aot.compile_step(_config("sft", {"data": 4, "fsdp": 1, "tensor": 1}), devices)
    m_fsdp, m_data = fsdp.memory_analysis(), data.memory_analysis()
    # The train state (params + Adam moments) dominates the arguments:
    # FSDP over 4 chips must hold about a quarter of what pure data parallelism replicates.
    assert m_fsdp.argument_size_in_bytes < 0.5 * m_data.argument_size_in_bytes
    # The state is donated: outputs alias the inputs instead of doubling the memory.
    assert m_fsdp.alias_size_in_bytes > 0
    assert "memory per device (4 devices)" in aot.report(fsdp, 4)


@pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu (pip install jax[tpu])")
def test_gspo_update_compiles_with_tensor_parallelism():
    devices = aot.topology_devices("v5p:2x2x1")
    compiled = aot.compile_step(_config("gspo", {"data": 1, "fsdp": 2, "tensor": 2}), devices)
    assert compiled.memory_analysis().temp_size_in_bytes > 0
