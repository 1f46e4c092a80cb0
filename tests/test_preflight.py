"""The config-vs-mesh pre-flight check (drivers.preflight) and the lr horizon in optimiser updates.

Pure host code: no devices, no compilation. Expected values are derived by hand in comments.
"""

import importlib.util
import math
import os

import pytest

from o3video_jax.drivers import preflight
from o3video_jax.train.state import make_schedule

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments", "configs")


def load(name: str, arg: str = ""):
    spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIGS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg or None)


# (chips JAX sees, hosts = processes): v5p-8 = 4 chips (megacore) on 1 host; v6e-8 is one
# 8-chip host; larger v6e slices and v5p have 4 chips per host.
SLICES = {
    "v5p-8": (4, 1),
    "v6e-8": (8, 1),
    "v6e-16": (16, 4),
    "v6e-32": (32, 8),
    "v6e-64": (64, 16),
    "v5p:4x4x4": (64, 16),
}


@pytest.mark.parametrize("slice_name", sorted(SLICES))
@pytest.mark.parametrize(
    "name,arg",
    [
        ("sft_qwen2_5_vl", "size=3b"),
        ("sft_qwen2_5_vl", "size=7b"),
        ("sft_qwen2_5_vl", "size=32b"),
        ("sft_qwen2_5_vl", "size=72b"),
        ("gspo_qwen2_5_vl", "size=3b"),
        ("gspo_qwen2_5_vl", "size=7b"),
        ("gspo_qwen2_5_vl", "size=7b,preset=gspo_paper"),
        ("gspo_qwen2_5_vl", "size=32b"),
        ("gspo_qwen2_5_vl", "size=72b,preset=gspo_paper"),
    ],
)
def test_shipped_configs_fit_every_slice(name, arg, slice_name):
    n, hosts = SLICES[slice_name]
    config = load(name, arg)
    tensor = int(config.mesh.tensor)
    r = preflight.apply(config, n, hosts)
    assert math.prod(r.mesh.values()) == n
    # One row (SFT) / prompt (GSPO) per batch shard = fsdp = n / tensor chips.
    assert r.batch_shards == n // tensor and r.batch_size == n // tensor
    assert config.data.batch_size == r.batch_size
    assert r.rows_per_update % r.batch_shards == 0
    # One epoch of the upstream data whatever the batch: ceil(31166 or 37228 / batch).
    examples = 31166 if name.startswith("sft") else 37228
    assert r.total_steps == config.total_steps == -(-examples // r.batch_size)
    if name.startswith("gspo"):
        g, mbs = (8, 4) if "gspo_paper" in arg else (4, 1)  # the presets' G and minibatches
        assert r.rows_per_update == r.batch_size * g // mbs
        assert r.schedule_steps == r.total_steps * mbs == config.optim.total_steps
        # budget 4864 - 768 = 4096 -> [4096/4, 4096/2, 4096]
        assert r.prompt_buckets == (1024, 2048, 4096) and r.prompt_budget == 4096
        # Fewer prompts than minibatches (72B on 8-16 chips): rows split, pixels repeated.
        assert bool(r.warnings) == bool(r.batch_size % mbs)
    else:
        assert r.schedule_steps == r.total_steps  # microbatches are not updates
        assert not r.warnings
    assert preflight.apply(config, n, hosts) == r  # idempotent on the written-back config


def test_fixed_batch_on_a_large_slice_names_the_fields():
    # The README's v5p:4x4x4 case before this check: fsdp=-1 over 64 chips, batch 8.
    config = load("sft_qwen2_5_vl", "size=7b")
    config.data.batch_size = 8
    config.data.per_device_batch_size = 0
    with pytest.raises(preflight.PreflightError) as e:
        preflight.check(config, 64)
    msg = str(e.value)
    assert "data.batch_size=8 rows do not split over the 64 batch shards" in msg
    assert "mesh.data=1xmesh.fsdp=64" in msg
    assert "data.per_device_batch_size" in msg
    config.data.batch_size = 128  # a multiple of 64 is fine
    assert preflight.check(config, 64).per_device_batch_size == 2


def test_an_explicit_global_batch_wins():
    config = load("sft_qwen2_5_vl", "size=7b")  # per_device_batch_size = 1
    config.data.batch_size = 16  # --config.data.batch_size=16 on 8 chips
    r = preflight.check(config, 8)
    assert (r.batch_size, r.per_device_batch_size, r.total_steps) == (16, 2, 1948)


def test_mesh_that_does_not_cover_the_devices():
    config = load("sft_qwen2_5_vl", "size=7b")
    config.mesh.update({"data": 2, "fsdp": 2, "tensor": 1})
    with pytest.raises(preflight.PreflightError, match=r"multiply to 4, which must equal"):
        preflight.check(config, 8)
    config.mesh.update({"data": -1, "fsdp": -1, "tensor": 1})
    with pytest.raises(preflight.PreflightError, match="at most one size is -1"):
        preflight.check(config, 8)


def test_gspo_minibatches_and_microbatches():
    config = load("gspo_qwen2_5_vl", "size=7b")
    config.data.batch_size, config.data.per_device_batch_size = 8, 0
    # 8 prompts x G 4 = 32 rows; 4 minibatches of 8 rows on 16 shards: not splittable.
    config.rl.minibatches = 4
    with pytest.raises(preflight.PreflightError) as e:
        preflight.check(config, 8 * 2 * 1)  # 16 devices: fsdp 16, batch 8 % 16 too
    msg = str(e.value)
    assert "data.batch_size=8 prompts do not split over the 16 batch shards" in msg
    assert "update minibatch of 8 rows" in msg and "rl.minibatches=4" in msg  # both listed
    # On 8 devices: 8 rows per minibatch over 8 shards is fine; 2 microbatches of 4 are not.
    config.optim.microbatches = 2
    with pytest.raises(preflight.PreflightError, match=r"optim.microbatches=2"):
        preflight.check(config, 8)
    config.optim.microbatches = 1
    config.rl.minibatches = 3  # 32 rows do not split into 3
    with pytest.raises(preflight.PreflightError, match=r"32 rollout rows .* rl.minibatches=3"):
        preflight.check(config, 8)


def test_lr_horizon_counts_gspo_updates():
    """gspo_paper: 4 minibatch updates per rollout step, cosine: lr at mid-run ~ peak / 2."""
    config = load("gspo_qwen2_5_vl", "size=7b,preset=gspo_paper")
    r = preflight.apply(config, 64)
    assert r.updates_per_step == 4 and r.schedule_steps == 4 * r.total_steps
    sched = make_schedule(preflight.optimizer_config(config))
    peak = config.optim.lr
    mid = r.schedule_steps // 2  # optimiser update at the middle of the run
    # cos decay: lr(k) = peak (1 + cos(pi k / K)) / 2 = peak / 2 at k = K / 2
    assert float(sched(mid)) == pytest.approx(peak / 2, rel=1e-3)
    assert float(sched(r.schedule_steps - 1)) > 0  # still learning at the last update
    # The old horizon (rollout steps) ended the schedule at 25% of the run.
    config.optim.total_steps = r.total_steps
    with pytest.raises(preflight.PreflightError, match=r"optim.total_steps=582 .* makes 2328"):
        preflight.check(config, 64)
    # A longer explicit horizon is allowed (a run cut short on purpose), with a warning.
    config.optim.total_steps = 3 * r.schedule_steps
    assert "cut off" in preflight.check(config, 64).warnings[0]


def test_warmup_is_given_in_run_steps():
    config = load("gspo_qwen2_5_vl", "size=7b,preset=gspo_paper")
    config.total_steps, config.optim.warmup_steps = 10, 2
    opt = preflight.optimizer_config(config)
    assert (opt.total_steps, opt.warmup_steps) == (40, 8)  # x 4 updates per rollout step
    sched = make_schedule(opt)
    assert float(sched(4)) == pytest.approx(config.optim.lr / 2)  # half-way up the warm-up
    config.optim.warmup_steps = 11
    with pytest.raises(preflight.PreflightError, match=r"optim.warmup_steps=11"):
        preflight.check(config, 8)


def test_prompt_buckets_against_the_budget():
    config = load("gspo_qwen2_5_vl", "size=7b")
    assert preflight.derive_buckets(4096) == (1024, 2048, 4096)
    assert preflight.derive_buckets(1000) == (256, 512, 1000)  # 250, 500 rounded up to 128
    config.rl.prompt_buckets = [1024, 8192]  # above the 4096-token budget
    with pytest.raises(preflight.PreflightError, match=r"rl.prompt_buckets=\[1024, 8192\]"):
        preflight.check(config, 8)
    config.rl.prompt_buckets = [2048, 1024]  # below: longer prompts are skipped and counted
    r = preflight.check(config, 8)
    assert r.prompt_buckets == (1024, 2048) and r.prompt_budget == 2048
    assert "skipped and counted" in r.warnings[0]
    config.data.max_seq_len = 768  # = rl.max_new_tokens: no room for a prompt
    with pytest.raises(preflight.PreflightError, match="leaves no prompt room"):
        preflight.check(config, 8)


def test_total_steps_from_epochs_needs_the_example_count():
    config = load("sft_qwen2_5_vl", "size=7b")
    config.data.num_examples = 0
    with pytest.raises(preflight.PreflightError, match="total_steps=0"):
        preflight.check(config, 8)
    config.epochs, config.data.num_examples = 2.0, 100
    assert preflight.check(config, 8).total_steps == 25  # ceil(2 x 100 / 8)


def test_runlocal_and_synthetic_configs_are_unchanged():
    r = preflight.check(load("synthetic", "stage=gspo"), 1)
    assert (r.batch_size, r.total_steps, r.prompt_buckets) == (8, 36, (336,))
    assert r.schedule_steps == 72  # 2 minibatch updates per rollout step
    r = preflight.check(load("gspo_qwen2_5_vl", "runlocal"), 1)
    assert (r.batch_size, r.prompt_buckets) == (2, (512, 1024))
    assert preflight.check(load("sft_qwen2_5_vl", "runlocal"), 1).batch_size == 2


def test_weights_that_do_not_split_over_the_mesh():
    config = load("sft_qwen2_5_vl", "size=7b")
    config.mesh.update({"data": 1, "fsdp": -1, "tensor": 8})
    # 7B: vision MLP 3420 (/8 = 427.5), kv heads 4 x 128 = 512 (fine), on 16 chips.
    with pytest.raises(preflight.PreflightError) as e:
        preflight.check(config, 16)
    assert "'vision_mlp' have dimension 3420" in str(e.value)
    assert "mesh.tensor=8 = 8 chips" in str(e.value) and "kv_heads" not in str(e.value)
    # FSDP over 512 chips: the vision width 1280 does not split (1280 / 512 = 2.5).
    config.mesh.update({"data": 1, "fsdp": -1, "tensor": 1})
    with pytest.raises(preflight.PreflightError, match=r"'vision_embed' have dimension 1280"):
        preflight.check(config, 512)
    assert preflight.check(config, 256).mesh["fsdp"] == 256  # 1280 / 256 = 5, 3584 / 256 = 14


def test_serving_layout_is_resolved_and_checked():
    """rl.serving (docs/design.md decision 15): the tensor width defaults to the chips of one
    host, reduced to divide the attention and KV heads; every misfit names its fields."""
    # 7B (28 heads, 4 KV heads) on v5p:4x4x4 (64 chips, 4 a host): 4 chips, 16 row shards.
    config = load("gspo_qwen2_5_vl", "size=7b")
    r = preflight.apply(config, 64, 16)
    assert r.serving_tensor == 4 == config.rl.serving.tensor
    assert "serving layout (tensor=4, rows=16)" in preflight.summary(r)
    assert preflight.apply(config, 64, 16) == r  # idempotent
    # 3B (16 heads, 2 KV heads): 2 chips; the AOT tool passes the topology's host size.
    config = load("gspo_qwen2_5_vl", "size=3b")
    assert preflight.check(config, 64, host_devices=4).serving_tensor == 2
    # The training layout: nothing to resolve.
    config.rl.serving.layout = "training"
    assert preflight.check(config, 64, host_devices=4).serving_tensor == 0
    # 7B at tensor=8: 4 KV heads do not split 8 ways.
    config = load("gspo_qwen2_5_vl", "size=7b")
    config.rl.serving.tensor = 8
    with pytest.raises(preflight.PreflightError) as e:
        preflight.check(config, 64, 16)
    assert "rl.serving.tensor=8 does not split the 28 attention heads and 4 KV heads" in str(
        e.value
    )
    assert "divisor of 4" in str(e.value)
    # 8 prompts over 64 / 4 = 16 serving row shards.
    config = load("gspo_qwen2_5_vl", "size=7b")
    config.data.batch_size, config.data.per_device_batch_size = 8, 0
    config.mesh.update({"data": 1, "fsdp": 8, "tensor": 8})
    with pytest.raises(preflight.PreflightError, match=r"data.batch_size=8 prompts do not split "
                       r"over the 16 serving row shards .*rl.serving.tensor=4"):  # fmt: skip
        preflight.check(config, 64, 16)
    config.rl.serving.tensor = 3
    with pytest.raises(preflight.PreflightError, match=r"rl.serving.tensor=3 does not divide"):
        preflight.check(config, 64, 16)


def test_batch_shards_must_not_span_hosts():
    # tensor=8 on 4-chip hosts: each batch shard would need the same rows from 2 processes.
    config = load("sft_qwen2_5_vl", "size=72b")
    config.mesh.tensor = 8
    with pytest.raises(preflight.PreflightError, match=r"8 batch shards .* 16 processes"):
        preflight.check(config, 64, num_processes=16)
    assert preflight.check(config, 64, num_processes=8).batch_size == 8  # 8-chip hosts


def test_processes_must_each_get_rows():
    # A fixed batch of 4 prompts over 8 single-device processes (a CPU/GPU cluster).
    config = load("gspo_qwen2_5_vl", "size=7b")
    config.data.batch_size, config.data.per_device_batch_size = 4, 0
    config.mesh.update({"data": -1, "fsdp": 1, "tensor": 1})
    with pytest.raises(preflight.PreflightError, match=r"do not split over 8 processes"):
        preflight.check(config, 8, num_processes=8)
    config.data.batch_size = 16
    assert preflight.check(config, 8, num_processes=8).per_device_batch_size == 2


def test_setup_checks_before_building_anything(tmp_path):
    """experiment.setup runs the check first: on conftest's 8 CPU devices a batch of 3 stops
    before any tokenizer, model or compilation (the tokenizer dir does not even exist)."""
    from o3video_jax.drivers import experiment

    config = load("synthetic", "size=tiny")
    config.data.batch_size = 3
    config.data.tokenizer_dir = str(tmp_path / "missing")
    with pytest.raises(preflight.PreflightError, match=r"batch_size=3 rows .* 8 batch shards"):
        experiment.setup(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
