"""Hugging Face checkpoint import / export (`o3video_jax.checkpoints.hf`)."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import pathlib
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file, save_file

from o3video_jax.checkpoints import hf, layout
from o3video_jax.models.qwen2_5_vl import Qwen25VL, Qwen25VLConfig, inputs_from_hf
from o3video_jax.train.sharding import DEFAULT_RULES

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
UNTIED = FIXTURES / "golden" / "models" / "untied"  # written by transformers' save_pretrained
TIED = FIXTURES / "golden" / "models" / "tied"


@functools.cache
def _golden():
    spec = importlib.util.spec_from_file_location("make_hf_golden", FIXTURES / "make_hf_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flat(params) -> dict[str, np.ndarray]:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}


def _assert_same_params(a, b):
    fa, fb = _flat(a), _flat(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        assert fa[k].dtype == fb[k].dtype, k
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def _copy(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    shutil.copytree(src, dst)
    return dst


def _random_params(config: Qwen25VLConfig, seed: int = 0):
    """Params with O(1) activations (the init's 0.02 scale would make logits near zero)."""
    abstract = traverse_util.flatten_dict(nn.meta.unbox(hf.abstract_params(config)))
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in abstract.items():
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if path[-1] == "bias":
            value = 0.1 * noise
        elif path[-1] == "scale":
            value = 1.0 + 0.1 * noise
        elif path[-1] == "embedding":
            value = 0.25 * noise
        else:
            value = noise / np.sqrt(leaf.shape[0])
        out[path] = jnp.asarray(value)
    return traverse_util.unflatten_dict(out)


# ---- load --------------------------------------------------------------------------------
def test_load_maps_every_hf_tensor(tmp_path):
    """Each HF tensor lands at its path with the layout change (transpose / conv reshape)."""
    pytest.importorskip("torch")
    model = _golden().build_model(tied=False, seed=5)
    model.save_pretrained(tmp_path)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    _, params = hf.load(tmp_path, progress=False)
    flat = _flat(params)
    assert len(flat) == len(state)
    for key, w in state.items():
        name = key.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        path = name.removesuffix(".weight").removesuffix(".bias")
        path = path.replace(".", "/").replace("patch_embed/proj", "patch_embed")
        for part in ("blocks", "layers", "mlp"):
            path = _rejoin_index(path, part)
        if name.endswith(".bias"):
            np.testing.assert_array_equal(flat[path + "/bias"], w, err_msg=key)
        elif "patch_embed" in name:
            np.testing.assert_array_equal(flat[path + "/kernel"], w.reshape(w.shape[0], -1).T)
        elif w.ndim == 2 and "embed_tokens" in name:
            np.testing.assert_array_equal(flat[path + "/embedding"], w, err_msg=key)
        elif w.ndim == 2:
            np.testing.assert_array_equal(flat[path + "/kernel"], w.T, err_msg=key)
        else:
            np.testing.assert_array_equal(flat[path + "/scale"], w, err_msg=key)


def _rejoin_index(path: str, part: str) -> str:
    """'model/layers/0/mlp' -> 'model/layers_0/mlp' (only for numeric children)."""
    pieces = path.split("/")
    out = []
    for p in pieces:
        if out and out[-1] == part and p.isdigit():
            out[-1] = f"{part}_{p}"
        else:
            out.append(p)
    return "/".join(out)


def test_load_sharded_hf_checkpoint_equals_single_file(tmp_path):
    pytest.importorskip("torch")
    model = _golden().build_model(tied=False, seed=0)
    model.save_pretrained(tmp_path, max_shard_size="200KB")
    index = json.loads((tmp_path / hf.INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) >= 3
    config, params = hf.load(tmp_path, progress=False)
    config_single, params_single = hf.load(UNTIED, progress=False)
    assert config == config_single
    _assert_same_params(params, params_single)


def test_load_reads_5x_key_layout_and_bf16(tmp_path):
    tensors = load_file(UNTIED / "model.safetensors")
    renamed = {}
    for k, v in tensors.items():
        if k.startswith("visual."):
            k = "model." + k
        elif k.startswith("model."):
            k = "model.language_model." + k.removeprefix("model.")
        renamed[k] = v
    # bf16 on disk: numpy cannot hold it in safetensors' own reader, ours must.
    bf16_dir = tmp_path / "bf16"
    bf16_dir.mkdir()
    shutil.copy(UNTIED / "config.json", bf16_dir / "config.json")
    hf.safetensors_io.write(
        bf16_dir / "model.safetensors",
        [(k, v.shape, np.dtype(ml_dtypes.bfloat16)) for k, v in renamed.items()],
        lambda k: renamed[k].astype(ml_dtypes.bfloat16),
    )
    _, params = hf.load(bf16_dir, progress=False)
    _, reference = hf.load(UNTIED, progress=False)
    rounded = jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32), reference)
    _assert_same_params(params, rounded)


def test_tied_checkpoint_without_and_with_lm_head(tmp_path):
    assert "lm_head.weight" not in load_file(TIED / "model.safetensors")
    config, params = hf.load(TIED, progress=False)
    assert config.tie_word_embeddings and "lm_head" not in params
    # An exporter that also writes the tied lm_head: ignored, same params.
    with_head = _copy(TIED, tmp_path / "with_head")
    tensors = load_file(with_head / "model.safetensors")
    tensors["lm_head.weight"] = np.ones_like(tensors["model.embed_tokens.weight"])
    save_file(tensors, with_head / "model.safetensors", metadata={"format": "pt"})
    _, params_with_head = hf.load(with_head, progress=False)
    _assert_same_params(params_with_head, params)


# ---- bad checkpoints ---------------------------------------------------------------------
def _edit(tmp_path, edit) -> pathlib.Path:
    ckpt = _copy(UNTIED, tmp_path / "ckpt")
    tensors = load_file(ckpt / "model.safetensors")
    edit(tensors)
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    return ckpt


def test_missing_tensor_is_named(tmp_path):
    ckpt = _edit(tmp_path, lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"))
    with pytest.raises(ValueError, match=r"missing .*model\.layers\.1\.self_attn\.k_proj\.bias"):
        hf.load(ckpt, progress=False)


def test_missing_lm_head_of_untied_checkpoint_is_named(tmp_path):
    ckpt = _edit(tmp_path, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(ValueError, match=r"missing .*lm_head\.weight"):
        hf.load(ckpt, progress=False)


def test_wrong_shape_is_named(tmp_path):
    def edit(t):
        t["visual.blocks.2.mlp.up_proj.weight"] = np.zeros((48, 31), np.float32)

    with pytest.raises(ValueError, match=r"visual\.blocks\.2\.mlp\.up_proj\.weight.*\(48, 31\)"):
        hf.load(_edit(tmp_path, edit), progress=False)


def test_unexpected_tensor_is_named(tmp_path):
    ckpt = _edit(
        tmp_path, lambda t: t.update({"model.layers.2.mlp.up_proj.weight": t["lm_head.weight"]})
    )
    with pytest.raises(ValueError, match=r"unexpected .*model\.layers\.2\.mlp\.up_proj\.weight"):
        hf.load(ckpt, progress=False)


def test_other_architecture_is_rejected(tmp_path):
    ckpt = _copy(UNTIED, tmp_path / "llama")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="llama"):
        hf.load(ckpt, progress=False)


# ---- save --------------------------------------------------------------------------------
def _tiny_config() -> Qwen25VLConfig:
    return Qwen25VLConfig.preset("tiny")


def test_save_load_round_trip_single_and_sharded(tmp_path):
    config = _tiny_config()
    params = _random_params(config, seed=1)
    hf.save(tmp_path / "single", config, params, progress=False)
    assert sorted(p.name for p in (tmp_path / "single").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    hf.save(tmp_path / "sharded", config, params, max_shard_size="100KB", progress=False)
    index = json.loads((tmp_path / "sharded" / hf.INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 4 and all((tmp_path / "sharded" / s).exists() for s in shards)
    for name in ("single", "sharded"):
        loaded_config, loaded = hf.load(tmp_path / name, progress=False)
        assert loaded_config == config
        _assert_same_params(loaded, params)
    # Export in bf16: stored as BF16, reloads as the bf16 rounding of the params.
    hf.save(tmp_path / "bf16", config, params, dtype=jnp.bfloat16, progress=False)
    header = hf.safetensors_io.SafetensorsFile(tmp_path / "bf16" / "model.safetensors")
    assert {header.dtype(k) for k in header.keys()} == {np.dtype(ml_dtypes.bfloat16)}
    _, loaded_bf16 = hf.load(tmp_path / "bf16", jnp.bfloat16, progress=False)
    _assert_same_params(loaded_bf16, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))


def test_saved_checkpoint_runs_in_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = _tiny_config()
    params = _random_params(config, seed=2)
    hf.save(tmp_path, config, params, progress=False)
    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        tmp_path, attn_implementation="eager", dtype=torch.float32
    ).eval()
    rows = [
        [("text", 2), ("image", (1, 4, 6)), ("text", 2), ("video", (2, 4, 4), 1.0), ("text", 2)],
        [("text", 3), ("image", (1, 6, 4)), ("text", 3)],
    ]
    hf_inputs = _golden().make_inputs(rows, seed=7)
    expected = _golden().hf_logits(model, hf_inputs)
    inputs = inputs_from_hf(config, **hf_inputs)
    got = np.asarray(jax.jit(Qwen25VL(config).apply)({"params": params}, inputs))
    mask = hf_inputs["attention_mask"] == 1
    np.testing.assert_allclose(got[mask], expected[mask], atol=1e-4, rtol=0)


def test_save_rejects_params_of_another_config(tmp_path):
    config = _tiny_config()
    params = _random_params(config)
    with pytest.raises(ValueError, match="lm_head"):
        hf.save(tmp_path, config.replace(tie_word_embeddings=True), params, progress=False)


# ---- sharded load ------------------------------------------------------------------------
def test_load_onto_mesh_places_shards(tmp_path):
    devices = np.asarray(jax.devices()[:8]).reshape(2, 2, 2)
    mesh = Mesh(devices, ("data", "fsdp", "tensor"))
    _, params = hf.load(UNTIED, mesh=mesh, rules=DEFAULT_RULES, progress=False)
    _, reference = hf.load(UNTIED, progress=False)
    flat = traverse_util.flatten_dict(params)
    # Hand-derived from the default rules: embed -> fsdp, heads/vocab/mlp -> tensor,
    # vision_embed -> fsdp, norms and patch_dim replicated.
    expected = {
        ("model", "layers_0", "self_attn", "q_proj", "kernel"): P("fsdp", "tensor"),
        ("model", "layers_0", "self_attn", "q_proj", "bias"): P("tensor"),
        ("model", "layers_1", "mlp", "down_proj", "kernel"): P("tensor", "fsdp"),
        ("model", "embed_tokens", "embedding"): P("tensor", "fsdp"),
        ("model", "norm", "scale"): P(),
        ("lm_head", "kernel"): P("fsdp", "tensor"),
        ("visual", "patch_embed", "kernel"): P(None, "fsdp"),
        ("visual", "blocks_0", "attn", "qkv", "kernel"): P("fsdp", "tensor"),
    }
    for path, spec in expected.items():
        x = flat[path]
        want = NamedSharding(mesh, spec)
        assert x.sharding.is_equivalent_to(want, x.ndim), (path, x.sharding)
    q = flat[("model", "layers_0", "self_attn", "q_proj", "kernel")]
    assert q.addressable_shards[0].data.shape == (q.shape[0] // 2, q.shape[1] // 2)
    _assert_same_params(params, reference)


def test_special_ids_outside_a_small_vocabulary_load_with_a_warning(tmp_path):
    """Tiny Hub checkpoints keep Qwen's bos/eos/pad (151643/151645) with a vocabulary of 512.

    transformers loads them; so must we. The ids are not used by the forward pass: filler
    positions use an in-vocabulary id and the logits equal those of the in-vocabulary config.
    """
    path = _copy(UNTIED, tmp_path / "big_ids")
    cfg = json.loads((path / "config.json").read_text())
    cfg["text_config"].update(bos_token_id=151643, eos_token_id=151645, pad_token_id=151643)
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="outside the vocabulary"):
        config, params = hf.load(path, progress=False)
    ref_config, ref_params = hf.load(UNTIED, progress=False)
    _assert_same_params(params, ref_params)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        151643,
        151645,
        151643,
    )
    assert config.padding_id == 0 and ref_config.padding_id == 480
    # Right padding up to max_seq_len writes filler ids; the valid positions must not change.
    ids = np.array([[5, 9, 33, 7, 1], [8, 2, 4, 0, 0]], np.int32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32)
    out = {}
    for name, c, p in (("big", config, params), ("ref", ref_config, ref_params)):
        inputs = inputs_from_hf(c, input_ids=ids, attention_mask=mask, max_seq_len=8)
        assert int(np.asarray(inputs.input_ids).max()) < c.vocab_size
        out[name] = np.asarray(Qwen25VL(c).apply({"params": p}, inputs))
    assert np.isfinite(out["big"]).all()
    valid = np.pad(mask, ((0, 0), (0, 3))).astype(bool)
    np.testing.assert_allclose(out["big"][valid], out["ref"][valid], rtol=1e-5, atol=1e-5)
    # Export keeps the checkpoint's ids, so the round trip is exact.
    hf.save(tmp_path / "out", config, params, progress=False)
    with pytest.warns(UserWarning, match="outside the vocabulary"):
        again, _ = hf.load(tmp_path / "out", progress=False)
    assert again == config
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.AutoConfig.from_pretrained(path)
    assert hf_cfg.text_config.bos_token_id == 151643


def test_export_keeps_the_source_config_exactly_and_loads_in_transformers(tmp_path):
    """A config.json without pad_token_id and a 300-token vocabulary: the export's config.json
    equals the source's (no pad id invented: Qwen's 151643 made transformers refuse the
    export, "Padding_idx must be within num_embeddings"), and transformers runs it."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    source = json.loads((UNTIED / "config.json").read_text())
    text = source["text_config"]
    del text["pad_token_id"]
    text.update(vocab_size=300, bos_token_id=151643, eos_token_id=151645)
    source.update(image_token_id=292, video_token_id=293, vision_start_token_id=289,
                  vision_end_token_id=290, extra_key_kept="as is")  # fmt: skip
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(source))
    with pytest.warns(UserWarning, match="outside the vocabulary"):
        config = Qwen25VLConfig.from_hf_json(src)
    assert config.vocab_size == 300
    hf.save(src, config, _random_params(config, seed=3), progress=False)
    assert json.loads((src / "config.json").read_text()) == source

    with pytest.warns(UserWarning, match="outside the vocabulary"):
        loaded_config, params = hf.load(src, progress=False)
    hf.save(tmp_path / "out", loaded_config, params, progress=False)
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    assert exported == source and "pad_token_id" not in exported["text_config"]
    # An edited config no longer matches its source: a generated config without the pad id.
    edited = loaded_config.replace(text=dataclasses.replace(loaded_config.text, vocab_size=320))
    assert "pad_token_id" not in edited.to_hf_dict()["text_config"]
    assert edited.to_hf_dict()["text_config"]["vocab_size"] == 320

    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        tmp_path / "out", attn_implementation="eager", dtype=torch.float32
    ).eval()
    assert model.config.text_config.pad_token_id is None
    ids = np.array([[5, 9, 33, 7, 299, 1]], np.int64)
    with torch.no_grad():
        expected = model(input_ids=torch.from_numpy(ids)).logits.numpy()
    assert expected.shape == (1, 6, 300)
    inputs = inputs_from_hf(loaded_config, input_ids=ids, attention_mask=np.ones_like(ids))
    got = np.asarray(Qwen25VL(loaded_config).apply({"params": params}, inputs))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


# ---- scanned layout (stacked layers) -------------------------------------------------------
def _safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_scanned_layout_round_trip_is_exact_single_and_sharded(tmp_path):
    """Stacked params export to the same per-layer tensors as the unrolled ones, and load back
    exactly into either layout, from one file or index-listed shards."""
    config = _tiny_config()
    params = _random_params(config, seed=2)
    stacked = layout.stack_layers(params)
    assert stacked["model"]["layers"]["self_attn"]["q_proj"]["kernel"].shape[0] == 2
    for kw, name in (({}, "single"), ({"max_shard_size": "100KB"}, "sharded")):
        hf.save(tmp_path / f"u_{name}", config, params, progress=False, **kw)
        hf.save(
            tmp_path / f"s_{name}", config.replace(scan_layers=True), stacked, progress=False, **kw
        )
        a, b = _safetensors(tmp_path / f"u_{name}"), _safetensors(tmp_path / f"s_{name}")
        assert sorted(a) == sorted(b) and "model.layers.1.mlp.up_proj.weight" in b
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        if name == "sharded":
            index = lambda d: json.loads((tmp_path / d / hf.INDEX_FILE).read_text())
            assert index(f"u_{name}") == index(f"s_{name}")
            assert len(set(index(f"s_{name}")["weight_map"].values())) >= 4
        loaded_config, loaded = hf.load(tmp_path / f"s_{name}", progress=False, scan_layers=True)
        assert loaded_config == config.replace(scan_layers=True)
        _assert_same_params(loaded, stacked)
        _, unrolled = hf.load(tmp_path / f"s_{name}", progress=False)
        _assert_same_params(unrolled, params)


def test_scanned_load_onto_mesh_places_stacked_shards():
    devices = np.asarray(jax.devices()[:8]).reshape(2, 2, 2)
    mesh = Mesh(devices, ("data", "fsdp", "tensor"))
    _, params = hf.load(UNTIED, mesh=mesh, rules=DEFAULT_RULES, progress=False, scan_layers=True)
    _, reference = hf.load(UNTIED, progress=False)
    flat = traverse_util.flatten_dict(params)
    # The layer axis is never sharded; the rest as in the unrolled layout.
    expected = {
        ("model", "layers", "self_attn", "q_proj", "kernel"): P(None, "fsdp", "tensor"),
        ("model", "layers", "self_attn", "q_proj", "bias"): P(None, "tensor"),
        ("model", "layers", "mlp", "down_proj", "kernel"): P(None, "tensor", "fsdp"),
        ("model", "layers", "input_layernorm", "scale"): P(),
        ("visual", "blocks", "attn", "qkv", "kernel"): P(None, "fsdp", "tensor"),
        ("visual", "patch_embed", "kernel"): P(None, "fsdp"),
    }
    for path, spec in expected.items():
        x = flat[path]
        assert x.sharding.is_equivalent_to(NamedSharding(mesh, spec), x.ndim), (path, x.sharding)
    q = flat[("model", "layers", "self_attn", "q_proj", "kernel")]
    assert q.addressable_shards[0].data.shape == (q.shape[0], q.shape[1] // 2, q.shape[2] // 2)
    _assert_same_params(layout.unstack_layers(jax.device_get(params)), reference)


def test_export_keeps_the_source_config_under_runtime_knobs(tmp_path):
    """scan_layers, remat, attention and the attention chunks are runtime knobs: a config loaded
    from a file and run scanned still exports the source's config.json unchanged."""
    source = json.loads((UNTIED / "config.json").read_text())
    source["extra_key_kept"] = "as is"
    (tmp_path / "config.json").write_text(json.dumps(source))
    config = Qwen25VLConfig.from_hf_json(tmp_path)
    run = config.replace(
        scan_layers=True,
        remat="full",
        vision=dataclasses.replace(config.vision, max_frame_patches=64, attention_chunk=32),
        text=dataclasses.replace(config.text, attention_chunk=16),
    )
    assert run.to_hf_dict() == config.to_hf_dict() == source
    out = tmp_path / "out"
    hf.save(out, run, layout.stack_layers(_random_params(config, seed=4)), progress=False)
    assert json.loads((out / "config.json").read_text()) == source
