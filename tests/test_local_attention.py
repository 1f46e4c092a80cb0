"""Blocked local segment attention (vision tower) against the dense XLA reference path."""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o3video_jax.checkpoints import hf
from o3video_jax.models.qwen2_5_vl import Qwen25VL, VisionConfig, inputs_from_hf, local_attention
from o3video_jax.models.qwen2_5_vl.attention import attention
from o3video_jax.models.qwen2_5_vl.local_attention import (
    band_width,
    check_local_segments,
    local_segment_attention,
    uses_local_path,
    within_blocks,
)

GOLDEN = pathlib.Path(__file__).parent / "fixtures" / "golden"


def _layout(rng, p: int, smax: int, tail: int) -> np.ndarray:
    """Contiguous segments of random length 1..smax (ids 1, 2, ...), `tail` padding at the end."""
    seg = np.zeros(p, np.int32)
    i, sid = 0, 1
    while i < p - tail:
        n = min(int(rng.integers(1, smax + 1)), p - tail - i)
        seg[i : i + n] = sid
        i, sid = i + n, sid + 1
    return seg


def _case(seed, b, p, n, kh, h, smax):
    rng = np.random.default_rng(seed)
    seg = np.stack([_layout(rng, p, smax, tail=int(rng.integers(1, 2 * smax))) for _ in range(b)])
    q = rng.normal(size=(b, p, n, h)).astype(np.float32)
    k = rng.normal(size=(b, p, kh, h)).astype(np.float32)
    v = rng.normal(size=(b, p, kh, h)).astype(np.float32)
    return q, k, v, seg


@functools.partial(jax.jit, static_argnames="scale")
def _dense(q, k, v, seg, scale):
    return attention(q, k, v, seg, seg, causal=False, scale=scale, backend="xla")


# Jitted: one compile per shape instead of op-by-op dispatch (the machine is shared).
_local = jax.jit(local_segment_attention, static_argnames=("max_segment_len", "scale", "chunk"))


# P not a multiple of C; GQA and MHA; bands of one and of several C-blocks.
@pytest.mark.parametrize(
    "seed,p,chunk,smax,n,kh",
    [(0, 203, 16, 13, 4, 2), (1, 300, 32, 64, 2, 2), (2, 130, 8, 5, 3, 1)],
)
def test_blocked_equals_dense_on_random_layouts(seed, p, chunk, smax, n, kh):
    q, k, v, seg = _case(seed, 2, p, n, kh, 8, smax)
    assert uses_local_path(p, chunk, smax)
    got = np.asarray(_local(q, k, v, seg, max_segment_len=smax, scale=0.35, chunk=chunk))
    want = np.asarray(_dense(q, k, v, seg, 0.35))
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert np.all(got[seg == 0] == 0.0)  # padding queries: exact zeros


def _aligned_layout(rng, p: int, block: int, tail: int) -> np.ndarray:
    """Segments that never cross a multiple of `block` (1-3 runs per block), `tail` padding."""
    seg = np.zeros(p, np.int32)
    sid = 1
    for start in range(0, p - tail, block):
        end = min(start + block, p - tail)
        cuts = sorted({int(c) for c in rng.integers(start + 1, end + 1, size=2)} - {end})
        for lo, hi in zip([start, *cuts], [*cuts, end], strict=True):
            seg[lo:hi], sid = sid, sid + 1
    return seg


def _poisoned(tiles):
    """A tile builder with the real shapes whose queries are NaN: any use shows in the output."""

    def build(*args, **kwargs):
        qc, *rest = tiles(*args, **kwargs)
        return (jnp.full_like(qc, jnp.nan), *rest)

    return build


def _fresh_local(**static):  # a new trace (module patches apply), not `_local`'s cache
    return jax.jit(lambda q, k, v, seg: local_segment_attention(q, k, v, seg, **static))


def test_within_blocks_hand_cases():
    rows = {
        (1, 1, 1, 1, 2, 2, 0, 0): True,  # one segment per block, padding
        (1, 1, 2, 2, 3, 0, 0, 0): True,  # two segments in block 0
        (1, 1, 1, 2, 2, 2, 2, 0): False,  # segment 2 spans positions 3-6: crosses 4
        (1, 1, 1, 0, 0, 0, 0, 0): True,  # padding may run across a block boundary
        (0, 0, 0, 0, 0, 0, 0, 0): True,
    }
    for row, want in rows.items():
        assert bool(within_blocks(jnp.asarray([row], jnp.int32), 4)) is want, row
    both = jnp.asarray([(1, 1, 1, 1, 2, 2, 0, 0), (1, 1, 1, 2, 2, 2, 2, 0)], jnp.int32)
    assert not bool(within_blocks(both, 4))  # one crossing row sends the batch to the bands


# Aligned layouts (every full-frame block of a single video; every window of a frame whose
# side is a multiple of the window) take the block path: Smax x Smax tiles, no band.
@pytest.mark.parametrize(
    "seed,p,chunk,smax,n,kh",
    [(10, 203, 16, 13, 4, 2), (11, 300, 32, 64, 2, 2), (12, 512, 128, 64, 4, 4)],
)
def test_aligned_segments_take_the_block_path_and_equal_dense(
    monkeypatch, seed, p, chunk, smax, n, kh
):
    rng = np.random.default_rng(seed)
    seg = np.stack(
        [_aligned_layout(rng, p, smax, tail=int(rng.integers(1, 2 * smax))) for _ in range(2)]
    )
    q, k, v = (rng.normal(size=(2, p, h, 8)).astype(np.float32) for h in (n, kh, kh))
    assert uses_local_path(p, chunk, smax) and bool(within_blocks(jnp.asarray(seg), smax))
    monkeypatch.setattr(local_attention, "_band_tiles", _poisoned(local_attention._band_tiles))
    got = np.asarray(_fresh_local(max_segment_len=smax, scale=0.35, chunk=chunk)(q, k, v, seg))
    np.testing.assert_allclose(got, np.asarray(_dense(q, k, v, seg, 0.35)), atol=1e-6, rtol=0)
    assert np.all(got[seg == 0] == 0.0)


def test_unaligned_segments_take_the_band_path(monkeypatch):
    q, k, v, seg = _case(13, 2, 203, 4, 2, 8, 13)
    assert not bool(within_blocks(jnp.asarray(seg), 13))
    monkeypatch.setattr(local_attention, "_block_tiles", _poisoned(local_attention._block_tiles))
    got = np.asarray(_fresh_local(max_segment_len=13, scale=0.35, chunk=16)(q, k, v, seg))
    np.testing.assert_allclose(got, np.asarray(_dense(q, k, v, seg, 0.35)), atol=1e-6, rtol=0)


def test_block_path_gradients_equal_dense_and_split_segments_give_nan():
    rng = np.random.default_rng(14)
    seg = np.stack([_aligned_layout(rng, 96, 16, tail=5)])
    q, k, v = (rng.normal(size=(1, 96, 2, 8)).astype(np.float32) for _ in range(3))
    w = rng.normal(size=q.shape).astype(np.float32)
    local = lambda q, k, v: local_segment_attention(
        q, k, v, seg, max_segment_len=16, scale=0.3, chunk=16
    )
    grad = lambda fn: jax.jit(jax.grad(lambda *x: jnp.sum(fn(*x) * w), argnums=(0, 1, 2)))
    for got, want in zip(
        grad(local)(q, k, v), grad(lambda *x: _dense(*x, seg, 0.3))(q, k, v), strict=True
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=0)
    split = seg.copy()
    split[0, 48:50] = seg[0, 0]  # segment 1 split over blocks 0 and 3: aligned, not contiguous
    assert bool(within_blocks(jnp.asarray(split), 16))
    got = np.asarray(_local(q, k, v, split, max_segment_len=16, scale=0.3, chunk=16))
    bad = np.isnan(got).any(axis=(2, 3))[0]
    np.testing.assert_array_equal(bad, split[0] == seg[0, 0])


def test_token_major_bands_equal_dense(attention_layout):
    """The band path in both einsum layouts (accelerators use the token-major one)."""
    q, k, v, seg = _case(15, 2, 203, 4, 2, 8, 13)
    got = np.asarray(_fresh_local(max_segment_len=13, scale=0.35, chunk=16)(q, k, v, seg))
    np.testing.assert_allclose(got, np.asarray(_dense(q, k, v, seg, 0.35)), atol=1e-6, rtol=0)
    assert np.all(got[seg == 0] == 0.0)


def test_segments_of_exactly_smax_straddling_chunks():
    # Every segment has the maximal length and starts off the chunk grid: the band edges bite.
    rng = np.random.default_rng(3)
    p, smax, chunk = 150, 7, 16
    seg = np.zeros((1, p), np.int32)
    seg[0, 3 : 3 + 20 * smax] = np.repeat(np.arange(1, 21), smax)
    q, k, v = (rng.normal(size=(1, p, 2, 4)).astype(np.float32) for _ in range(3))
    got = _local(q, k, v, seg, max_segment_len=smax, scale=0.5, chunk=chunk)
    np.testing.assert_allclose(np.asarray(got), np.asarray(_dense(q, k, v, seg, 0.5)), atol=1e-6)


def test_gradients_equal_dense():
    q, k, v, seg = _case(4, 2, 203, 4, 2, 8, 13)
    w = np.random.default_rng(5).normal(size=q.shape).astype(np.float32)

    def loss(fn):
        return jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * w), argnums=(0, 1, 2)))

    blocked = loss(
        lambda q, k, v: local_segment_attention(
            q, k, v, seg, max_segment_len=13, scale=0.3, chunk=16
        )
    )(q, k, v)
    dense = loss(lambda q, k, v: _dense(q, k, v, seg, 0.3))(q, k, v)
    for got, want in zip(blocked, dense, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6, rtol=0)


def test_never_materialises_p_by_p():
    q, k, v, seg = _case(6, 1, 203, 2, 2, 8, 13)
    fn = lambda q, k, v: local_segment_attention(
        q, k, v, seg, max_segment_len=13, scale=1.0, chunk=16
    )
    assert _max_square(jax.make_jaxpr(fn)(q, k, v).jaxpr, 203) == 0
    dense = lambda q, k, v: _dense(q, k, v, seg, 1.0)
    assert _max_square(jax.make_jaxpr(dense)(q, k, v).jaxpr, 203) > 0  # the probe can fail


def test_violated_bound_returns_nan_rows_not_wrong_values():
    q, k, v, seg = _case(7, 1, 203, 2, 2, 8, 13)
    long_seg = seg.copy()
    long_seg[0, 40:80] = 999  # 40 patches > bound 13 (and an id above P)
    got = np.asarray(_local(q, k, v, long_seg, max_segment_len=13, scale=0.3, chunk=16))
    bad = np.isnan(got).any(axis=(2, 3))[0]
    assert bad[40:80].all() and not bad[np.r_[0:40, 80:203]].any()
    split = seg.copy()
    split[0, 150:152] = seg[0, 0]  # segment 1 split into two runs far apart
    got = np.asarray(_local(q, k, v, split, max_segment_len=13, scale=0.3, chunk=16))
    bad = np.isnan(got).any(axis=(2, 3))[0]
    assert bad[split[0] == seg[0, 0]].all() and bad.sum() == (split[0] == seg[0, 0]).sum()
    with pytest.raises(ValueError, match="not contiguous"):
        check_local_segments(split, 13)
    with pytest.raises(ValueError, match="40 patches > max_segment_len 13"):
        check_local_segments(long_seg, 13)
    check_local_segments(seg, 13)


def test_short_rows_and_unknown_bounds_use_the_dense_path():
    assert band_width(128, 64) == 256 and band_width(16, 140) == 296
    assert not uses_local_path(256, 128, 64) and uses_local_path(257, 128, 64)
    assert not uses_local_path(10_000, 128, 0) and not uses_local_path(10_000, 0, 64)
    q, k, v, seg = _case(8, 1, 100, 2, 1, 4, 40)
    got = _local(q, k, v, seg, max_segment_len=40, scale=0.3, chunk=32)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(_dense(q, k, v, seg, 0.3)))


def test_config_fields_validate_and_stay_out_of_hf_json():
    with pytest.raises(ValueError, match="max_frame_patches"):
        VisionConfig(max_frame_patches=-1)
    with pytest.raises(ValueError, match="attention_chunk"):
        VisionConfig(attention_chunk=-8)
    assert VisionConfig().max_window_patches == 64
    config, _ = hf.load(GOLDEN / "models" / "untied", progress=False)
    custom = config.replace(vision=dataclasses.replace(config.vision, max_frame_patches=140))
    assert custom.to_hf_dict() == config.to_hf_dict()


# ---- the whole model on the HF golden fixtures, with every vision block blocked --------------
def _max_square(jaxpr, p: int) -> int:
    """Largest size of an intermediate with two axes of length p (a P x P tensor), searched
    through nested jaxprs (pjit, custom_jvp, remat, scan, cond branches)."""
    best = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            shape = list(getattr(var.aval, "shape", ()))
            if shape.count(p) >= 2:
                best = max(best, int(np.prod(shape)))
        for value in eqn.params.values():
            for inner in value if isinstance(value, (list, tuple)) else [value]:
                inner = getattr(inner, "jaxpr", inner)  # ClosedJaxpr -> Jaxpr
                if hasattr(inner, "eqns"):
                    best = max(best, _max_square(inner, p))
    return best


def test_golden_logits_with_blocked_vision_attention():
    """window_edges (edge windows, a 10x14 image frame, 4x10 video frames) and
    video_fractional, padded to P = 320 so that chunk 16 blocks both block kinds."""
    config, params = hf.load(GOLDEN / "models" / "untied", progress=False)
    vision = dataclasses.replace(config.vision, attention_chunk=16, max_frame_patches=140)
    config = config.replace(vision=vision)
    max_patches = 320
    assert uses_local_path(max_patches, 16, vision.max_window_patches)
    assert uses_local_path(max_patches, 16, vision.max_frame_patches)
    forward = jax.jit(Qwen25VL(config).apply)
    for name in ("window_edges", "video_fractional"):
        meta = json.loads((GOLDEN / name / "meta.json").read_text())
        arrays = dict(np.load(GOLDEN / name / "inputs.npz"))
        want = np.load(GOLDEN / name / "logits.npz")["logits"][arrays["attention_mask"] == 1]
        inputs = inputs_from_hf(
            config, **arrays, rule=meta["rule"], max_seq_len=64, max_patches=max_patches
        )
        check_local_segments(inputs.window_segment_ids, vision.max_window_patches)
        check_local_segments(inputs.frame_segment_ids, vision.max_frame_patches)
        got = np.asarray(forward({"params": params}, inputs))[inputs.segment_ids != 0]
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    jaxpr = jax.make_jaxpr(Qwen25VL(config).apply)({"params": params}, inputs).jaxpr
    assert _max_square(jaxpr, max_patches) == 0
