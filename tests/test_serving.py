"""Rollouts in a serving layout (docs/design.md decision 15), on the fake 8-device CPU mesh.

1. No weight collective inside the decode loop: the compiled while body of the decode loop on
   a serving mesh holds no all-gather or reduce-scatter of a weight (on the training layout,
   FSDP over 8 chips, it gathers every weight every token).
2. Same tokens: greedy (and, for fixed keys, sampled) tokens on the serving meshes tensor=2 x
   rows=4 and tensor=4 x rows=2 equal the training-layout sampler's (fsdp=8), for a GQA model
   (8 heads, 4 KV heads) with scanned (stacked) layers.
3. The reshard program: weights in the model's dtype, sharded by the serving rules; the rule
   table and the mesh.
"""

from __future__ import annotations

import dataclasses
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o3video_jax.data.model_inputs import Segment, VisionItem, build_model_inputs
from o3video_jax.models.qwen2_5_vl import Qwen25VL, Qwen25VLConfig
from o3video_jax.models.qwen2_5_vl.config import TextConfig
from o3video_jax.models.qwen2_5_vl.inputs import PATCH_DIM
from o3video_jax.rl import sampler as sampler_lib
from o3video_jax.rl import serving
from o3video_jax.rl.sampler import SamplingConfig, make_sampler
from o3video_jax.train.sharding import DEFAULT_RULES, logical_to_sharding, make_mesh

# GQA (8 query heads over 4 KV heads: both split over tensor=4), scanned layers as shipped.
_TINY = Qwen25VLConfig.preset("tiny")
CFG = dataclasses.replace(
    _TINY,
    text=dataclasses.replace(
        _TINY.text, num_attention_heads=8, num_key_value_heads=4, mrope_section=(2, 1, 1)
    ),
    scan_layers=True,
)
assert isinstance(CFG.text, TextConfig) and CFG.text.head_dim == 8
PAD, EOS = CFG.pad_token_id, CFG.eos_token_id
T = 6
PROMPTS, G = 8, 2  # 8 prompts: one per chip of the fsdp=8 training mesh; 16 sample rows
RULES = tuple(tuple(r) for r in DEFAULT_RULES)
SERVING_MESHES = [(2, 4), (4, 2)]  # (tensor, rows)


def _prompts(seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(PROMPTS):
        before, after = 1 + i % 3, 1 + (i * 5) % 4
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
    return build_model_inputs(rows, CFG, max_seq_len=16, max_patches=16, pad_side="left")


@functools.cache
def _abstract():
    return jax.eval_shape(lambda x: Qwen25VL(CFG).init(jax.random.key(0), x), _prompts())


@functools.cache
def _host_params():
    """Random weights drawn on the host with O(1) activations (clear greedy margins)."""
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
        fan_in = leaf.shape[1] if CFG.scan_layers and leaf.ndim == 3 else leaf.shape[0]
        return noise / np.sqrt(fan_in)

    return jax.tree_util.tree_map_with_path(draw, nn.unbox(_abstract()["params"]))


@functools.cache
def _train_mesh():
    return make_mesh({"data": 1, "fsdp": 8, "tensor": 1}, jax.devices()[:8])


@functools.cache
def _train_params():
    """The policy on the training layout: FSDP over 8 chips, float32."""
    shardings = logical_to_sharding(_abstract()["params"], _train_mesh(), RULES)
    return jax.device_put(_host_params(), shardings), shardings


def _keys(n: int, seed: int = 1):
    return np.random.default_rng(seed).integers(0, 2**32, (n, 2), dtype=np.uint32)


@functools.cache
def _layout(tensor: int, dtype=jnp.float32):
    _, shardings = _train_params()
    return serving.make_layout(_train_mesh(), RULES, shardings, tensor, dtype)


SAMPLING = {
    "greedy": dict(temperature=0.0),
    "sampled": dict(temperature=1.0, top_p=0.9),
}


def _cfg(kind: str) -> SamplingConfig:
    return SamplingConfig(
        max_new_tokens=T, pad_id=PAD, eos_ids=(EOS,), group_size=G, **SAMPLING[kind]
    )


@functools.cache
def _training_layout_out(kind: str):
    """Today's sampler: prefill and decode on the training layout (fsdp=8, float32)."""
    params, _ = _train_params()
    sample = make_sampler(Qwen25VL(CFG), _cfg(kind), mesh=_train_mesh(), rules=RULES)
    return jax.device_get(sample(params, _prompts(seed=2), _keys(PROMPTS * G, seed=3)))


# ---- 1. no weight collective in the decode loop ------------------------------------------------
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_CALLED = re.compile(r"(?:body|condition|calls|to_apply|branch_computations)=\{?%?([\w.\-,% ]+)\}?")
_COLLECTIVE = re.compile(r"= (\w+)\[([\d,]*)\][^ ]* (all-gather|reduce-scatter)(?:-start)?\((.*)")


def _computations(hlo: str) -> dict[str, list[str]]:
    comps, name = {}, None
    for line in hlo.splitlines():
        m = _COMPUTATION.match(line)
        if m and not line.startswith(" "):
            name = m.group(1)
            comps[name] = []
        elif name is not None:
            comps[name].append(line)
    return comps


def _while_body_lines(hlo: str) -> list[str]:
    """Every instruction of the while loops' bodies, and of what they call (fusions, nested
    loops, conditionals), in the compiled HLO."""
    comps = _computations(hlo)
    todo = [
        m.group(1)
        for lines in comps.values()
        for line in lines
        if " while(" in line
        for m in [re.search(r"body=%?([\w.\-]+)", line)]
        if m
    ]
    seen, out = set(), []
    while todo:
        name = todo.pop()
        if name in seen or name not in comps:
            continue
        seen.add(name)
        for line in comps[name]:
            out.append(line)
            for m in _CALLED.finditer(line):
                todo += [c.strip().lstrip("%") for c in m.group(1).split(",")]
    return out


def _weight_shapes() -> set[tuple[int, ...]]:
    """Every weight's shape and, for stacked (scanned) weights, one layer's, rank >= 2."""
    shapes = set()
    for leaf in jax.tree.leaves(nn.unbox(_abstract()["params"])):
        shapes.add(tuple(leaf.shape))
        shapes.add(tuple(leaf.shape[1:]))
    return {s for s in shapes if len(s) >= 2}


def _operand_shapes(text: str) -> list[tuple[int, ...]]:
    return [
        tuple(int(d) for d in dims.split(",") if d) for dims in re.findall(r"\w+\[([\d,]*)\]", text)
    ]


# XLA:CPU hoists loop-invariant collectives (a gathered weight) out of a while loop; XLA:TPU kept
# them inside (the README's training-layout decode rows: ~69 GB moved per chip per token at 7B).
# The checks below compile with that motion off, so a weight collective stays where the program
# puts it; the serving program must have none anywhere, which is stricter than "not in the body".
_NO_HOISTING = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}


def weight_collectives_in_decode(sample, params, mesh, rules) -> tuple[list[str], list[str]]:
    """The all-gather / reduce-scatter instructions whose input or output has the shape of a
    weight (or one layer of a stacked weight) in the compiled decode program: (those inside
    the decode loop's while body, those anywhere in the program)."""
    cache, logits = sample.prefill(params, _prompts(seed=2))
    cfg = dataclasses.replace(_cfg("greedy"), group_size=1, eos_ids=())
    with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
        lowered = sampler_lib._decode.lower(
            params,
            cache,
            logits,
            _keys(PROMPTS * G),
            np.full((4,), EOS, np.int32),
            model=Qwen25VL(CFG),
            cfg=cfg,
            rules=tuple(rules),
            unroll=1,
        )
    hlo = lowered.compile(compiler_options=_NO_HOISTING).as_text()
    body = _while_body_lines(hlo)
    assert any(" dot(" in line or "fusion(" in line for line in body), "no while body found"
    weights = _weight_shapes()

    def hits(lines):
        out = []
        for line in lines:
            m = _COLLECTIVE.search(line)
            if not m:
                continue
            shape = tuple(int(d) for d in m.group(2).split(",") if d)
            if shape in weights or any(s in weights for s in _operand_shapes(m.group(4))):
                out.append(line.strip()[:160])
        return out

    return hits(body), hits(hlo.splitlines())


def test_training_layout_gathers_weights_in_the_decode_loop():
    """The check can fail: today's sampler on the training layout (FSDP over 8 chips) gathers
    every weight inside the loop, every token."""
    params, _ = _train_params()
    sample = make_sampler(Qwen25VL(CFG), _cfg("greedy"), mesh=_train_mesh(), rules=RULES)
    in_body, anywhere = weight_collectives_in_decode(sample, params, _train_mesh(), RULES)
    # q, k, v, o, gate, up, down per layer (norms and biases are 1-D), and the unembedding
    assert len(in_body) >= 7 * CFG.text.num_hidden_layers + 1, in_body
    assert set(in_body) <= set(anywhere)


@pytest.mark.parametrize("tensor", [t for t, _ in SERVING_MESHES])
def test_no_weight_collective_in_the_serving_decode_loop(tensor):
    layout = _layout(tensor)
    params = layout.reshard(_train_params()[0])
    sample = make_sampler(Qwen25VL(CFG), _cfg("greedy"), mesh=layout.mesh, rules=layout.rules)
    in_body, anywhere = weight_collectives_in_decode(sample, params, layout.mesh, layout.rules)
    assert in_body == [] and anywhere == []


# ---- 2. same tokens ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["greedy", "sampled"])
@pytest.mark.parametrize("tensor,rows", SERVING_MESHES)
def test_serving_tokens_equal_training_layout(tensor, rows, kind):
    layout = _layout(tensor)
    assert dict(layout.mesh.shape) == {"data": rows, "fsdp": 1, "tensor": tensor}
    params = layout.reshard(_train_params()[0])
    sample = make_sampler(Qwen25VL(CFG), _cfg(kind), mesh=layout.mesh, rules=layout.rules)
    out = sample(params, _prompts(seed=2), _keys(PROMPTS * G, seed=3))
    # Rows really are split over the serving rows, the cache by rows and KV heads.
    assert out.tokens.sharding.mesh.shape == layout.mesh.shape
    cache, _ = sample.prefill(params, _prompts(seed=2))
    assert cache.k.sharding.spec[1:3] in ((("data", "fsdp"), "tensor"), ("data", "tensor"))
    assert cache.k.sharding.shard_shape(cache.k.shape)[1:3] == (
        PROMPTS * G // rows,
        CFG.text.num_key_value_heads // tensor,
    )
    want = _training_layout_out(kind)
    np.testing.assert_array_equal(np.asarray(out.tokens), want.tokens)
    np.testing.assert_array_equal(np.asarray(out.lengths), want.lengths)
    np.testing.assert_allclose(np.asarray(out.logps), want.logps, atol=1e-4)
    if kind == "sampled":  # the keys matter: some prompt's G samples differ
        assert len({tuple(r) for r in want.tokens}) > PROMPTS


# ---- 3. the reshard program and the layout -----------------------------------------------------
def test_reshard_casts_to_model_dtype_and_splits_by_tensor():
    layout = _layout(4, jnp.bfloat16)
    params = layout.reshard(_train_params()[0])
    q = params["model"]["layers"]["self_attn"]["q_proj"]["kernel"]  # [N, D, heads]
    assert q.dtype == jnp.bfloat16
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, None, "tensor")
    assert q.sharding.shard_shape(q.shape) == (q.shape[0], q.shape[1], q.shape[2] // 4)
    emb = params["model"]["embed_tokens"]["embedding"]  # [V, D]: vocab split, embed whole
    assert emb.sharding.shard_shape(emb.shape) == (emb.shape[0] // 4, emb.shape[1])
    want = np.asarray(_host_params()["model"]["layers"]["self_attn"]["q_proj"]["kernel"])
    np.testing.assert_array_equal(
        np.asarray(q.astype(jnp.float32)), want.astype(jnp.bfloat16).astype(np.float32)
    )
    # the training params are untouched (float32, FSDP)
    train_q = _train_params()[0]["model"]["layers"]["self_attn"]["q_proj"]["kernel"]
    assert train_q.dtype == jnp.float32 and "fsdp" in str(train_q.sharding.spec)


def test_serving_rules_and_mesh():
    rules = dict(serving.serving_rules(RULES))
    assert rules["batch"] == ("data", "fsdp")
    assert rules["embed"] is None and rules["vision_embed"] is None
    assert rules["heads"] == rules["kv_heads"] == rules["act_kv_heads"] == "tensor"
    mesh = serving.serving_mesh(_train_mesh(), 2)
    assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "tensor": 2}
    # the training mesh's devices in their order: the reshard is one program
    assert list(mesh.devices.flat) == list(_train_mesh().devices.flat)
    with pytest.raises(ValueError, match="rl.serving.tensor"):
        serving.serving_mesh(_train_mesh(), 3)
    assert serving.auto_tensor(4, 28, 4) == 4  # 7B on a 4-chip host
    assert serving.auto_tensor(4, 16, 2) == 2  # 3B: 2 KV heads
    assert serving.auto_tensor(8, 40, 8) == 8
