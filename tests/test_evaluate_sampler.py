"""The sampler's repetition penalty == transformers' RepetitionPenaltyLogitsProcessor."""

import jax.numpy as jnp
import numpy as np
import pytest
from evaluate_fixtures import eval_config, shared_checkpoint, write_vstar

from o3video_jax.rl import sampler as sampler_lib


def test_penalty_matches_transformers_processor():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    rng = np.random.default_rng(0)
    v, n, length = 50, 3, 7
    logits = rng.normal(size=(n, v)).astype(np.float32) * 3
    ids = rng.integers(0, v, (n, length)).astype(np.int32)
    seg = np.ones((n, length), np.int32)
    seg[1, :3] = 0  # left padding: not part of the prompt
    ids[1, :3] = 49  # a pad id that appears nowhere else
    ids[ids == 49] = 48
    ids[1, :3] = 49
    seen = sampler_lib.prompt_tokens_seen(ids, seg, vocab=v, group_size=1)
    got = np.asarray(sampler_lib.apply_repetition_penalty(jnp.asarray(logits), seen, 1.05))
    proc = transformers.RepetitionPenaltyLogitsProcessor(1.05)
    for r in range(n):
        real = torch.tensor(ids[r][seg[r] != 0][None].astype(np.int64))
        want = proc(real, torch.tensor(logits[r : r + 1])).numpy()[0]
        np.testing.assert_allclose(got[r], want, rtol=1e-6)
    assert got[1, 49] == logits[1, 49]  # padding is not "present"


def test_seen_repeats_to_the_group_and_config_validates():
    ids = np.array([[1, 2], [3, 3]], np.int32)
    seen = np.asarray(sampler_lib.prompt_tokens_seen(ids, np.ones_like(ids), vocab=5, group_size=2))
    assert seen.shape == (4, 5)
    assert seen[0].tolist() == seen[1].tolist() == [False, True, True, False, False]
    assert seen[3].tolist() == [False, False, False, True, False]
    with pytest.raises(ValueError, match="repetition_penalty"):
        sampler_lib.SamplingConfig(max_new_tokens=4, repetition_penalty=0.0)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return shared_checkpoint(tmp_path_factory)


@pytest.mark.live_hf
def test_greedy_with_penalty_equals_transformers_generate(ckpt, tmp_path):
    """The whole decode loop (prompt tokens + generated ones penalised) against HF generate
    on a V-STaR call of the tiny model (frames as images: both M-RoPE rules agree)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from o3video_jax.checkpoints import hf
    from o3video_jax.data.tokenizer import Tokenizer
    from o3video_jax.drivers import experiment
    from o3video_jax.evaluate import benchmarks, runner
    from o3video_jax.evaluate.generate import Generator

    data, media = write_vstar(str(tmp_path), n=1)
    cfg = eval_config("vstar", ckpt, data, media)
    tok = Tokenizer.from_dir(ckpt)
    _, params = hf.load(ckpt, jnp.float32, progress=False)
    sampling = sampler_lib.SamplingConfig(
        max_new_tokens=cfg.eval.max_new_tokens, temperature=0.0,
        eos_ids=(tok.eos_id, tok.pad_id), pad_id=tok.pad_id, repetition_penalty=1.3,
    )  # fmt: skip
    gen = Generator(experiment.model_config(cfg), params, tok, sampling, batch_size=8,
                    buckets=cfg.eval.prompt_buckets, max_patches=cfg.eval.max_patches)  # fmt: skip
    item = benchmarks.read_benchmark("vstar", data, media).items[0]
    prep = runner._prepare("vstar", item, cfg.eval, True, tok, gen, 0)
    ours = gen(prep.requests[:2])
    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt).eval()
    for req, got in zip(prep.requests[:2], ours, strict=True):
        seg = req.segment
        ids = torch.tensor(np.asarray(seg.input_ids, np.int64)[None])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids),
                pixel_values=torch.tensor(np.concatenate([v.pixel_values for v in seg.vision])),
                image_grid_thw=torch.tensor([list(v.grid_thw) for v in seg.vision]),
                # without them transformers 5.x gives the prompt 1-D positions, not M-RoPE
                mm_token_type_ids=(ids == model.config.image_token_id).long(),
                do_sample=False, max_new_tokens=cfg.eval.max_new_tokens, repetition_penalty=1.3,
                eos_token_id=[tok.eos_id, tok.pad_id], pad_token_id=tok.pad_id,
            )  # fmt: skip
        new = [int(x) for x in out[0, ids.shape[1] :]]
        if new and new[-1] in (tok.eos_id, tok.pad_id):
            new = new[:-1]
        assert got[0] == tok.decode(new)


def test_patch_buckets_same_outputs_smaller_vision_shape(ckpt, tmp_path, monkeypatch):
    """Each call pads its patches to the smallest patch bucket that fits (not the whole
    eval.max_patches), with the same greedy outputs as the single-shape generator."""
    from o3video_jax.checkpoints import hf
    from o3video_jax.data.tokenizer import Tokenizer
    from o3video_jax.drivers import experiment
    from o3video_jax.evaluate import benchmarks, generate, runner

    assert generate.default_patch_buckets(2048) == [64, 128, 256, 512, 1024, 2048]
    assert generate.default_patch_buckets(100) == [64, 100]
    data, media = write_vstar(str(tmp_path), n=2)
    cfg = eval_config("vstar", ckpt, data, media)
    tok = Tokenizer.from_dir(ckpt)
    _, params = hf.load(ckpt, jnp.float32, progress=False)
    mc = experiment.model_config(cfg)
    sampling = runner._sampling(cfg.eval, tok, 1, cfg.eval.max_new_tokens)
    kw = dict(batch_size=8, buckets=cfg.eval.prompt_buckets, max_patches=cfg.eval.max_patches)
    bucketed = generate.Generator(mc, params, tok, sampling, **kw)
    single = generate.Generator(mc, params, tok, sampling, patch_buckets=[kw["max_patches"]], **kw)
    assert single.patch_buckets == [cfg.eval.max_patches] == [2048]
    requests = [
        r
        for item in benchmarks.read_benchmark("vstar", data, media).items
        for r in runner._prepare("vstar", item, cfg.eval, True, tok, bucketed, 0).requests
    ]
    most = max(sum(v.num_patches for v in r.segment.vision) for r in requests)
    assert most <= 256  # 3-4 frames of 4x4 patches: a small bucket suffices
    shapes = []
    build = generate.build_model_inputs

    def spy(rows, config, **k):
        shapes.append(k["max_patches"])
        return build(rows, config, **k)

    monkeypatch.setattr(generate, "build_model_inputs", spy)
    got = bucketed(requests)
    small = list(shapes)
    want = single(requests)
    assert got == want
    assert max(small) <= 256 and shapes[len(small) :] == [2048] * len(small)
    with pytest.raises(ValueError, match="multiple of 4"):
        generate.Generator(mc, params, tok, sampling, patch_buckets=[66], **kw)
