"""Memory linear in patches and tokens (docs/design.md decision 16): the tiled attention
(flash_attention.py `blocked_attention`) against the dense XLA path, its use in the vision
tower's frame blocks and in a chunked prefill, and the compiled temporaries' growth on CPU."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from o3video_jax.data.model_inputs import Segment, VisionItem, build_model_inputs
from o3video_jax.evaluate import generate
from o3video_jax.models.qwen2_5_vl import Qwen25VL, Qwen25VLConfig, vision
from o3video_jax.models.qwen2_5_vl.attention import attention
from o3video_jax.models.qwen2_5_vl.flash_attention import blocked_attention
from o3video_jax.models.qwen2_5_vl.inputs import text_only_inputs

ATOL = 2e-6  # float32: only the summation order differs from the dense softmax


def _segments(rng, b: int, t: int) -> np.ndarray:
    """Rows of runs of random length (padding at both ends), one id split in two runs."""
    seg = np.zeros((b, t), np.int32)
    for r in range(b):
        i, sid = int(rng.integers(0, 9)), 1
        while i < t - 5:
            n = int(rng.integers(1, 90))
            seg[r, i : i + n] = sid
            i, sid = i + n, sid + 1
    seg[0, t // 2 : t // 2 + 7] = 1  # segment 1 again, far from its first run
    return seg


def _qkv(seed, b, t, n, kh, h, dtype=np.float32):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, t, n, h)).astype(dtype)
    k = rng.normal(size=(b, t, kh, h)).astype(dtype)
    v = rng.normal(size=(b, t, kh, h)).astype(dtype)
    return q, k, v, _segments(rng, b, t)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("t,block,n,kh", [(301, 64, 4, 2), (200, 512, 2, 2), (257, 32, 6, 1)])
def test_blocked_equals_dense_forward_and_gradients(causal, t, block, n, kh):
    q, k, v, seg = _qkv(t + block, 2, t, n, kh, 8)
    dense = lambda q, k, v: attention(q, k, v, seg, seg, causal=causal, scale=0.3)
    tiled = lambda q, k, v: blocked_attention(
        q, k, v, seg, seg, causal=causal, scale=0.3, block=block
    )
    np.testing.assert_allclose(jax.jit(tiled)(q, k, v), jax.jit(dense)(q, k, v), atol=ATOL)
    w = np.random.default_rng(1).normal(size=q.shape).astype(np.float32)
    grads = lambda f: jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) * w), argnums=(0, 1, 2)))
    for got, want in zip(grads(tiled)(q, k, v), grads(dense)(q, k, v), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    # Padding queries (segment 0) return exact zeros, as the dense path.
    assert not np.any(np.asarray(jax.jit(tiled)(q, k, v))[seg == 0])


def test_attention_chunk_routes_both_masks_to_the_tiles():
    q, k, v, seg = _qkv(3, 2, 300, 4, 2, 8)
    for causal in (False, True):
        got = attention(q, k, v, seg, seg, causal=causal, scale=0.3, chunk=64)
        want = blocked_attention(q, k, v, seg, seg, causal=causal, scale=0.3, block=64)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


# ---- the vision tower -----------------------------------------------------------------------
TINY = Qwen25VLConfig.preset("tiny")  # depth 2: block 0 windows, block 1 frames


def _frames_batch(config, grid=(3, 12, 20), rows=2, max_patches=1024):
    """Rows of one 3-frame video of 12 x 20 patches (240 a frame): 720 of 1024 patches."""
    rs = np.random.RandomState(0)
    n = int(np.prod(grid))
    ids = [config.vision_start_token_id, *[config.video_token_id] * (n // 4)]
    ids += [config.vision_end_token_id, 5, 6]
    seg = Segment(
        np.asarray(ids, np.int32), [VisionItem(rs.randn(n, 1176).astype(np.float32), grid, "video")]
    )
    return build_model_inputs(
        [[seg]] * rows, config, max_seq_len=len(ids) + 4, max_patches=max_patches
    )


def test_frame_blocks_tiled_equal_dense(monkeypatch):
    """A bucket over FRAME_BLOCK with no frame bound takes the tiles; same features as dense."""
    inputs = _frames_batch(TINY)
    assert vision.frame_attention_path(1024, TINY.vision) == "blocked"
    model = Qwen25VL(TINY)
    params = model.init(jax.random.key(0), inputs)["params"]
    feats = lambda: np.asarray(
        jax.jit(lambda p: model.apply({"params": p}, inputs, method=model.vision_features))(params)
    )
    tiled = feats()
    monkeypatch.setattr(vision, "FRAME_BLOCK", 10**9)  # the dense reference
    assert vision.frame_attention_path(1024, TINY.vision) == "dense"
    np.testing.assert_allclose(tiled, feats(), atol=1e-5)


def test_frame_path_choice():
    v = TINY.vision  # attention_chunk 128: band = 128 + 2 (Smax - 1), rounded up to 8
    bounded = lambda s: dataclasses.replace(v, max_frame_patches=s)
    assert vision.frame_attention_path(4096, bounded(256)) == "local"  # band 640 <= 1024
    assert vision.frame_attention_path(4096, bounded(1196)) == "blocked"  # band 2520
    assert vision.frame_attention_path(4096, v) == "blocked"  # no bound
    assert vision.frame_attention_path(512, v) == "dense"  # short rows


# ---- the eval model config ------------------------------------------------------------------
def test_eval_model_config_bounds_frames_and_blocks_prefill():
    ev = ml_collections.ConfigDict(
        {"image_max_pixels": 16384 * 28 * 28, "video_max_pixels": 512 * 512, "prefill_block": 512}
    )
    mc = generate.eval_model_config(TINY, ev)
    # 16384 * 784 px / (14 * 14) px a patch = 65,536 patches; 512 * 512 / 196 = 1,337.5 -> 1,336.
    assert mc.vision.max_frame_patches == 65536
    assert mc.text.attention_chunk == 512
    ev.image_max_pixels = 56 * 56
    assert generate.eval_model_config(TINY, ev).vision.max_frame_patches == 1336


def test_check_budget_rejects_a_frame_over_the_bound():
    item = VisionItem(np.zeros((2 * 6 * 8, 1176), np.float32), (2, 6, 8), "video")
    seg = Segment(np.zeros(20, np.int32), [item])
    assert generate.frame_patches(seg) == 48
    generate.check_budget(seg, [64], 1024, max_frame_patches=48)
    with pytest.raises(generate.OverBudget, match="48 patches exceeds .* 44"):
        generate.check_budget(seg, [64], 1024, max_frame_patches=44)


# ---- compiled memory on CPU -----------------------------------------------------------------
def _temp_bytes(fn, *args) -> int:
    return jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes


def _frame_attention_temp(p: int, tiled: bool) -> int:
    """Temporaries of one frame block's attention over a bucket of P patches (2 heads of 16, as
    the tiny tower), frames of 1,196 patches (a 640x360 V-STaR frame)."""
    n, h = 2, 16
    q = jax.ShapeDtypeStruct((1, p, n, h), jnp.float32)
    seg = jax.ShapeDtypeStruct((1, p), jnp.int32)
    if tiled:
        fn = lambda q, k, v, s: blocked_attention(
            q, k, v, s, s, causal=False, scale=0.25, block=vision.FRAME_BLOCK
        )
    else:
        fn = lambda q, k, v, s: attention(q, k, v, s, s, causal=False, scale=0.25)
    return _temp_bytes(fn, q, q, q, seg)


def test_frame_attention_memory_is_linear_in_the_bucket():
    sizes = (4096, 8192, 16384)
    tiled = [_frame_attention_temp(p, True) for p in sizes]
    # Hand bound: a few [P, N, H] float32 copies (q, k, v, out in tiles, their padding and
    # transposes: 16 of them) + per-position ints (segment ranges: 16 x 4 B) + a handful of
    # [N, C, C] float32 tiles (8); nothing grows with P^2.
    n, h, c = 2, 16, vision.FRAME_BLOCK
    for p, got in zip(sizes, tiled, strict=True):
        assert got <= 16 * p * n * h * 4 + 16 * 4 * p + 8 * n * c * c * 4, (p, got)
    # Linear a + b P: the increment of the next doubling is twice the last (quadratic: 4x).
    assert tiled[2] - tiled[1] <= 2.1 * (tiled[1] - tiled[0]) + 1024, tiled
    # The probe can fail: the dense path's float32[N, P, P] scores alone are 2 x 16384^2 x 4 B.
    dense = _frame_attention_temp(16384, False)
    assert dense >= 2 * 16384**2 * 4 and dense > 50 * tiled[2], (dense, tiled)


def test_chunked_prefill_memory_is_linear_in_the_prompt():
    """A tiny text-only forward (4 heads) with text.attention_chunk 512: no [T, T] scores."""
    cfg = dataclasses.replace(TINY, text=dataclasses.replace(TINY.text, attention_chunk=512))
    model = Qwen25VL(cfg)
    ids = np.zeros((1, 256), np.int32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), text_only_inputs(ids, ids + 1)))

    def temp(t, c):
        text = dataclasses.replace(cfg.text, attention_chunk=c)
        model = Qwen25VL(dataclasses.replace(cfg, text=text))
        ids = np.zeros((1, t), np.int32)
        return _temp_bytes(lambda p, x: model.apply(p, x), params, text_only_inputs(ids, ids + 1))

    sizes = (2048, 4096, 8192)
    tiled = [temp(t, 512) for t in sizes]
    assert tiled[2] - tiled[1] <= 2.1 * (tiled[1] - tiled[0]) + 1024, tiled
    # The dense causal path (4 query blocks) keeps 5/8 of float32[N, T, T] = 4 x 8192^2 x 4 B.
    dense = temp(8192, 0)
    assert dense >= 5 / 8 * 4 * 8192**2 * 4 and dense > 10 * tiled[2], (dense, tiled)
