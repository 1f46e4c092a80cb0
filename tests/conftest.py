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
    from o3video_jax.train import synthetic_data

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
