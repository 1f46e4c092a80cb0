"""Group sampler: parity with transformers' greedy `generate`, group == separate runs,
decode == training forward, top-k / EOS handling, prompt buckets without recompilation."""

from __future__ import annotations

import functools
import importlib.util
import pathlib

import flax.linen as nn
import jax
import numpy as np
import pytest

from o3video_jax.data.model_inputs import Segment, VisionItem, build_model_inputs
from o3video_jax.models.qwen2_5_vl import Qwen25VL, Qwen25VLConfig
from o3video_jax.models.qwen2_5_vl.inputs import PATCH_DIM
from o3video_jax.rl import sampler as sampler_lib
from o3video_jax.rl.sampler import SamplingConfig, completion_inputs, make_sampler
from o3video_jax.train.sharding import make_mesh

CFG = Qwen25VLConfig.preset("tiny")
PAD, EOS = CFG.pad_token_id, CFG.eos_token_id
T = 6


def _prompt_rows(seed: int, texts=((3, 4), (1, 2))):
    """Chat-like prompts: text, one 4x4-patch image (4 merged tokens), text (ends in text)."""
    rng = np.random.default_rng(seed)
    rows = []
    for before, after in texts:
        ids = np.concatenate(
            [
                rng.integers(0, 480, before),
                [CFG.vision_start_token_id],
                [CFG.image_token_id] * 4,
                [CFG.vision_end_token_id],
                rng.integers(0, 480, after),
            ]
        )
        pixels = rng.normal(size=(16, PATCH_DIM)).astype(np.float32)
        rows.append([Segment(ids, [VisionItem(pixels, (1, 4, 4))])])
    return rows


def _prompts(seed: int = 0, length: int = 14, texts=((3, 4), (1, 2))):
    rows = _prompt_rows(seed, texts)
    return build_model_inputs(rows, CFG, max_seq_len=length, max_patches=16, pad_side="left")


@functools.cache
def _params():
    """Random weights drawn on the host (no init compile) with O(1) activations."""
    shapes = jax.eval_shape(lambda x: Qwen25VL(CFG).init(jax.random.key(0), x), _prompts())
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        noise = rng.normal(size=leaf.shape).astype(np.float32)
        if "bias" in name:
            return 0.1 * noise
        if "scale" in name:
            return 1.0 + 0.1 * noise
        if "embedding" in name:
            return 0.5 * noise
        return noise / np.sqrt(leaf.shape[0])

    return jax.tree_util.tree_map_with_path(draw, nn.unbox(shapes["params"]))


@functools.cache
def _sampler(**kw):
    cfg = SamplingConfig(**{"max_new_tokens": T, "pad_id": PAD, **kw})
    return make_sampler(Qwen25VL(CFG), cfg)


def _keys(n: int, seed: int = 1):
    """n raw PRNG keys uint32[n, 2] (made on the host: no compile per call)."""
    return np.random.default_rng(seed).integers(0, 2**32, (n, 2), dtype=np.uint32)


# ---- 1. parity with transformers ------------------------------------------------------------
def _golden_module():
    path = pathlib.Path(__file__).parent / "fixtures" / "make_hf_golden.py"
    spec = importlib.util.spec_from_file_location("make_hf_golden", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_greedy_matches_hf_generate(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from o3video_jax.checkpoints import hf
    from o3video_jax.models.qwen2_5_vl.hf_inputs import inputs_from_hf

    golden = _golden_module()
    model = golden.build_model(tied=False, seed=0)
    # Two left-padded prompts of different lengths, each ending in text.
    hf_inputs = golden.make_inputs(
        [
            [("text", 2), ("image", (1, 4, 4)), ("text", 6)],
            [("text", 1), ("image", (1, 4, 6)), ("text", 2)],
        ],
        seed=1,
    )
    new_tokens = 8
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # spinning OpenMP threads make tiny models slow on a busy CPU
    try:
        with torch.no_grad():
            want = model.generate(
                **{k: torch.from_numpy(v) for k, v in hf_inputs.items()},
                do_sample=False,
                max_new_tokens=new_tokens,
                eos_token_id=EOS,
                pad_token_id=PAD,
            )
    finally:
        torch.set_num_threads(threads)
    want = want[:, hf_inputs["input_ids"].shape[1] :].numpy()

    model.save_pretrained(tmp_path)
    config, params = hf.load(tmp_path, progress=False)
    prompts = inputs_from_hf(config, **hf_inputs, rule="hf")
    cfg = SamplingConfig(max_new_tokens=new_tokens, temperature=0.0, eos_ids=(EOS,), pad_id=PAD)
    out = make_sampler(Qwen25VL(config), cfg)(params, prompts, _keys(2))
    np.testing.assert_array_equal(np.asarray(out.tokens)[:, : want.shape[1]], want)


# ---- 2. a group equals separate runs ----------------------------------------------------------
G = 4
GROUP_KW = dict(temperature=1.0, top_p=0.9, group_size=G)


@functools.cache
def _grouped():
    """B = 2 prompts, G = 4 samples each, unsharded."""
    return _sampler(**GROUP_KW)(_params(), _prompts(seed=2), _keys(2 * G, seed=3))


def test_group_equals_separate_runs():
    g = G
    prompts = _prompts(seed=2)
    keys = _keys(2 * g, seed=3)
    kw = dict(temperature=1.0, top_p=0.9)
    grouped = _grouped()
    # The reference way: every sample has its own copy of the prompt (pixels repeated).
    repeated = sampler_lib.repeat_rows(prompts, g)
    separate = _sampler(group_size=1, **kw)(_params(), repeated, keys)
    np.testing.assert_array_equal(grouped.tokens, separate.tokens)
    np.testing.assert_allclose(grouped.logps, separate.logps, atol=1e-5)
    np.testing.assert_array_equal(grouped.next_pos, separate.next_pos)
    # Different keys give different samples (the test could not pass with ignored keys).
    assert len({tuple(r) for r in np.asarray(grouped.tokens)[:g]}) > 1


def test_sharded_equals_unsharded():
    mesh = make_mesh({"data": 2, "fsdp": 1, "tensor": 1}, jax.devices()[:2])
    cfg = SamplingConfig(max_new_tokens=T, pad_id=PAD, **GROUP_KW)
    sample = make_sampler(Qwen25VL(CFG), cfg, mesh=mesh)
    out = sample(_params(), _prompts(seed=2), _keys(2 * G, seed=3))
    assert out.tokens.sharding.spec[0] in (("data", "fsdp"), "data")  # rows really are split
    want = _grouped()
    np.testing.assert_array_equal(out.tokens, want.tokens)
    np.testing.assert_allclose(out.logps, want.logps, atol=1e-5)
    np.testing.assert_array_equal(out.lengths, want.lengths)


# ---- 3. decode == training forward --------------------------------------------------------------
@functools.cache
def _forward():
    return jax.jit(Qwen25VL(CFG).apply)


def _training_logps(prompts, out):
    """Log-probs of the completion tokens recomputed by one full forward of prompt+completion:
    float32[N, T] (0 outside the completion) and the forward's arg-max tokens int32[N, T]."""
    inputs, mask = completion_inputs(prompts, out, group_size=out.tokens.shape[0] // 2)
    logits = np.asarray(_forward()({"params": _params()}, inputs), np.float64)
    length = prompts.seq_len
    logits = logits[:, length - 1 : -1]  # position p - 1 predicts the token at p
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    tokens = np.asarray(out.tokens)
    picked = np.take_along_axis(logits, tokens[:, :, None], axis=-1)[..., 0] - logz
    mask = np.asarray(mask)
    np.testing.assert_array_equal(mask[:, :length], 0)
    np.testing.assert_array_equal(mask.sum(1), out.lengths)
    return np.where(mask[:, length:] > 0, picked, 0.0), np.argmax(logits, -1)


def test_greedy_logps_match_training_forward():
    prompts = _prompts(seed=4)
    out = _sampler(temperature=0.0, eos_ids=(EOS,))(_params(), prompts, _keys(2))
    want, argmax = _training_logps(prompts, out)
    np.testing.assert_allclose(out.logps, want, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(out.tokens, argmax)
    # shift_targets: position L - 1 + t predicts completion token t, with its rollout log-prob.
    inputs, mask = completion_inputs(prompts, out, group_size=1)
    targets, target_mask, old = map(np.asarray, sampler_lib.shift_targets(inputs, mask, out.logps))
    length = prompts.seq_len
    np.testing.assert_array_equal(targets[:, length - 1 : -1], out.tokens)
    np.testing.assert_array_equal(target_mask[:, length - 1 : -1], 1.0)
    assert target_mask.sum() == 2 * T
    np.testing.assert_array_equal(old[:, length - 1 : -1], out.logps)


# ---- 4. top-k, EOS, buckets ------------------------------------------------------------------
def test_top_k_1_equals_greedy():
    prompts = _prompts(seed=4)
    greedy = _sampler(temperature=0.0, eos_ids=(EOS,))(_params(), prompts, _keys(2))
    top1 = _sampler(temperature=1.0, top_k=1, eos_ids=(EOS,))(_params(), prompts, _keys(2, 7))
    np.testing.assert_array_equal(top1.tokens, greedy.tokens)
    # temperature 1: the same distribution, so the same log-probs.
    np.testing.assert_allclose(top1.logps, greedy.logps, atol=1e-6)


def test_eos_stops_rows_and_pads_after():
    prompts = _prompts(seed=4)
    free = _sampler(temperature=0.0, eos_ids=(EOS,))(_params(), prompts, _keys(2))
    free_tokens = np.asarray(free.tokens)
    assert np.all(np.asarray(free.lengths) == T) and not np.any(free_tokens == EOS)
    # Declare the third token of row 0 an EOS id: row 0 must stop there.
    stop = int(free_tokens[0, 2])
    sample = _sampler(temperature=0.0, eos_ids=(EOS, stop))
    out = sample(_params(), prompts, _keys(2))
    for r in range(2):
        hits = np.flatnonzero(free_tokens[r] == stop)
        n = hits[0] + 1 if len(hits) else T
        assert out.lengths[r] == n
        np.testing.assert_array_equal(out.tokens[r, :n], free_tokens[r, :n])
        np.testing.assert_array_equal(out.tokens[r, n:], PAD)
        np.testing.assert_allclose(out.logps[r, :n], free.logps[r, :n], atol=1e-6)
        np.testing.assert_array_equal(out.logps[r, n:], 0.0)
    # The training rows of a stopped completion still match the decode log-probs.
    want, _ = _training_logps(prompts, out)
    np.testing.assert_allclose(out.logps, want, atol=1e-4, rtol=0)
    # When every row has stopped the loop exits: one cache slot per decoded token.
    both = _sampler(temperature=0.0, eos_ids=tuple(int(x) for x in free_tokens[:, 1]))
    cache, logits = both.prefill(_params(), prompts)
    early, cache = both.decode(_params(), cache, logits, _keys(2))
    np.testing.assert_array_equal(early.lengths, [2, 2])
    assert int(cache.index) == prompts.seq_len + 1


def test_buckets_do_not_recompile():
    sample = _sampler(temperature=0.0, eos_ids=(EOS,))
    buckets = (8, 14, 32)
    # Natural lengths 11 and 10 both land in bucket 14 (the length used by the tests above).
    a = _prompts(seed=5, length=11, texts=((2, 3), (1, 1)))
    b = _prompts(seed=6, length=10, texts=((1, 3), (2, 1)))
    a14, b14 = (sampler_lib.bucket_prompts(x, buckets, PAD) for x in (a, b))
    # Extra left padding is padding: the same arrays as building at length 14 directly.
    direct = _prompts(seed=5, length=14, texts=((2, 3), (1, 1)))
    jax.tree.map(np.testing.assert_array_equal, a14, direct)
    out_a = sample(_params(), a14, _keys(2))
    before = sampler_lib.compile_count()
    out_b = sample(_params(), b14, _keys(2))
    assert sampler_lib.compile_count() == before
    assert not np.array_equal(out_a.tokens, out_b.tokens)


def test_bucket_length():
    assert sampler_lib.bucket_length(8, (8, 16)) == 8
    assert sampler_lib.bucket_length(9, (16, 8, 64)) == 16
    with pytest.raises(ValueError, match="exceeds the largest bucket 16"):
        sampler_lib.bucket_length(17, (8, 16))


def test_bad_inputs_raise():
    sample = _sampler(temperature=0.0, eos_ids=(EOS,))
    prompts = _prompts(seed=4)
    with pytest.raises(ValueError, match="rng_keys has 3 keys"):
        sample(_params(), prompts, _keys(3))
    right = build_model_inputs(
        _prompt_rows(0), CFG, max_seq_len=14, max_patches=16, pad_side="right"
    )
    with pytest.raises(ValueError, match=r"LEFT-padded.*rows \[0, 1\]"):
        sample(_params(), right, _keys(2))
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(max_new_tokens=4, top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingConfig(max_new_tokens=0)


@pytest.mark.parametrize(
    "top_k, top_p, kept",
    [(0, 0.85, [0, 1, 2]), (3, 0.7, [0, 1])],  # full-vocabulary sort; within the top k
)
def test_select_tokens_filters_and_frequencies(top_k, top_p, kept):
    """Top-p keeps the smallest prefix reaching top_p (mass above token 2 is 0.8); sampled
    frequencies follow the renormalised kept probabilities; log-probs are unfiltered."""
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    n = 2000
    logits = np.tile(np.log(probs) * 2.0, (n, 1)).astype(np.float32)  # temperature 2
    cfg = SamplingConfig(max_new_tokens=1, temperature=2.0, top_k=top_k, top_p=top_p)
    tokens, logp = jax.jit(sampler_lib.select_tokens, static_argnums=3)(logits, _keys(n), 5, cfg)
    tokens = np.asarray(tokens)
    assert set(np.unique(tokens)) == set(kept)
    freq = np.bincount(tokens, minlength=4)[kept] / n
    np.testing.assert_allclose(freq, probs[kept] / probs[kept].sum(), atol=0.04)
    np.testing.assert_allclose(logp, np.log(probs)[tokens], atol=1e-5)


# ---- 5. decode-loop speed work keeps the tokens -------------------------------------------------
def _top_p_threshold_reference(scaled: np.ndarray, top_p: float) -> np.ndarray:
    """HF's TopPLogitsWarper threshold by a full sort, in float64."""
    out = []
    for row in scaled.astype(np.float64):
        desc = np.sort(row)[::-1]
        probs = np.exp(desc - desc[0]) / np.exp(row - desc[0]).sum()
        before = np.cumsum(probs) - probs
        out.append(desc[np.sum(before < top_p) - 1])
    return np.asarray(out)[:, None]


@pytest.mark.parametrize("flat_row", [False, True])
def test_top_p_threshold_from_candidates_equals_full_sort(flat_row):
    """The nucleus read off the top-k candidates equals the full sort's; a flat row (the top
    TOP_P_CANDIDATES tokens hold < top_p of the mass) takes the full-sort fallback."""
    v, top_p = 1000, 0.9
    rng = np.random.default_rng(0)
    peaked = rng.normal(size=(3, v)) + 12.0 * (np.arange(v) < 5)[rng.permutation(v)]
    rows = [peaked, 0.3 * rng.normal(size=(1, v))] if flat_row else [peaked]
    scaled = np.concatenate(rows).astype(np.float32)
    if flat_row:  # the fallback is needed: the candidates hold < top_p of the flat row's mass
        top = np.sort(scaled[-1])[::-1]
        mass = np.exp(top - top[0]).cumsum() / np.exp(top - top[0]).sum()
        assert mass[sampler_lib.TOP_P_CANDIDATES - 1] < top_p
    got = np.asarray(jax.jit(sampler_lib._top_p_threshold, static_argnums=1)(scaled, top_p))
    want = _top_p_threshold_reference(scaled, top_p)
    np.testing.assert_array_equal(got, want.astype(np.float32))
    # Each kept set is the nucleus: the peaked rows keep few tokens, the flat one > k.
    kept = (scaled >= got).sum(-1)
    assert np.all(kept[:3] <= 5) and (not flat_row or kept[-1] > sampler_lib.TOP_P_CANDIDATES)


@pytest.mark.parametrize("kw", [dict(temperature=0.0), dict(temperature=1.0, top_p=0.9)])
def test_decode_unroll_keeps_tokens(kw):
    """Several decode steps per loop iteration (T - 1 = 5 not a multiple of 3: the last
    iteration runs past T) give the same tokens, log-probs and lengths, EOS stops included."""
    prompts = _prompts(seed=4)
    keys = _keys(2, seed=9)
    free = _sampler(eos_ids=(EOS,), **kw)(_params(), prompts, keys)
    stop = int(np.asarray(free.tokens)[0, 2])  # row 0 stops at its third token
    for eos in ((EOS,), (EOS, stop)):
        cfg = SamplingConfig(max_new_tokens=T, pad_id=PAD, eos_ids=eos, **kw)
        one = make_sampler(Qwen25VL(CFG), cfg, decode_unroll=1)(_params(), prompts, keys)
        three = make_sampler(Qwen25VL(CFG), cfg, decode_unroll=3)(_params(), prompts, keys)
        np.testing.assert_array_equal(three.tokens, one.tokens)
        np.testing.assert_array_equal(three.lengths, one.lengths)
        np.testing.assert_array_equal(three.logps, one.logps)
        assert three.tokens.shape == (2, T)
    assert int(one.lengths[0]) == 3
    with pytest.raises(ValueError, match="decode_unroll"):
        make_sampler(Qwen25VL(CFG), cfg, decode_unroll=0)


def test_decode_loop_does_not_copy_the_cache():
    """The compiled decode loop writes the KV cache in place and its attention reads it as
    stored: no copy or transpose of a cache-sized array in the optimized HLO."""
    import dataclasses
    import re

    sample = _sampler(temperature=0.0, eos_ids=(EOS,))
    prompts = _prompts(seed=4)
    cache, logits = sample.prefill(_params(), prompts)
    b, k, s, h = cache.k[0].shape
    assert (k, s) == (CFG.text.num_key_value_heads, prompts.seq_len + T)
    cfg = dataclasses.replace(
        SamplingConfig(max_new_tokens=T, temperature=0.0, pad_id=PAD), group_size=1
    )
    hlo = (
        sampler_lib._decode.lower(
            _params(),
            cache,
            logits,
            _keys(2),
            np.full((4,), EOS, np.int32),
            model=Qwen25VL(CFG),
            cfg=cfg,
            rules=tuple(tuple(r) for r in sampler_lib.DEFAULT_RULES),
            unroll=1,
        )  # fmt: skip
        .compile()
        .as_text()
    )
    size = b * k * s * h
    copies = []
    for line in hlo.splitlines():
        m = re.search(r"= f32\[([\d,]+)\]\{[^}]*\} (copy|transpose)\(", line)
        if m and np.prod([int(d) for d in m.group(1).split(",")]) == size:
            copies.append(line.strip()[:120])
    assert not copies, copies


@pytest.mark.parametrize("t", [1, 3])
def test_cached_attention_equals_attention(t):
    """The heads-major cache attention (one decode query, or several) equals the primitive on the
    [B, S, K, H] layout, padding, unwritten slots and the causal offset included."""
    from o3video_jax.models.qwen2_5_vl.attention import attention, cached_attention

    b, s, n, kh, h, offset = 2, 9, 4, 2, 8, 5
    rng = np.random.default_rng(0)
    q = rng.normal(size=(b, t, n, h)).astype(np.float32)
    k, v = (rng.normal(size=(b, s, kh, h)).astype(np.float32) for _ in range(2))
    kv_seg = np.array([[0, 0, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1, 0]], np.int32)
    q_seg = np.ones((b, t), np.int32)
    want = attention(q, k, v, q_seg, kv_seg, causal=True, scale=h**-0.5, q_offset=offset)
    kc, vc = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    got = jax.jit(cached_attention, static_argnames="scale")(
        q, kc, vc, q_seg, kv_seg, scale=h**-0.5, q_offset=offset
    )
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_causal_query_blocks_equal_dense_attention():
    """Causal self-attention in query blocks (T >= 256) equals the dense masked path, with
    left padding and two packed segments."""
    from o3video_jax.models.qwen2_5_vl import attention as attn

    b, t, n, kh, h = 2, 300, 4, 2, 8
    rng = np.random.default_rng(1)
    q = rng.normal(size=(b, t, n, h)).astype(np.float32)
    k, v = (rng.normal(size=(b, t, kh, h)).astype(np.float32) for _ in range(2))
    seg = np.ones((b, t), np.int32)
    seg[0, :37] = 0  # left padding
    seg[1, 140:] = 2  # a second packed sequence
    got = attn.attention(q, k, v, seg, seg, causal=True, scale=0.3)
    want = attn._xla(q, k, v, seg, seg, True, 0.3, 0)
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)
    np.testing.assert_array_equal(np.asarray(got)[0, :37], 0.0)
