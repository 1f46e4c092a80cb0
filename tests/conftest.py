"""Test-wide setup: a fake 8-device CPU platform so sharding tests run on a laptop."""

import os

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The AOT tests load libtpu (to describe TPU topologies); several test processes may do so at
# once (pytest-xdist workers, CLI subprocesses), which libtpu's lockfile forbids by default.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()


# ---- the training-loop tests (test_train_loop, test_eval_every, test_multiprocess) ----
@pytest.fixture(scope="module")
def loop_env(tmp_path_factory):
    """Environment of a subprocess run: ONE CPU device (the fake 8-device platform of conftest
    would need batches divisible by 8) and a persistent compilation cache shared by the
    module's runs, so only the first run of each step function pays for compilation."""
    cache = tmp_path_factory.mktemp("xla_cache")
    e = dict(os.environ)
    e.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        PYTHONPATH=_REPO + os.pathsep + e.get("PYTHONPATH", ""),
    )
    return e


@pytest.fixture(scope="module")
def loop_data(tmp_path_factory):
    """One tiny synthetic dataset (the tiny config's sizes) shared by the module's runs."""
    from o3video_jax.data import synthetic_runs as synthetic_data

    return synthetic_data.prepare(
        tmp_path_factory.mktemp("synthetic"), videos=4, eval_videos=1, width=56, height=56
    )


# ---- attention einsum layouts (attention.py `_SPECS`) ----
@pytest.fixture(params=["heads", "tokens"])
def attention_layout(request, monkeypatch):
    """Runs a test under the CPU layout (heads-major) and the accelerators' (token-major):
    both are exercised on CPU. Tests must trace afresh (eager calls or new jitted lambdas)."""
    from o3video_jax.models.qwen2_5_vl import attention

    forced = lambda fn, *args: fn(*args, layout=request.param)
    monkeypatch.setattr(attention, "by_lowering_platform", forced)
    return request.param


# ---- test lanes ----
# Integration tests start processes (CLI runs, jax.distributed workers, a GCS API server, the
# shell scripts against a fake gcloud), compile for TPU topologies or run the demo. They and the
# unit tests that take over ~10 s on 2 cores are marked `slow`; the quick lane leaves both out:
#   python -m pytest -q -n 2 -m "not slow" tests        (about 3 minutes on 2 cores)
# while the full suite (the README's test command, CI) runs everything.
INTEGRATION_FILES = {
    "test_aot.py",
    "test_cli_distributed.py",
    "test_demo.py",
    "test_eval_every.py",
    "test_gcs.py",
    "test_multiprocess.py",
    "test_multislice.py",
    "test_preemption.py",
    "test_save_agreement.py",
    "test_smoke.py",
    "test_supervise.py",
    "test_sweep.py",
    "test_tpu_scripts.py",
    "test_train_loop.py",
    "test_two_stage.py",
}
SLOW_UNIT_TESTS = {
    "test_evaluate_run.py::test_sigkill_and_resume_gives_the_uninterrupted_file",
    "test_evaluate_run.py::test_vstar_end_to_end",
    "test_evaluate_sampler.py::test_patch_buckets_same_outputs_smaller_vision_shape",
    "test_flash_attention.py::test_model_with_chunked_text_attention_equals_dense",
    "test_group_vision.py::test_sharded_shared_equals_unshared_with_fallback",
    "test_group_vision.py::test_update_shared_equals_repeated_two_minibatches",
    "test_gspo.py::test_gspo_update_sharded_equals_single_device",
    "test_gspo_wiring.py::test_first_update_ratio_is_one_and_reference_is_the_initial_policy",
    "test_packed_logits.py::test_packed_logits_equal_unpacked",
    "test_sampler.py::test_decode_unroll_keeps_tokens",
    "test_sampler.py::test_group_equals_separate_runs",
    "test_sampler.py::test_sharded_equals_unsharded",
    "test_scan_layers.py::test_greedy_decode_tokens_identical",
    "test_scan_layers.py::test_logits_loss_and_gradients_equal_unrolled[gqa]",
    "test_scan_layers.py::test_sft_step_equals_unrolled_on_a_sharded_mesh",
    "test_scan_layers.py::test_stack_unstack_round_trip_is_exact",
    "test_schedule.py::test_gspo_lr_counts_updates_and_long_prompts_are_skipped",
    "test_train_steps.py::test_sharded_sft_step_equals_single_device_real_model",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.path.name
        test = f"{name}::{item.name}"
        if name in INTEGRATION_FILES:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.slow)
        elif test in SLOW_UNIT_TESTS or test.split("[")[0] in SLOW_UNIT_TESTS:
            item.add_marker(pytest.mark.slow)
