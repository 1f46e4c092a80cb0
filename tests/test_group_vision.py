"""Shared vision in the GSPO training forward (docs/design.md decision 6): the pixels of a G-sample
group are kept once (`vision_group = G`) and the tower runs once per prompt. Shared rows must
give the log-probs and the update (vision-tower parameters included) of repeated pixels, on one
device and on the fake 8-device mesh, fall back to repeating when the prompts do not split over
the batch shards, and really cost less."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from o3video_jax.data.model_inputs import Segment, VisionItem, build_model_inputs
from o3video_jax.models.qwen2_5_vl import Qwen25VL, Qwen25VLConfig
from o3video_jax.models.qwen2_5_vl.inputs import PATCH_DIM
from o3video_jax.rl import gspo, rollouts
from o3video_jax.rl.sampler import SampleOutput
from o3video_jax.train import sharding, state, steps

CFG = Qwen25VLConfig.preset("tiny")
MODEL = Qwen25VL(CFG)
PAD = CFG.pad_token_id
G, T, PROMPT_LEN, LENGTH = 4, 5, 14, 20


def _prompts(n: int, seed: int = 0):
    """n LEFT-padded prompts alternating a 4x4-patch image (4 tokens) and a 2x4x4 video
    (8 tokens), each ending in text; 32 patches per row."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        grid, kind, token = ((1, 4, 4), "image", CFG.image_token_id)
        if i % 2:
            grid, kind, token = ((2, 4, 4), "video", CFG.video_token_id)
        count = grid[0] * grid[1] * grid[2]
        ids = np.concatenate(
            [
                rng.integers(0, 480, 1 + i % 2),
                [CFG.vision_start_token_id, *[token] * (count // 4), CFG.vision_end_token_id],
                rng.integers(0, 480, 2),
            ]
        )
        pixels = rng.normal(size=(count, PATCH_DIM)).astype(np.float32)
        item = VisionItem(pixels, grid, kind, 1.0 if kind == "video" else None)
        rows.append([Segment(ids, [item])])
    return build_model_inputs(rows, CFG, max_seq_len=PROMPT_LEN, max_patches=32, pad_side="left")


def _samples(prompt, seed: int = 1) -> SampleOutput:
    """Fake rollouts of G samples per prompt (completions of different lengths)."""
    rng = np.random.default_rng(seed)
    n = prompt.batch_size * G
    last = np.asarray(prompt.positions)[:, :, -1].max(axis=0) + 1
    return SampleOutput(
        tokens=rng.integers(0, 480, (n, T)).astype(np.int32),
        lengths=rng.integers(1, T + 1, n).astype(np.int32),
        logps=-rng.random((n, T)).astype(np.float32),
        next_pos=np.repeat(last, G).astype(np.int32),
    )


def _rows(n_prompts: int, share: bool, mesh=None, seed: int = 0):
    """Training rows (as the GSPO loop builds them) with advantages and reference log-probs."""
    prompt = _prompts(n_prompts, seed)
    out = _samples(prompt, seed + 1)
    rows = rollouts.training_rows(prompt, out, G, LENGTH, PAD, share=share, mesh=mesh)
    rng = np.random.default_rng(seed + 2)
    n = n_prompts * G
    rows["advantages"] = np.asarray(gspo.group_advantages(rng.normal(size=n), G))
    ref = np.where(rows["mask"] > 0, -5.0 + rng.normal(size=rows["mask"].shape), 0.0)
    rows["ref_logp"] = ref.astype(np.float32)
    rows["old_logp"] = np.zeros_like(rows["ref_logp"])  # unused: old_logp = "current"
    return rows


@functools.cache
def _params():
    """Random O(1) weights drawn on the host, so the vision tower matters to the log-probs."""
    shapes = jax.eval_shape(lambda x: MODEL.init(jax.random.key(0), x), _prompts(1))
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


def _mesh(shape: tuple):
    shape = dict(shape)
    return sharding.make_mesh(shape, jax.devices()[: int(np.prod(list(shape.values())))])


ONE = (("data", 1), ("fsdp", 1), ("tensor", 1))
EIGHT = (("data", 2), ("fsdp", 2), ("tensor", 2))


def _cfg(microbatches: int = 1):
    optimizer = dict(
        lr=1.0, schedule="constant", warmup_steps=0, total_steps=10, weight_decay=0.0,
        b1=0.9, b2=0.999, eps=1.0, grad_clip=0.0, freeze_regex="", microbatches=microbatches,
    )  # fmt: skip  # eps = 1, lr = 1: Adam's first update ~ the gradient itself
    return ml_collections.ConfigDict(
        dict(
            gspo=gspo.presets()["open_o3_video"],
            optimizer=optimizer,
            loss=dict(chunk=8),
            nan_policy="skip",
        )
    )


@functools.cache
def _update_fn(mesh_shape: tuple, microbatches: int):
    """(mesh, jitted update, its state shardings), cached: tests that run or lower the same
    update on the same shapes share one compile."""
    mesh, cfg = _mesh(dict(mesh_shape)), _cfg(microbatches)
    tx = state.make_optimizer(cfg.optimizer)
    init = lambda k: MODEL.init(k, _prompts(1))["params"]
    shardings = sharding.state_shardings(
        init, tx, np.zeros(2, np.uint32), mesh, sharding.DEFAULT_RULES
    )
    return mesh, gspo.make_gspo_update(MODEL, cfg, mesh, shardings), shardings, tx


def _state(mesh_shape: tuple, microbatches: int):
    """A fresh initial state (the update donates it) with the host-drawn params."""
    _, _, shardings, tx = _update_fn(mesh_shape, microbatches)
    st = state.TrainState.create(_params(), tx, np.zeros(2, np.uint32))
    return jax.device_put(st, shardings)


def _updates(mesh_shape: tuple, batches, microbatches=1):
    """Params after one update per batch, from the same initial state."""
    mesh, update, _, _ = _update_fn(mesh_shape, microbatches)
    st = _state(mesh_shape, microbatches)
    for batch in batches:
        st, metrics = update(st, sharding.shard_batch(batch, mesh))
        assert metrics["skipped"] == 0
    return jax.device_get(st.params)


def _max_diff(a, b, only=None):
    pairs = zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True)
    return max(
        float(np.abs(x - y).max())
        for (path, x), y in pairs
        if only is None or only in jax.tree_util.keystr(path)
    )


# ---- host-side layout ------------------------------------------------------------------------
def test_rule_and_layouts():
    assert rollouts.can_share_vision(8, 4) and rollouts.can_share_vision(8, 4, microbatches=2)
    assert not rollouts.can_share_vision(8, 4, microbatches=4)  # 2 prompts on 4 shards
    assert not rollouts.can_share_vision(3, 2) and not rollouts.can_share_vision(6, 1, 4)
    shared, repeated = _rows(2, share=True), _rows(2, share=False)
    assert shared["inputs"].pixel_values.shape[0] == 2 and shared["targets"].shape[0] == 2 * G
    assert rollouts.vision_group(shared["inputs"]) == G
    assert rollouts.vision_group(repeated["inputs"]) == 1
    for a, b in zip(
        jax.tree.leaves(rollouts.expand_vision(shared["inputs"])),
        jax.tree.leaves(repeated["inputs"]),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    # 2 prompts on the 4 batch shards of the 8-device mesh: the pixels are repeated instead.
    fallback = _rows(2, share=True, mesh=_mesh(EIGHT))
    assert rollouts.vision_group(fallback["inputs"]) == 1


def test_group_minibatches_keep_whole_groups():
    batch = _rows(4, share=False)
    batch["advantages"] = np.arange(4 * G, dtype=np.float32)  # row ids, to follow the rows
    mbs = rollouts.group_minibatches(batch, G, 2, np.random.default_rng(0), shards=2)
    seen = []
    for mb in mbs:
        rows = mb["advantages"].astype(int)
        prompts = rows[::G] // G
        np.testing.assert_array_equal(rows, (prompts[:, None] * G + np.arange(G)).reshape(-1))
        np.testing.assert_array_equal(
            mb["inputs"].pixel_values, batch["inputs"].pixel_values[prompts * G]
        )
        np.testing.assert_array_equal(mb["inputs"].input_ids, batch["inputs"].input_ids[rows])
        seen.extend(prompts.tolist())
    assert sorted(seen) == [0, 1, 2, 3] and len(mbs) == 2
    # 2 prompts per minibatch do not split over 4 shards: pixels repeated, same rows.
    rng = np.random.default_rng(0)
    wide = rollouts.group_minibatches(batch, G, 2, rng, shards=4)
    for a, b in zip(mbs, wide, strict=True):
        assert rollouts.vision_group(b["inputs"]) == 1
        np.testing.assert_array_equal(a["advantages"], b["advantages"])
    with pytest.raises(ValueError, match="not divisible by minibatches"):
        rollouts.group_minibatches(batch, G, 3, rng)


# ---- numerics ----------------------------------------------------------------------------------
def test_shared_logprobs_equal_repeated():
    mesh = _mesh(ONE)
    logprobs = rollouts.make_logprob_fn(
        MODEL, mesh, sharding.DEFAULT_RULES, chunk=8, temperature=1.0
    )
    shared, repeated = _rows(2, share=True), _rows(2, share=False)
    want = np.asarray(logprobs(_params(), repeated))
    got = np.asarray(logprobs(_params(), shared))
    assert np.count_nonzero(want) >= 2 * G  # every completion has at least one token
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # The groups really read their own prompt's pixels: swapping them changes the log-probs.
    px = shared["inputs"].pixel_values
    swapped = {**shared, "inputs": shared["inputs"].replace(pixel_values=px[::-1].copy())}
    assert np.abs(np.asarray(logprobs(_params(), swapped)) - want).max() > 1e-2


def _two_minibatches(shared: bool):
    """The loop's split of 4 prompts x G rows into 2 minibatches of whole groups."""
    batch = _rows(4, share=False)
    rng = np.random.default_rng(0)
    return rollouts.group_minibatches(batch, G, 2, rng, shared=shared, microbatches=2)


def test_update_shared_equals_repeated_two_minibatches():
    """Two minibatches (one update each), 2 microbatches per update (text rows reordered)."""
    shared, repeated = _two_minibatches(True), _two_minibatches(False)
    assert rollouts.vision_group(shared[0]["inputs"]) == G
    assert rollouts.vision_group(repeated[0]["inputs"]) == 1
    p_shared = _updates(ONE, shared, microbatches=2)
    p_repeated = _updates(ONE, repeated, microbatches=2)
    assert _max_diff(p_shared, p_repeated) < 1e-5
    # The vision tower was trained (its gradients are compared above, not only zeros).
    assert _max_diff(p_repeated, _params(), only="visual") > 1e-3
    assert _max_diff(p_shared, p_repeated, only="visual") < 1e-5


def test_microbatch_reorder_and_fallback():
    """`_fit_shared_vision`: microbatch m of the strided split gets exactly the G rows of its
    prompts; when its prompts do not split over the shards, the pixels are repeated."""
    batch = _rows(4, share=True)
    batch["advantages"] = np.arange(4 * G, dtype=np.float32)  # row ids
    fit = gspo._fit_shared_vision(batch, microbatches=2, shards=1)
    assert rollouts.vision_group(fit["inputs"]) == G
    mbs = jax.device_get(steps.split_microbatches(fit, 2))
    for m in range(2):
        prompts = np.arange(4)[m::2]  # the strided split of the vision rows
        rows = (prompts[:, None] * G + np.arange(G)).reshape(-1)
        np.testing.assert_array_equal(mbs["advantages"][m], rows)
        np.testing.assert_array_equal(mbs["inputs"].input_ids[m], batch["inputs"].input_ids[rows])
        np.testing.assert_array_equal(
            mbs["inputs"].positions[m], batch["inputs"].positions[:, rows]
        )
        np.testing.assert_array_equal(
            mbs["inputs"].pixel_values[m], batch["inputs"].pixel_values[prompts]
        )
    fallback = gspo._fit_shared_vision(batch, microbatches=2, shards=4)  # 2 prompts, 4 shards
    assert rollouts.vision_group(fallback["inputs"]) == 1
    np.testing.assert_array_equal(fallback["advantages"], batch["advantages"])


def test_sharded_shared_equals_unshared_with_fallback():
    """On data=2, fsdp=2, tensor=2 (4 batch shards), 8 prompts x G rows, 2 microbatches: shared
    pixels (4 prompts per microbatch, sharded) == repeated ones. With 4 microbatches (2 prompts
    on 4 shards) the update repeats the pixels itself: the repeated reference."""
    shared = _rows(8, share=True, mesh=_mesh(EIGHT))
    assert rollouts.vision_group(shared["inputs"]) == G
    want = _updates(EIGHT, [shared], microbatches=4)
    assert _max_diff(want, _params(), only="visual") > 1e-3
    assert _max_diff(_updates(EIGHT, [shared], microbatches=2), want) < 1e-5


def test_sharing_costs_less():
    """The compiled update (the minibatch shapes above): fewer flops, less temporary memory."""
    cost = {}
    for share in (True, False):
        mesh, update, _, _ = _update_fn(ONE, 2)
        batch = sharding.shard_batch(_two_minibatches(share)[0], mesh)
        compiled = update.lower(_state(ONE, 2), batch).compile()
        analysis = compiled.cost_analysis()
        analysis = analysis[0] if isinstance(analysis, list) else analysis
        cost[share] = (analysis["flops"], compiled.memory_analysis().temp_size_in_bytes)
    print(f"update flops / temp bytes: shared {cost[True]}, repeated {cost[False]}")
    # Vision fwd + bwd of G - 1 extra copies of 2 prompts (32 patches each) is well over a
    # quarter of the repeated update's flops for this tiny text model.
    assert cost[True][0] < 0.75 * cost[False][0]
    assert cost[True][1] < cost[False][1]
