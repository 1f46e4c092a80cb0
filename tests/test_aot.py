"""AOT-compile every program of a run for TPU topologies on this CPU host (docs/style.md rule 13).

Needs libtpu (installed with the test extra on linux x86_64); elsewhere these tests are
skipped. Topology parsing and the missing-libtpu error are tested in test_train_loop.py.
"""

import importlib.util
import math
import os
import sys

import jax
import pytest

from o3video_jax.drivers import aot
from o3video_jax.train import roofline

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu (pip install jax[tpu])")
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


@needs_libtpu
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


def test_roofline_is_the_slower_of_compute_and_memory():
    chip = roofline.chip("v5p")
    r = roofline.Roofline(flops=459e12, bytes=2765e9 / 2, model_flops=459e12 / 2, chip=chip)
    assert r.seconds == pytest.approx(1.0) and r.bound == "compute"
    assert r.mfu == pytest.approx(0.5)
    r = roofline.Roofline(flops=1e12, bytes=2 * 2765e9, model_flops=1e12, chip=chip)
    assert r.seconds == pytest.approx(2.0) and r.bound == "memory"
    assert roofline.chip("v5litepod") is roofline.CHIPS["v5e"]
    with pytest.raises(ValueError, match="no chip numbers for TPU 'v9x'"):
        roofline.chip("v9x")
    # 2 FLOPs per parameter per token per pass: 3 passes of a training step.
    assert roofline.model_flops(10, 4, 100, 50, 3) == 2 * 3 * (10 * 100 + 4 * 50)


@needs_libtpu
def test_gspo_plan_compiles_every_program_with_consistent_numbers():
    devices = aot.topology_devices("v5p:2x2x1")
    c = _config("gspo", {"data": 1, "fsdp": 2, "tensor": 2})
    with c.unlocked():
        c.data.max_seq_len = 128 + 16
        c.rl.max_new_tokens = 16
        c.rl.prompt_buckets = [64, 128]
        c.rl.old_logp = "rollout"
        c.rl.beta = 0.04
    p = aot.plan(c, devices, "v5p:2x2x1")
    names = [q.name for q in p.programs]
    assert names == aot.program_names(c)  # the names `--only` is checked against, up front
    assert names == [
        "reshard",  # rl.serving: the tiny model's 2 KV heads -> tensor=2, 2 row shards
        "prefill[64]",
        "decode[64]",
        "prefill[128]",
        "decode[128]",
        "logprob",
        "logprob_ref",
        "update",
    ]
    prog = {q.name: q for q in p.programs}
    mem = {k: q.memory() for k, q in prog.items()}
    params = mem["logprob_ref"]["resident"] - (
        mem["logprob"]["resident"] - mem["update"]["resident"]
    )
    # The reference params are resident during the update, with the state's shardings.
    assert mem["update"]["resident"] == params > 0
    # The reshard reads the params: the optimiser state (Adam mu and nu, float32 like the
    # params) and the reference stay resident, state - params + reference = 3 params. While
    # the sampler runs on the serving params, the whole training state is resident too.
    assert mem["reshard"]["resident"] == pytest.approx(3 * params, rel=0.01)
    assert mem["prefill[64]"]["resident"] == pytest.approx(4 * params, rel=0.01)
    # The serving params (model.dtype, split over tensor=2 of 4 chips) are the reshard's output.
    assert mem["reshard"]["outputs"] == pytest.approx(2 * mem["reshard"]["arguments"], rel=0.2)
    for name, m in mem.items():
        assert m["total"] == (
            m["resident"]
            + m["arguments"]
            + m["outputs"]
            - m["aliased"]
            + m["temporaries"]
            + m["code"]
        ), name
        assert 0 < m["total"] < p.chip.hbm_bytes, name
    # The decode loop carries the donated KV cache in place.
    assert mem["decode[128]"]["aliased"] > 0
    # Prefill's outputs hold the KV cache of P*G rows with L + T slots (hand-derived size,
    # float32 model): at least a 1/4 share per chip, at most the whole cache.
    mc = aot.experiment.model_config(c)
    rows, t = 4 * c.rl.group_size, c.rl.max_new_tokens
    for bucket in (64, 128):
        kv = 2 * mc.text.num_hidden_layers * rows * (bucket + t) * mc.text.num_key_value_heads
        kv *= mc.text.head_dim * 4
        assert kv / 4 <= mem[f"prefill[{bucket}]"]["outputs"] <= kv + rows * mc.vocab_size * 4
    for name, q in prog.items():
        r = p.roofline(q)
        assert r.seconds == max(r.flops / p.chip.peak_flops, r.bytes / p.chip.hbm_bw) > 0
        if name == "reshard":  # moves bytes, no model FLOPs
            continue
        assert 0 < r.mfu <= 1, name
        assert r.flops >= r.model_flops > 0, name
    assert prog["decode[64]"].loop == t
    # Longer prompts cost more; the training update (3 passes) more than the forward.
    flops = {k: q.flops for k, q in prog.items()}
    # Only the analysis is kept: no executable stays alive (one process compiles a plan).
    assert all(q.compiled is None for q in prog.values())
    assert all(q.host_rss > 0 and q.seconds > 0 for n, q in prog.items() if n != "logprob_ref")
    assert flops["prefill[128]"] > flops["prefill[64]"]
    assert flops["update"] > flops["logprob"]
    text = aot.table(p)
    for name in names:
        assert f"| {name}" in text
    assert aot.fits(p)
    # Rollouts on the training layout: no reshard program.
    with c.unlocked():
        c.rl.serving.layout = "training"
    assert aot.program_names(c)[0] == "prefill[64]"


@needs_libtpu
def test_chip_bytes_counts_one_shard():
    devices = aot.topology_devices("v5p:2x2x1")
    mesh = jax.sharding.Mesh([[devices[0], devices[1]], [devices[2], devices[3]]], ("a", "b"))
    spec = jax.sharding.PartitionSpec("a", None)
    x = jax.ShapeDtypeStruct((8, 6), "float32", sharding=jax.NamedSharding(mesh, spec))
    assert aot.chip_bytes(x) == 4 * 6 * 4
    assert aot.chip_bytes({"y": jax.ShapeDtypeStruct((3,), "int32")}) == 12
    assert math.prod((4, 6)) * 4 == aot.chip_bytes([x])


def test_only_selects_whole_names_or_bucket_bases():
    # `--only=logprob` must not also compile the reference forward (a second multi-minute,
    # ~20 GB compile on a real config); a base selects every bucket of its program.
    assert aot.selects("logprob", "logprob") and not aot.selects("logprob", "logprob_ref")
    assert aot.selects("logprob_ref", "logprob_ref")
    assert aot.selects("prefill", "prefill[1024]") and aot.selects("prefill", "prefill[4096]")
    assert aot.selects("prefill[2048]", "prefill[2048]")
    assert not aot.selects("prefill[2048]", "prefill[1024]")
    assert not aot.selects("pre", "prefill[1024]") and not aot.selects("decode", "update")


@needs_libtpu
def test_only_naming_no_program_of_the_run_is_an_error():
    # The shipped GSPO presets take the old log-probs from the update's own forward
    # (old_logp="current"): `--only=logprob` used to compile nothing and print an empty table.
    devices = aot.topology_devices("v5p:2x2x1")
    c = _config("gspo", {"data": 1, "fsdp": 2, "tensor": 2})
    with c.unlocked():
        c.data.max_seq_len = 64 + 16
        c.rl.max_new_tokens = 16
        c.rl.old_logp = "current"
        c.rl.prompt_buckets = [64]
    with pytest.raises(ValueError, match=r"--only logprob selects no program.*old_logp='current'"):
        aot.plan(c, devices, "v5p:2x2x1", only=("logprob",))
    with pytest.raises(ValueError, match=r"--only updte selects no program.*update"):
        aot.plan(c, devices, "v5p:2x2x1", only=("updte",))


@needs_libtpu
def test_eval_plan_compiles_each_bucket_at_the_largest_vision_bucket():
    """stage "eval": prefill[L] and decode[L] per prompt bucket, at eval.max_patches a row,
    with the model config the evaluation builds (frame bound, tiled prefill)."""
    import eval as eval_config

    devices = aot.topology_devices("v5p:2x2x1")
    c = eval_config.get_config("benchmark=vstar,runlocal")
    with c.unlocked():
        c.mesh.update({"data": 1, "fsdp": 4, "tensor": 1})
        c.eval.batch_size = 4
        c.eval.prompt_buckets = [64, 256]
        c.eval.max_patches = 1024  # > vision.FRAME_BLOCK: the frame blocks take the tiles
        c.eval.max_new_tokens = 8
        c.eval.prefill_block = 128  # the 256 bucket is prefilled in tiles
    p = aot.plan(c, devices, "v5p:2x2x1")
    names = [q.name for q in p.programs]
    assert (
        names
        == aot.program_names(c)
        == [
            "prefill[64]",
            "decode[64]",
            "prefill[256]",
            "decode[256]",
        ]
    )
    mem = {q.name: q.memory() for q in p.programs}
    assert all(m["resident"] == 0 for m in mem.values())  # params alone: no optimiser state
    assert mem["decode[256]"]["aliased"] > 0  # the donated cache
    prog = {q.name: q for q in p.programs}
    assert prog["decode[64]"].loop == 8
    assert prog["prefill[64]"].patches == 4 * 1024
    # 56 x 56 px budgets: a frame holds at most 3,136 / 196 = 16 patches.
    assert "vision.max_frame_patches 16, prefill tiles 128" in p.summary
    assert aot.fits(p)
