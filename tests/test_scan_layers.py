"""Scanned layers (`config.scan_layers`) equal the unrolled model: logits, loss, gradients, a
training step, greedy decoding, and the parameter layout conversion.

The scanned and unrolled models get the same weights (`layout.stack_layers` of the unrolled
init, norms and biases randomised so every tensor matters); everything runs in float32.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o3video_jax.checkpoints import layout
from o3video_jax.data.model_inputs import Segment, VisionItem, build_model_inputs
from o3video_jax.models.qwen2_5_vl import Qwen25VL, Qwen25VLConfig
from o3video_jax.rl import sampler as sampler_lib
from o3video_jax.train import sharding, state, steps
from o3video_jax.train.sharding import DEFAULT_RULES

TINY = Qwen25VLConfig.preset("tiny")
# GQA with 4 query heads per KV head, 3 decoder layers, a 4-block tower with two
# full-attention blocks (blocked frame attention: max_frame_patches > 0) and full remat.
GQA = TINY.replace(
    text=dataclasses.replace(
        TINY.text, num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2,
        hidden_size=64, mrope_section=(1, 2, 1),
    ),
    vision=dataclasses.replace(
        TINY.vision, depth=4, fullatt_block_indexes=(1, 3), max_frame_patches=64
    ),
    remat="full",
)  # fmt: skip
CONFIGS = {"tiny": TINY, "gqa": GQA}
ATOL = 1e-6  # float32; observed differences are 0 to a few ulp


def _batch(config, seed=0, rows=4, length=40, patches=96):
    """Rows with images and a 2-frame video, packed and padded; next-token targets."""
    rs = np.random.RandomState(seed)
    vs, ve = config.vision_start_token_id, config.vision_end_token_id
    img, vid = config.image_token_id, config.video_token_id

    def segment(n_text, kind):
        grid = (1, 4, 4) if kind == "image" else (2, 4, 4)
        pad = img if kind == "image" else vid
        n = int(np.prod(grid))
        ids = [*rs.randint(0, 480, 3), vs, *[pad] * (n // 4), ve, *rs.randint(0, 480, n_text)]
        item = VisionItem(rs.randn(n, 1176).astype(np.float32), grid, kind)
        return Segment(np.asarray(ids, np.int32), [item])

    table = [
        [segment(5, "image")],
        [segment(8, "video")],
        [segment(3, "image"), segment(2, "image")],
    ]
    inputs = build_model_inputs(
        [table[r % 3] for r in range(rows)], config, max_seq_len=length, max_patches=patches
    )
    seg = inputs.segment_ids
    targets = np.roll(inputs.input_ids, -1, axis=1)
    mask = (seg > 0) & (np.roll(seg, -1, axis=1) == seg) & (targets != img) & (targets != vid)
    return {"inputs": inputs, "targets": targets, "loss_mask": mask.astype(np.float32)}


def _params(config, inputs, seed=0):
    """Unrolled params with every norm and bias randomised."""
    init = jax.jit(lambda k: nn.unbox(Qwen25VL(config).init(k, inputs)["params"]))
    params = init(jax.random.key(seed))
    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    key = jax.random.key(seed + 1)
    out = []
    for i, (path, x) in enumerate(leaves):
        name = str(path[-1])
        k = jax.random.fold_in(key, i)
        if "scale" in name:
            x = 1.0 + 0.2 * jax.random.normal(k, x.shape)
        elif "bias" in name:
            x = 0.05 * jax.random.normal(k, x.shape)
        out.append(x)
    return jax.tree_util.tree_unflatten(tree, out)


def _both(config):
    return Qwen25VL(config.replace(scan_layers=False)), Qwen25VL(config.replace(scan_layers=True))


def _max_diff(a, b):
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b)))


# ---- layout ----------------------------------------------------------------------------------
def test_scanned_init_has_stacked_params_with_layer_axis():
    batch = _batch(TINY)
    unrolled, scanned = _both(GQA)
    boxed = jax.eval_shape(scanned.init, jax.random.key(0), batch["inputs"])["params"]
    specs = nn.get_partition_spec(boxed)
    assert tuple(specs["model"]["layers"]["self_attn"]["q_proj"]["kernel"]) == (
        "layers", "embed", "heads",
    )  # fmt: skip
    assert tuple(specs["visual"]["blocks"]["attn"]["qkv"]["kernel"]) == (
        "layers", "vision_embed", "vision_qkv",
    )  # fmt: skip
    shapes = lambda t: jax.tree.map(lambda x: tuple(x.shape), nn.unbox(t))
    flat = jax.eval_shape(unrolled.init, jax.random.key(0), batch["inputs"])["params"]
    assert shapes(boxed) == shapes(layout.stack_layers(nn.unbox(flat)))
    assert shapes(boxed)["model"]["layers"]["mlp"]["up_proj"]["kernel"] == (3, 64, 128)
    assert shapes(boxed)["visual"]["blocks"]["norm1"]["scale"] == (4, 32)
    # The layer axis maps to no mesh axis.
    assert dict(sharding.DEFAULT_RULES)["layers"] is None


def test_stack_unstack_round_trip_is_exact():
    batch = _batch(TINY)
    params = _params(GQA, batch["inputs"])
    stacked = layout.stack_layers(params)
    assert layout.is_stacked(stacked) and not layout.is_stacked(params)
    np.testing.assert_array_equal(
        stacked["model"]["layers"]["mlp"]["down_proj"]["kernel"][2],
        params["model"]["layers_2"]["mlp"]["down_proj"]["kernel"],
    )
    back = layout.unstack_layers(stacked)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    assert _max_diff(back, params) == 0.0
    # Idempotent, and the same on trees that hold params (an optimiser state).
    assert jax.tree.structure(layout.stack_layers(stacked)) == jax.tree.structure(stacked)
    tx = state.make_optimizer(_opt_cfg().optimizer)
    opt = tx.init(params)
    assert jax.tree.structure(layout.stack_layers(opt)) == jax.tree.structure(tx.init(stacked))


# ---- numerics --------------------------------------------------------------------------------
def _loss(model, params, batch):
    logits = model.apply({"params": params}, batch["inputs"])
    logp = jax.nn.log_softmax(logits, axis=-1)
    targets = jnp.where(batch["loss_mask"] > 0, batch["targets"], 0)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * batch["loss_mask"]) / jnp.sum(batch["loss_mask"]), logits


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_loss_and_gradients_equal_unrolled(name):
    config = CONFIGS[name]
    batch = _batch(config)
    unrolled, scanned = _both(config)
    params = _params(config, batch["inputs"])
    grad_fn = lambda m: jax.jit(jax.value_and_grad(lambda p, b: _loss(m, p, b), has_aux=True))
    (loss0, logits0), g0 = grad_fn(unrolled)(params, batch)
    (loss1, logits1), g1 = grad_fn(scanned)(layout.stack_layers(params), batch)
    assert float(jnp.std(logits0)) > 0.1
    np.testing.assert_allclose(np.asarray(logits1), np.asarray(logits0), atol=ATOL, rtol=0)
    np.testing.assert_allclose(float(loss1), float(loss0), atol=ATOL, rtol=0)
    g1 = layout.unstack_layers(g1)
    assert jax.tree.structure(g1) == jax.tree.structure(g0)
    assert _max_diff(g1, g0) <= ATOL
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g0["visual"])) > 1e-3


def _opt_cfg():
    import ml_collections

    optimizer = dict(
        lr=1e-2, schedule="constant", warmup_steps=0, total_steps=100, weight_decay=0.01,
        b1=0.9, b2=0.999, eps=1e-3, grad_clip=1.0, freeze_regex="^visual/merger/",
        microbatches=2,
    )  # fmt: skip
    return ml_collections.ConfigDict(
        dict(optimizer=optimizer, loss=dict(chunk=8, normalize="token"), nan_policy="skip")
    )


def test_sft_step_equals_unrolled_on_a_sharded_mesh():
    """One SFT step (2 microbatches, clipping, decay, a frozen merger, full remat) on a
    fsdp=2 x tensor=2 mesh."""
    config = TINY.replace(remat="full")
    batch = _batch(config, rows=4)
    cfg = _opt_cfg()
    tx = state.make_optimizer(cfg.optimizer)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, jax.devices()[:4])
    rules = sharding.DEFAULT_RULES
    params = jax.device_get(_params(config, batch["inputs"]))  # host copies: steps donate
    out = {}
    for scan, model in zip((False, True), _both(config), strict=True):
        init = lambda k, m=model: m.init(k, batch["inputs"])["params"]
        shardings = sharding.state_shardings(init, tx, jax.random.PRNGKey(0), mesh, rules)
        p = layout.to_layout(params, scan)
        st = state.TrainState.create(p, tx, jax.random.PRNGKey(1))
        st = jax.device_put(st, shardings)
        step = steps.make_sft_step(model, cfg, mesh, shardings)
        st, metrics = step(st, sharding.shard_batch(batch, mesh))
        out[scan] = jax.device_get((layout.unstack_layers(st.params), metrics))
    (p0, m0), (p1, m1) = out[False], out[True]
    np.testing.assert_allclose(m1["loss"], m0["loss"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(m1["grad_norm"], m0["grad_norm"], rtol=1e-6)
    assert _max_diff(p1, p0) <= 1e-6
    assert _max_diff(p0["visual"]["blocks_1"], params["visual"]["blocks_1"]) > 1e-4


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_decode_tokens_identical(name):
    config = CONFIGS[name]
    inputs = _batch(config, rows=2, length=32, patches=64)["inputs"]
    # Prompts are LEFT-padded: move each row's tokens to the end.
    inputs = _left_pad(inputs)
    params = _params(config, inputs, seed=3)
    cfg = sampler_lib.SamplingConfig(max_new_tokens=12, temperature=0.0, group_size=2)
    keys = jax.random.split(jax.random.key(0), 4)
    outs = []
    for scan, model in zip((False, True), _both(config), strict=True):
        sample = sampler_lib.make_sampler(model, cfg)
        p = layout.to_layout(params, scan)
        cache, logits = sample.prefill(p, inputs)
        assert cache.k.shape == (
            config.text.num_hidden_layers, 4, config.text.num_key_value_heads,
            cache.max_len, config.text.head_dim,
        )  # fmt: skip
        outs.append((sample(p, inputs, keys), np.asarray(logits)))
    (a, la), (b, lb) = outs
    np.testing.assert_allclose(lb, la, atol=ATOL, rtol=0)
    np.testing.assert_array_equal(np.asarray(b.tokens), np.asarray(a.tokens))
    np.testing.assert_array_equal(np.asarray(b.lengths), np.asarray(a.lengths))
    np.testing.assert_allclose(np.asarray(b.logps), np.asarray(a.logps), atol=1e-5)
    assert len(set(np.asarray(a.tokens).ravel().tolist())) > 3  # not a constant stream


def _left_pad(inputs):
    seg = np.asarray(inputs.segment_ids)
    n = (seg > 0).sum(1)
    shift = seg.shape[1] - n

    def roll(x, axis):
        x = np.asarray(x)
        return np.stack(
            [np.roll(np.take(x, r, axis=axis), int(shift[r]), axis=-1) for r in range(len(n))],
            axis=axis,
        )

    seg1 = np.minimum(roll(seg, 0), 1)  # one segment per prompt
    return inputs.replace(
        input_ids=roll(inputs.input_ids, 0),
        segment_ids=seg1.astype(np.int32),
        positions=roll(inputs.positions, 1),
        feature_index=np.where(seg1 > 0, roll(inputs.feature_index, 0), -1).astype(np.int32),
    )


# ---- Orbax: a checkpoint of either layout restores into either ------------------------------
@pytest.mark.parametrize("saved_scan", [False, True], ids=["unrolled_ckpt", "scanned_ckpt"])
def test_orbax_checkpoint_restores_into_the_other_layout(tmp_path, saved_scan):
    from o3video_jax.checkpoints.orbax import Checkpointer

    config = TINY
    inputs = _batch(config, rows=4)["inputs"]
    tx = state.make_optimizer(_opt_cfg().optimizer)
    params = jax.device_get(_params(config, inputs))
    st = state.TrainState.create(params, tx, jax.random.PRNGKey(1))
    # Adam moments that differ per layer, so a layer mix-up would show.
    st = st.replace(opt_state=jax.tree.map(lambda x: x + 0.5 if x.ndim else x, st.opt_state))
    st = jax.device_get(st)
    saved = jax.tree.map(np.asarray, layout.to_layout(st, saved_scan))
    ckpt = Checkpointer(str(tmp_path), async_save=False, handle_sigterm=False)
    ckpt.save(3, saved, {"pos": 7}, force=True)
    ckpt.wait()
    mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, jax.devices()[:4])
    want_scan = not saved_scan
    model = Qwen25VL(config.replace(scan_layers=want_scan))
    init = lambda k: model.init(k, inputs)["params"]
    shardings = sharding.state_shardings(init, tx, jax.random.PRNGKey(0), mesh, DEFAULT_RULES)
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        layout.to_layout(st, want_scan),
        shardings,
    )
    restored, data, step = ckpt.restore(abstract)
    ckpt.close()
    assert step == 3 and data == {"pos": 7}
    expected = layout.to_layout(st, want_scan)
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    for got, want, s in zip(
        jax.tree.leaves(restored), jax.tree.leaves(expected), jax.tree.leaves(shardings),
        strict=True,
    ):  # fmt: skip
        assert got.sharding.is_equivalent_to(s, got.ndim)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
