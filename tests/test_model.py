"""Qwen25VL: live parity with transformers 5.24 on a tiny random config, KV cache, sharding,
compile counts, input validation and bfloat16.

All cases share one budget (B=2, L=80, P=240) so the fp32 forward compiles once.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o3video_jax.models.qwen2_5_vl import Qwen25VL, Qwen25VLConfig, inputs_from_hf
from o3video_jax.models.qwen2_5_vl.inputs import text_only_inputs
from o3video_jax.models.qwen2_5_vl.layers import remat_module
from o3video_jax.train.sharding import DEFAULT_RULES

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CFG = Qwen25VLConfig.preset("tiny")
L, P = 80, 240
VS, VE, IMG, VID = (
    CFG.vision_start_token_id,
    CFG.vision_end_token_id,
    CFG.image_token_id,
    CFG.video_token_id,
)
GRIDS = {"small": (1, 4, 8), "wide": (1, 12, 20), "video": (3, 8, 8)}


# ---- the reference model and a local HF -> Flax converter ---------------------------------
def _hf_model():
    d = CFG.to_hf_dict()
    hf_cfg = transformers.Qwen2_5_VLConfig(
        **{k: v for k, v in d.items() if k not in ("architectures", "model_type")}
    )
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.Qwen2_5_VLForConditionalGeneration(hf_cfg).eval()
    # HF init leaves norms at 1 and biases at 0; randomise every tensor so each one matters.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    return model


def _to_flax(state_dict) -> dict:
    """HF 5.x state dict -> our tree (BRIEF "Flax parameter tree")."""
    params: dict = {}
    for key, tensor in state_dict.items():
        key = key.replace("model.visual.", "visual.").replace("model.language_model.", "model.")
        w = tensor.detach().numpy().astype(np.float32)
        path: list[str] = []
        for part in key.split(".")[:-1]:
            if part.isdigit():
                path[-1] = f"{path[-1]}_{part}"
            else:
                path.append(part)
        leaf = key.split(".")[-1]
        if path == ["visual", "patch_embed", "proj"]:
            path, leaf, w = ["visual", "patch_embed"], "kernel", w.reshape(w.shape[0], -1).T
        elif leaf == "weight" and ("norm" in path[-1] or path[-1] == "ln_q"):
            leaf = "scale"
        elif leaf == "weight" and path[-1] == "embed_tokens":
            leaf = "embedding"
        elif leaf == "weight":
            leaf, w = "kernel", w.T
        node = params
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = jnp.asarray(w)
    return params


def _pixels(rng, grid):
    return rng.normal(size=(int(np.prod(grid)), 1176)).astype(np.float32)


def _row(rng, parts):
    """parts: ints (text runs) or grid names (a vision block) -> token list, items."""
    ids, items = [], []
    for part in parts:
        if isinstance(part, int):
            ids += rng.integers(0, 480, size=part).tolist()
        else:
            grid = GRIDS[part]
            pad = VID if part == "video" else IMG
            ids += [VS] + [pad] * (int(np.prod(grid)) // 4) + [VE]
            items.append((part, grid))
    return ids, items


CASES = {
    "text": [[30], [80]],
    "image": [[5, "wide", 7], [20]],
    "video": [[4, "video", 10], [3, "small", 5]],
    "mixed": [[3, "small", 2, "video", 4], [2, "wide", 3]],
}


def _case(name, seed=0):
    """HF processor-style arrays for a case: rows left-padded to L."""
    rng = np.random.default_rng(seed)
    ids = np.full((2, L), CFG.pad_token_id, np.int64)
    mask = np.zeros((2, L), np.int64)
    images, videos = [], []
    for r, parts in enumerate(CASES[name]):
        row, items = _row(rng, parts)
        ids[r, L - len(row) :] = row
        mask[r, L - len(row) :] = 1
        for kind, grid in items:
            (videos if kind == "video" else images).append((grid, _pixels(rng, grid)))
    types = np.where(ids == IMG, 1, np.where(ids == VID, 2, 0))
    arrays = dict(input_ids=ids, attention_mask=mask, mm_token_type_ids=types)
    if images:
        arrays["pixel_values"] = np.concatenate([p for _, p in images])
        arrays["image_grid_thw"] = np.array([g for g, _ in images])
    if videos:
        arrays["pixel_values_videos"] = np.concatenate([p for _, p in videos])
        arrays["video_grid_thw"] = np.array([g for g, _ in videos])
        arrays["second_per_grid_ts"] = np.full(len(videos), 0.75, np.float32)
    return arrays


@pytest.fixture(scope="module")
def ref():
    hf = _hf_model()
    params = _to_flax(hf.state_dict())
    model = Qwen25VL(CFG)
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x, return_aux=True))
    return hf, params, model, forward


def _ours(arrays, max_patches=P):
    return inputs_from_hf(CFG, max_patches=max_patches, **arrays)


def _hf_logits(hf, arrays):
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}
    with torch.no_grad():
        return hf(**t).logits.numpy()


# ---- (1) parity with transformers ---------------------------------------------------------
def test_param_tree_matches_init(ref):
    _, params, model, _ = ref
    init = jax.eval_shape(model.init, jax.random.key(0), _ours(_case("image")))["params"]
    shapes = lambda t: jax.tree.map(lambda x: tuple(x.shape), nn.unbox(t))
    assert shapes(init) == shapes(params)


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(ref, name):
    hf, params, _, forward = ref
    arrays = _case(name)
    logits, aux = forward(params, _ours(arrays))
    want = _hf_logits(hf, arrays)
    valid = arrays["attention_mask"] == 1
    assert np.std(want[valid]) > 0.1  # the weights are not vanishingly small
    np.testing.assert_allclose(np.asarray(logits)[valid], want[valid], atol=1e-4, rtol=0)
    if name == "image":
        grid = torch.tensor([GRIDS["wide"]])
        px = torch.from_numpy(arrays["pixel_values"])
        with torch.no_grad():
            feats = hf.model.visual(px, grid_thw=grid).pooler_output.numpy()
        got = np.asarray(aux["vision_features"])[0, : len(feats)]
        np.testing.assert_allclose(got, feats, atol=1e-5, rtol=0)


def test_text_only_skips_vision_and_agrees(ref):
    _, params, model, forward = ref
    arrays = _case("text")
    with_budget, _ = forward(params, _ours(arrays))
    no_vision = _ours(arrays, max_patches=0)
    assert no_vision.max_patches == 0
    logits, aux = jax.jit(model.apply, static_argnames="return_aux")(
        {"params": params}, no_vision, return_aux=True
    )
    assert aux["vision_features"] is None
    again = model.apply({"params": params}, aux["hidden_states"], method="unembed")
    np.testing.assert_allclose(np.asarray(again), np.asarray(logits), atol=1e-5)
    valid = arrays["attention_mask"] == 1
    np.testing.assert_allclose(np.asarray(logits)[valid], np.asarray(with_budget)[valid], atol=1e-5)


# ---- (2) KV cache ------------------------------------------------------------------------
def _extend(inputs, new_tokens, next_pos):
    """Full-sequence inputs with `new_tokens` int[B, n] appended after the prompt."""
    b, n = new_tokens.shape
    steps = next_pos[:, None] + np.arange(n)[None]
    seg = np.repeat(inputs.segment_ids[:, -1:], n, axis=1)
    return inputs.replace(
        input_ids=np.concatenate([inputs.input_ids, new_tokens], 1).astype(np.int32),
        segment_ids=np.concatenate([inputs.segment_ids, seg], 1),
        positions=np.concatenate([inputs.positions, np.broadcast_to(steps, (3, b, n))], 2),
        feature_index=np.concatenate([inputs.feature_index, np.full((b, n), -1, np.int32)], 1),
    )


def test_prefill_and_decode_match_full_forward(ref):
    _, params, model, _ = ref
    inputs = _ours(_case("video"))
    variables = {"params": params}
    prefill = jax.jit(lambda p, x: model.apply({"params": p}, x, L + 4, method="prefill"))
    decode = jax.jit(lambda p, t, c: model.apply({"params": p}, t, c, method="decode_step"))
    cache, last = prefill(params, inputs)
    assert cache.k[0].shape == (2, CFG.num_key_value_heads, L + 4, CFG.head_dim)
    next_pos = np.asarray(cache.next_pos)
    np.testing.assert_array_equal(next_pos, inputs.positions[:, :, -1].max(0) + 1)

    steps, tokens = [np.asarray(last)], []
    for _ in range(3):
        tok = jnp.argmax(steps[-1], axis=-1).astype(jnp.int32)
        tokens.append(np.asarray(tok))
        logits, cache = decode(params, tok, cache)
        steps.append(np.asarray(logits))
    assert decode._cache_size() == 1  # one compile serves every step
    assert int(cache.index) == L + 3

    full = jax.jit(model.apply)(variables, _extend(inputs, np.stack(tokens, 1), next_pos))
    for i, got in enumerate(steps):
        np.testing.assert_allclose(got, np.asarray(full)[:, L - 1 + i], atol=2e-5, rtol=0)

    # One prefill serves a group: repeated caches decode exactly like the originals.
    cache0, last0 = prefill(params, inputs)
    tok = jnp.argmax(last0, axis=-1).astype(jnp.int32)
    want, _ = decode(params, tok, cache0)
    got, grown = decode(params, jnp.repeat(tok, 2), cache0.repeat(2))
    assert grown.k[1].shape[0] == 4 and grown.next_pos.shape == (4,)
    np.testing.assert_allclose(np.asarray(got), np.repeat(np.asarray(want), 2, 0), atol=1e-6)


# ---- (3) sharded == unsharded -----------------------------------------------------------
def test_sharded_forward_matches_unsharded(ref):
    _, params, model, forward = ref
    a, b = _ours(_case("video")), _ours(_case("image"))
    inputs = a.replace(
        **{
            f.name: np.concatenate(
                [getattr(a, f.name), getattr(b, f.name)], axis=1 if f.name == "positions" else 0
            )
            for f in dataclasses.fields(a)
        }
    )
    want, _ = forward(params, inputs)

    auto = (jax.sharding.AxisType.Auto,) * 3
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=auto)
    boxed = jax.eval_shape(model.init, jax.random.key(0), inputs)["params"]
    specs = nn.get_partition_spec(boxed)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, list(DEFAULT_RULES))
    sharded = jax.device_put(params, shardings)
    assert sharded["model"]["embed_tokens"][
        "embedding"
    ].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    with jax.set_mesh(mesh), nn.logical_axis_rules(list(DEFAULT_RULES)):
        f = jax.jit(lambda p, x: model.apply({"params": p}, x))
        got = f(sharded, inputs)
    assert len(got.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)


# ---- (4) one compile per budget ----------------------------------------------------------
def test_different_contents_compile_once(ref):
    _, params, model, _ = ref
    traces = []

    @jax.jit
    def f(p, x):
        traces.append(1)
        return model.apply({"params": p}, x)

    for name in ("image", "video", "mixed"):
        f(params, _ours(_case(name, seed=3)))
    assert len(traces) == 1 and f._cache_size() == 1


# ---- (5) bad inputs ------------------------------------------------------------------------
def test_bad_inputs_raise(ref):
    _, params, model, _ = ref
    inputs = _ours(_case("image"))
    with pytest.raises(ValueError, match="window_index"):
        model.apply({"params": params}, inputs.replace(window_index=inputs.window_index[:, :-1]))
    with pytest.raises(ValueError, match="multiple of 4"):
        bad = inputs.replace(
            pixel_values=inputs.pixel_values[:, :-2],
            vision_pos=inputs.vision_pos[:, :-2],
            window_segment_ids=inputs.window_segment_ids[:, :-2],
            frame_segment_ids=inputs.frame_segment_ids[:, :-2],
            window_index=inputs.window_index[:, : (P - 2) // 4],
        )
        model.apply({"params": params}, bad)
    with pytest.raises(ValueError, match="cache_len"):
        model.apply({"params": params}, inputs, L - 1, method="prefill")
    arrays = _case("image")
    arrays["input_ids"] = arrays["input_ids"].copy()
    arrays["input_ids"][0, -1] = IMG  # one pad token more than the image's features
    arrays["mm_token_type_ids"] = np.where(arrays["input_ids"] == IMG, 1, 0)
    with pytest.raises(ValueError):
        _ours(arrays)


# ---- (6) bfloat16 and remat ------------------------------------------------------------
def test_bfloat16_close_to_float32(ref):
    _, params, _, forward = ref
    inputs = _ours(_case("mixed"))
    want, _ = forward(params, inputs)
    cfg16 = dataclasses.replace(CFG, dtype="bfloat16", param_dtype="bfloat16")
    p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    got = jax.jit(lambda p, x: Qwen25VL(cfg16).apply({"params": p}, x))(p16, inputs)
    assert got.dtype == jnp.float32
    valid = inputs.segment_ids != 0
    diff = np.asarray(got)[valid] - np.asarray(want)[valid]
    rel = np.linalg.norm(diff) / np.linalg.norm(np.asarray(want)[valid])
    assert 0 < rel < 2e-2


def test_remat_policies_give_same_gradients(ref):
    _, params, _, _ = ref
    rng = np.random.default_rng(5)
    ids, items = _row(rng, [3, "small", 2])
    grid = GRIDS["small"]
    inputs = inputs_from_hf(
        CFG,
        input_ids=np.array([ids]),
        pixel_values=_pixels(rng, grid),
        image_grid_thw=np.array([grid]),
    )

    def grads(policy):
        m = Qwen25VL(dataclasses.replace(CFG, remat=policy))
        loss = lambda p: jnp.mean(m.apply({"params": p}, inputs) ** 2)
        return jax.jit(jax.grad(loss))(params)

    # "full" differs from "save_dots" only in the policy handed to nn.remat; one compile each
    # is what the test budget allows.
    base = grads("none")
    assert np.abs(np.asarray(base["visual"]["blocks_0"]["attn"]["qkv"]["kernel"])).max() > 0
    got = grads("save_dots")
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), got, base)
    with pytest.raises(ValueError, match="remat policy"):
        remat_module(nn.Dense, "some")


def test_tied_embeddings_unembed_with_the_table():
    cfg = dataclasses.replace(CFG, tie_word_embeddings=True)
    model = Qwen25VL(cfg)
    inputs = text_only_inputs(np.arange(8, dtype=np.int32).reshape(1, 8))
    shapes = jax.eval_shape(model.init, jax.random.key(1), inputs)["params"]
    assert "lm_head" not in shapes
    table = jax.random.normal(jax.random.key(2), (CFG.vocab_size, CFG.hidden_size))
    hidden = jax.random.normal(jax.random.key(3), (3, CFG.hidden_size))
    params = {"model": {"embed_tokens": {"embedding": table}}}
    got = model.apply({"params": params}, hidden, method="unembed")
    np.testing.assert_allclose(np.asarray(got), np.asarray(hidden @ table.T), atol=1e-5)
