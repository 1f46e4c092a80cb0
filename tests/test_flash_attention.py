"""Key-chunked causal attention (running softmax, custom VJP) against the dense XLA path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o3video_jax.models.qwen2_5_vl.attention import attention
from o3video_jax.models.qwen2_5_vl.flash_attention import chunked_causal_attention

T = 53  # not a multiple of the chunk, and no other axis has this length

# Row 0: left padding then one example; row 1: three packed examples and right padding.
SEG = np.array([[0] * 6 + [1] * 47, [1] * 20 + [2] * 9 + [3] * 17 + [0] * 7], np.int32)


def _qkv(seed, n=4, kh=2, h=8):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(2, T, n, h)).astype(np.float32)
    k = rng.normal(size=(2, T, kh, h)).astype(np.float32)
    v = rng.normal(size=(2, T, kh, h)).astype(np.float32)
    return q, k, v


def _dense(q, k, v):
    return attention(q, k, v, SEG, SEG, causal=True, scale=0.3)


def _chunked(q, k, v):
    return attention(q, k, v, SEG, SEG, causal=True, scale=0.3, chunk=8)


def test_forward_equals_dense():
    q, k, v = _qkv(0)
    got = np.asarray(jax.jit(_chunked)(q, k, v))
    want = np.asarray(jax.jit(_dense)(q, k, v))
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert np.all(got[SEG == 0] == 0.0)  # padding queries: exact zeros
    # A chunk larger than T is clamped; MHA (K == N) works too.
    q, k, v = _qkv(1, n=2, kh=2)
    direct = chunked_causal_attention(q, k, v, SEG, SEG, scale=0.3, chunk=1000)
    np.testing.assert_allclose(np.asarray(direct), np.asarray(_dense(q, k, v)), atol=1e-6)


def test_gradients_equal_dense_and_stay_finite():
    q, k, v = _qkv(2)
    w = np.random.default_rng(3).normal(size=q.shape).astype(np.float32)

    def grads(fn):
        return jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * w), argnums=(0, 1, 2)))

    got = grads(_chunked)(q, k, v)
    want = grads(_dense)(q, k, v)
    for g, r in zip(got, want, strict=True):
        assert np.all(np.isfinite(np.asarray(g)))
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=2e-6, rtol=0)


def _has_t_by_t(jaxpr) -> bool:
    for eqn in jaxpr.eqns:
        if any(list(getattr(v.aval, "shape", ())).count(T) >= 2 for v in eqn.outvars):
            return True
        for value in eqn.params.values():
            for inner in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(inner, "jaxpr", inner)
                if hasattr(inner, "eqns") and _has_t_by_t(inner):
                    return True
    return False


def test_never_materialises_t_by_s_forward_or_backward():
    q, k, v = _qkv(4)
    loss = lambda fn: jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)), argnums=(0, 1, 2))
    assert not _has_t_by_t(jax.make_jaxpr(loss(_chunked))(q, k, v).jaxpr)
    assert _has_t_by_t(jax.make_jaxpr(loss(_dense))(q, k, v).jaxpr)  # the probe can fail


def test_chunk_is_ignored_where_it_does_not_apply():
    q, k, v = _qkv(5)
    # Decoding (T != S, q_offset) keeps the dense path bit for bit; bidirectional
    # self-attention is tiled too (tests/test_linear_memory.py), equal up to rounding.
    kv_seg = SEG
    one = lambda c: attention(q[:, :1], k, v, SEG[:, :1], kv_seg, causal=True, scale=0.3, chunk=c)
    np.testing.assert_array_equal(np.asarray(one(8)), np.asarray(one(0)))
    bi = lambda c: attention(q, k, v, SEG, SEG, causal=False, scale=0.3, chunk=c)
    np.testing.assert_allclose(np.asarray(bi(8)), np.asarray(bi(0)), atol=2e-6)
    with pytest.raises(ValueError, match="chunk must be >= 0"):
        attention(q, k, v, SEG, SEG, causal=True, scale=0.3, chunk=-1)
    with pytest.raises(ValueError, match="chunk must be positive"):
        chunked_causal_attention(q, k, v, SEG, SEG, scale=0.3, chunk=0)


def test_model_with_chunked_text_attention_equals_dense():
    """TextConfig.attention_chunk wires the chunked path into the decoder: same logits."""
    import dataclasses

    from o3video_jax.models.qwen2_5_vl import Qwen25VL, Qwen25VLConfig
    from o3video_jax.models.qwen2_5_vl.inputs import text_only_inputs

    cfg = Qwen25VLConfig.preset("tiny", dtype="float32")
    chunked = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, attention_chunk=8))
    ids = np.random.default_rng(0).integers(0, 400, size=(2, 40)).astype(np.int32)
    seg = np.ones_like(ids)
    seg[1, :7] = 0  # left padding
    seg[0, 25:] = 2  # a packed second example
    inputs = text_only_inputs(ids, seg)
    params = Qwen25VL(cfg).init(jax.random.key(0), inputs)["params"]
    dense = Qwen25VL(cfg).apply({"params": params}, inputs)
    blocked = Qwen25VL(chunked).apply({"params": params}, inputs)
    valid = seg > 0
    np.testing.assert_allclose(np.asarray(blocked)[valid], np.asarray(dense)[valid], atol=1e-5)
