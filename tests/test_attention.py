"""The segment-id attention primitive against a naive per-head numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o3video_jax.models.qwen2_5_vl.attention import attention, cached_attention


def naive(q, k, v, q_seg, kv_seg, causal, scale, q_offset=0):
    """Loops over rows/heads/queries; kv head of query head n is n // (N // K)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, t, n, h = q.shape
    s, kh = k.shape[1], k.shape[2]
    out = np.zeros((b, t, n, h))
    for bi in range(b):
        for ni in range(n):
            kv = ni // (n // kh)
            for ti in range(t):
                keys = [
                    si
                    for si in range(s)
                    if q_seg[bi, ti] != 0
                    and q_seg[bi, ti] == kv_seg[bi, si]
                    and (not causal or si <= q_offset + ti)
                ]
                if not keys:
                    continue
                sc = np.array([q[bi, ti, ni] @ k[bi, si, kv] for si in keys]) * scale
                p = np.exp(sc - sc.max())
                p /= p.sum()
                out[bi, ti, ni] = sum(pi * v[bi, si, kv] for pi, si in zip(p, keys, strict=True))
    return out


def _qkv(rng, b, t, s, n, kh, h):
    q = rng.normal(size=(b, t, n, h)).astype(np.float32)
    k = rng.normal(size=(b, s, kh, h)).astype(np.float32)
    v = rng.normal(size=(b, s, kh, h)).astype(np.float32)
    return q, k, v


@pytest.mark.parametrize("causal", [True, False])
def test_matches_naive_with_segments_gqa(causal):
    rng = np.random.default_rng(0)
    q, k, v = _qkv(rng, 2, 9, 9, 4, 2, 8)
    # Row 0: left padding then one example; row 1: two packed examples and right padding.
    seg = np.array([[0, 0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 2, 2, 2, 2, 0, 0]], np.int32)
    got = attention(q, k, v, seg, seg, causal=causal, scale=8**-0.5)
    want = naive(q, k, v, seg, seg, causal, 8**-0.5)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
    # Padding queries are exact zeros, not NaN.
    assert np.all(np.asarray(got)[0, :3] == 0.0)
    assert np.all(np.asarray(got)[1, 7:] == 0.0)


def dense_np(q, k, v, q_seg, kv_seg, causal, scale, q_offset=0):
    """Vectorised numpy form of `naive` (float64), for rows too long for its loops."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, t, n, h = q.shape
    s, kh = k.shape[1], k.shape[2]
    k, v = np.repeat(k, n // kh, axis=2), np.repeat(v, n // kh, axis=2)
    allowed = (q_seg[:, :, None] == kv_seg[:, None, :]) & (q_seg[:, :, None] != 0)
    if causal:
        allowed &= np.arange(s)[None, None, :] <= q_offset + np.arange(t)[None, :, None]
    scores = np.einsum("btnh,bsnh->bnts", q, k) * scale
    scores = np.where(allowed[:, None], scores, -np.inf)
    m = np.max(scores, axis=-1, keepdims=True)
    p = np.exp(scores - np.where(np.isfinite(m), m, 0.0))
    p = p / np.maximum(p.sum(-1, keepdims=True), 1e-300)
    return np.einsum("bnts,bsnh->btnh", p, v)


@pytest.mark.parametrize("causal", [True, False])
def test_both_layouts_on_long_rows_match_the_reference(attention_layout, causal):
    """T = 300 (the causal path runs in query blocks) with left padding, packing and right
    padding, under the CPU and the accelerator einsum layouts."""
    rng = np.random.default_rng(7)
    q, k, v = _qkv(rng, 2, 300, 300, 4, 2, 8)
    seg = np.zeros((2, 300), np.int32)
    seg[0, 20:] = 1
    seg[1, :130], seg[1, 130:290] = 1, 2
    got = np.asarray(attention(q, k, v, seg, seg, causal=causal, scale=0.3))
    np.testing.assert_allclose(got, dense_np(q, k, v, seg, seg, causal, 0.3), atol=2e-5)
    assert np.all(got[0, :20] == 0.0) and np.all(got[1, 290:] == 0.0)


def test_both_layouts_of_cached_prefill_match_the_reference(attention_layout):
    """A multi-token step against a heads-major KV cache (prefill / chunked prompt)."""
    rng = np.random.default_rng(8)
    b, t, s, n, kh, h, offset = 2, 5, 12, 4, 2, 8, 6
    q, k, v = _qkv(rng, b, t, s, n, kh, h)
    kv_seg = np.array([[0] * 3 + [1] * 8 + [0], [1] * 11 + [0]], np.int32)
    q_seg = np.ones((b, t), np.int32)
    kc, vc = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    got = cached_attention(q, kc, vc, q_seg, kv_seg, scale=0.3, q_offset=offset)
    want = dense_np(q, k, v, q_seg, kv_seg, True, 0.3, q_offset=offset)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)


def test_gqa_is_repeat_interleave():
    rng = np.random.default_rng(1)
    q, k, v = _qkv(rng, 1, 5, 5, 6, 2, 4)
    seg = np.ones((1, 5), np.int32)
    got = np.asarray(attention(q, k, v, seg, seg, causal=True, scale=0.5))
    # Same result as full MHA with kv heads repeated (not tiled): heads 0,1,2 use kv head 0.
    rep = lambda a: np.repeat(a, 3, axis=2)
    mha = np.asarray(attention(q, rep(k), rep(v), seg, seg, causal=True, scale=0.5))
    np.testing.assert_allclose(got, mha, atol=1e-6)
    tiled = np.asarray(
        attention(
            q, np.tile(k, (1, 1, 3, 1)), np.tile(v, (1, 1, 3, 1)), seg, seg, causal=True, scale=0.5
        )
    )
    assert np.abs(got - tiled).max() > 1e-3


def test_packed_equals_separate_rows():
    rng = np.random.default_rng(2)
    q, k, v = _qkv(rng, 1, 10, 10, 2, 1, 8)
    packed_seg = np.array([[1] * 4 + [2] * 6], np.int32)
    packed = np.asarray(attention(q, k, v, packed_seg, packed_seg, causal=True, scale=0.3))
    for lo, hi in [(0, 4), (4, 10)]:
        one = np.ones((1, hi - lo), np.int32)
        sep = attention(q[:, lo:hi], k[:, lo:hi], v[:, lo:hi], one, one, causal=True, scale=0.3)
        np.testing.assert_allclose(packed[:, lo:hi], np.asarray(sep), atol=1e-6)


def test_left_padding_does_not_change_real_positions():
    rng = np.random.default_rng(3)
    q, k, v = _qkv(rng, 1, 6, 6, 2, 2, 8)
    one = np.ones((1, 6), np.int32)
    ref = np.asarray(attention(q, k, v, one, one, causal=True, scale=0.3))
    pad = lambda a: np.concatenate([rng.normal(size=(1, 3) + a.shape[2:]).astype(np.float32), a], 1)
    seg = np.array([[0, 0, 0] + [1] * 6], np.int32)
    got = np.asarray(attention(pad(q), pad(k), pad(v), seg, seg, causal=True, scale=0.3))
    np.testing.assert_allclose(got[:, 3:], ref, atol=1e-6)
    assert np.all(got[:, :3] == 0.0)


def test_cache_offset_and_all_masked_rows():
    rng = np.random.default_rng(4)
    q, k, v = _qkv(rng, 2, 1, 8, 4, 2, 8)
    # A decode query at slot 5: slots 6, 7 hold garbage but are unwritten (segment 0).
    kv_seg = np.array([[0, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0]], np.int32)
    q_seg = np.array([[1], [0]], np.int32)  # row 1: a padding query -> zeros
    got = attention(q, k, v, q_seg, kv_seg, causal=True, scale=0.3, q_offset=5)
    want = naive(q, k, v, q_seg, kv_seg, True, 0.3, q_offset=5)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
    assert np.all(np.asarray(got)[1] == 0.0)
    # Traced offset under jit gives the same answer; so does a causal cut at slot 3.
    f = jax.jit(lambda off: attention(q, k, v, q_seg, kv_seg, causal=True, scale=0.3, q_offset=off))
    np.testing.assert_allclose(np.asarray(f(jnp.int32(5))), want, atol=1e-5)
    want3 = naive(q, k, v, q_seg, kv_seg, True, 0.3, q_offset=3)
    np.testing.assert_allclose(np.asarray(f(jnp.int32(3))), want3, atol=1e-5)


def test_fully_masked_rows_have_zero_gradient_not_nan():
    rng = np.random.default_rng(5)
    q, k, v = _qkv(rng, 1, 4, 4, 2, 1, 4)
    seg = np.array([[0, 0, 1, 1]], np.int32)
    g = jax.grad(lambda q: attention(q, k, v, seg, seg, causal=True, scale=0.5).sum())(q)
    assert np.all(np.isfinite(np.asarray(g)))
    assert np.all(np.asarray(g)[0, :2] == 0.0)


def test_bad_shapes_and_backends_raise():
    rng = np.random.default_rng(6)
    q, k, v = _qkv(rng, 1, 4, 4, 3, 2, 4)
    seg = np.ones((1, 4), np.int32)
    with pytest.raises(ValueError, match="not a multiple"):
        attention(q, k, v, seg, seg, causal=True, scale=1.0)
    q, k, v = _qkv(rng, 1, 4, 4, 2, 2, 4)
    with pytest.raises(ValueError, match="segment ids"):
        attention(q, k, v, seg[:, :3], seg, causal=True, scale=1.0)
    with pytest.raises(ValueError, match="flash"):
        attention(q, k, v, seg, seg, causal=True, scale=1.0, backend="flash")
    if jax.default_backend() == "cpu":
        with pytest.raises(ValueError, match="'cudnn' needs an NVIDIA GPU.*'cpu'"):
            attention(q, k, v, seg, seg, causal=True, scale=1.0, backend="cudnn")
        with pytest.raises(ValueError, match="'pallas' needs a TPU.*'cpu'"):
            attention(q, k, v, seg, seg, causal=True, scale=1.0, backend="pallas")


@pytest.mark.parametrize("causal", [True, False])
def test_pallas_splash_interpret_matches_xla(causal):
    """The TPU splash kernel, run by the Pallas interpreter on CPU (lengths/head dim padded)."""
    rng = np.random.default_rng(7)
    q, k, v = _qkv(rng, 1, 40, 40, 4, 2, 16)
    seg = np.array([[0] * 5 + [1] * 20 + [2] * 12 + [0] * 3], np.int32)
    ref = attention(q, k, v, seg, seg, causal=causal, scale=0.25)
    got = attention(q, k, v, seg, seg, causal=causal, scale=0.25, backend="pallas", interpret=True)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=2e-5)
