"""The cuDNN attention path's dispatch, on CPU: cuDNN's fused attention takes bf16/fp16 only,
so float32 activations (and odd head dims) fall back to the XLA attention with one warning;
supported inputs reach `jax.nn.dot_product_attention(implementation="cudnn")` unchanged.
The GPU configs must hit the cuDNN kernel, never the fallback."""

import os
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o3video_jax.models.qwen2_5_vl import attention as attn
from o3video_jax.models.qwen2_5_vl.config import Qwen25VLConfig

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments", "configs"))


@pytest.fixture
def fake_gpu(monkeypatch):
    """A "gpu" platform whose dot_product_attention records its calls and computes the
    result with jax's own XLA implementation (same semantics as the cuDNN kernel)."""
    calls = []
    real = jax.nn.dot_product_attention

    def recording(q, k, v, *, mask, scale, implementation):
        calls.append((q.dtype, q.shape[-1], implementation))
        return real(q, k, v, mask=mask, scale=scale, implementation="xla")

    monkeypatch.setattr(attn, "_platform", lambda: "gpu")
    monkeypatch.setattr(jax.nn, "dot_product_attention", recording)
    attn._warn_cudnn_fallback.cache_clear()
    yield calls
    attn._warn_cudnn_fallback.cache_clear()


def _inputs(dtype, head_dim, seed=0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(2, 8, 4, head_dim)), dtype)
    k = jnp.asarray(rng.normal(size=(2, 8, 2, head_dim)), dtype)
    v = jnp.asarray(rng.normal(size=(2, 8, 2, head_dim)), dtype)
    seg = jnp.asarray([[1] * 6 + [0] * 2, [1] * 3 + [2] * 5], jnp.int32)
    return q, k, v, seg


def _run(backend, q, k, v, seg):
    return attn.attention(q, k, v, seg, seg, causal=True, scale=0.5, backend=backend)


def test_bfloat16_reaches_cudnn(fake_gpu):
    q, k, v, seg = _inputs(jnp.bfloat16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = _run("cudnn", q, k, v, seg)
    assert fake_gpu == [(jnp.dtype(jnp.bfloat16), 16, "cudnn")]
    ref = _run("xla", q, k, v, seg)
    np.testing.assert_allclose(np.float32(out), np.float32(ref), atol=3e-2)
    assert np.all(np.float32(out)[0, 6:] == 0)  # padding rows stay exact zeros


def test_float32_falls_back_once_with_the_config_field(fake_gpu):
    q, k, v, seg = _inputs(jnp.float32, 16)
    with pytest.warns(UserWarning, match=r"falls back to the XLA.*float32.*model\.dtype"):
        out = _run("cudnn", q, k, v, seg)
    assert fake_gpu == []  # the cuDNN kernel, which would reject fp32, is never called
    np.testing.assert_array_equal(np.asarray(out), np.asarray(_run("xla", q, k, v, seg)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call (e.g. the next layer) is silent
        jax.jit(lambda *a: _run("cudnn", *a))(q, k, v, seg)


def test_odd_head_dim_falls_back(fake_gpu):
    q, k, v, seg = _inputs(jnp.bfloat16, 12)
    with pytest.warns(UserWarning, match="multiple of 8.*got 12"):
        _run("cudnn", q, k, v, seg)
    assert fake_gpu == []


def test_unsupported_reasons():
    assert attn.cudnn_unsupported(jnp.bfloat16, 128) is None
    assert attn.cudnn_unsupported(jnp.float16, 80) is None
    assert "model.dtype" in attn.cudnn_unsupported(jnp.float32, 128)
    assert "<= 256" in attn.cudnn_unsupported(jnp.bfloat16, 264)


@pytest.mark.parametrize("arg", ["stage=sft,size=3b", "stage=gspo,size=3b", "stage=sft,size=7b"])
def test_gpu_configs_use_the_cudnn_kernel(arg):
    import gpu_qwen2_5_vl

    c = gpu_qwen2_5_vl.get_config(arg)
    assert c.model.attention == "cudnn" and dict(c.mesh) == {"data": 1, "fsdp": 8, "tensor": 1}
    assert c.data.batch_size % 8 == 0
    mc = Qwen25VLConfig.preset(c.model.preset)
    for head_dim in (mc.text.head_dim, mc.vision.head_dim):
        assert attn.cudnn_unsupported(c.model.dtype, head_dim) is None, (arg, head_dim)
    assert gpu_qwen2_5_vl.get_config("gpus=4").data.batch_size == 8
    assert gpu_qwen2_5_vl.get_config("gpus=16").data.batch_size == 16
    with pytest.raises(ValueError, match="size must be 3b or 7b"):
        gpu_qwen2_5_vl.get_config("size=72b")
