"""Rollout speed: our group sampler vs transformers' `generate`, and one GSPO step's split.

    python benchmarks/sampler.py                 # defaults below (CPU: ~2 minutes)
    python benchmarks/sampler.py --new_tokens 32 --prompts 2 --group 4

Part 1 (greedy, same random fp32 model and prompts, outputs checked identical): tokens/s of
`Qwen2_5_VLForConditionalGeneration.generate(do_sample=False)` vs `rl.sampler` (jitted prefill
+ `lax.while_loop` decode), whole call and decode only (whole - prefill), after warm-up.

Part 2 (temperature 1.0, top-p 0.95, G samples per prompt): the time split of one GSPO step:
rollout (sampler), log-probs (reference forward over the B*G prompt+completion rows; the
rollout policy's log-probs come from the sampler), update (`gspo.make_gspo_update`).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from o3video_jax.checkpoints import hf
from o3video_jax.models.qwen2_5_vl import Qwen25VL
from o3video_jax.models.qwen2_5_vl.hf_inputs import inputs_from_hf
from o3video_jax.rl import gspo
from o3video_jax.rl import sampler as sampler_lib
from o3video_jax.train import losses, sharding, state

VOCAB, PAD, EOS = 512, 480, 482
VISION_START, VISION_END, IMAGE_PAD = 489, 490, 492
PATCH_DIM = 3 * 2 * 14 * 14


def hf_model(hidden: int, layers: int, seed: int = 0) -> Qwen2_5_VLForConditionalGeneration:
    """Random fp32 model with O(1) activations (HF's 0.02 init gives near-uniform logits)."""
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=VOCAB,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=hidden // 32,
            num_key_value_heads=max(hidden // 64, 1),
            rms_norm_eps=1e-6,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 1e6},
            bos_token_id=PAD,
            eos_token_id=EOS,
            tie_word_embeddings=False,
        ),
        vision_config=dict(
            depth=2,
            hidden_size=64,
            num_heads=2,
            intermediate_size=128,
            out_hidden_size=hidden,
            fullatt_block_indexes=[1],
            tokens_per_second=2,
            window_size=112,
        ),
        image_token_id=IMAGE_PAD,
        video_token_id=IMAGE_PAD + 1,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration._from_config(
        config, attn_implementation="sdpa", dtype=torch.float32
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif p.ndim == 1:
                p.copy_(1.0 + 0.1 * noise)
            elif "embed_tokens" in name:
                p.copy_(0.5 * noise)
            else:
                p.copy_(noise / np.sqrt(p[0].numel()))
    return model.eval()


def prompts(b: int, seed: int = 0) -> dict[str, np.ndarray]:
    """HF-processor-style arrays: b left-padded chat-like prompts with one image each."""
    rng = np.random.default_rng(seed)
    rows, pixels, grids = [], [], []
    for r in range(b):
        h, w = (4, 4 + 2 * (r % 3))
        ids = list(rng.integers(0, PAD, 5 + 3 * r)) + [VISION_START]
        ids += [IMAGE_PAD] * (h * w // 4) + [VISION_END] + list(rng.integers(0, PAD, 12))
        rows.append(ids)
        pixels.append(rng.normal(size=(h * w, PATCH_DIM)).astype(np.float32))
        grids.append((1, h, w))
    length = max(map(len, rows))
    out = {
        "input_ids": np.full((b, length), PAD, np.int64),
        "attention_mask": np.zeros((b, length), np.int64),
        "mm_token_type_ids": np.zeros((b, length), np.int64),
        "pixel_values": np.concatenate(pixels),
        "image_grid_thw": np.asarray(grids, np.int64),
    }
    for r, ids in enumerate(rows):
        ids = np.asarray(ids)
        out["input_ids"][r, length - len(ids) :] = ids
        out["attention_mask"][r, length - len(ids) :] = 1
        out["mm_token_type_ids"][r, length - len(ids) :] = ids == IMAGE_PAD
    return out


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def block(tree):
    return jax.block_until_ready(tree)


def part1(model, config, params, hf_inputs, new_tokens, repeats):
    kw = {k: torch.from_numpy(v) for k, v in hf_inputs.items()}

    def generate(n):
        with torch.no_grad():
            return model.generate(
                **kw, do_sample=False, max_new_tokens=n, eos_token_id=EOS, pad_token_id=PAD
            )

    length = hf_inputs["input_ids"].shape[1]
    want = generate(new_tokens)[:, length:].numpy()
    hf_total = best_of(lambda: generate(new_tokens), repeats)
    hf_prefill = best_of(lambda: generate(1), repeats)

    cfg = sampler_lib.SamplingConfig(
        max_new_tokens=new_tokens, temperature=0.0, eos_ids=(EOS,), pad_id=PAD
    )
    sample = sampler_lib.make_sampler(Qwen25VL(config), cfg)
    ours_in = inputs_from_hf(config, **hf_inputs, rule="hf")
    keys = np.zeros((ours_in.batch_size, 2), np.uint32)
    t0 = time.perf_counter()
    out = block(sample(params, ours_in, keys))
    compile_s = time.perf_counter() - t0
    got = np.asarray(out.tokens)
    identical = np.array_equal(got[:, : want.shape[1]], want)
    ours_total = best_of(lambda: block(sample(params, ours_in, keys)), repeats)
    ours_prefill = best_of(lambda: block(sample.prefill(params, ours_in)), repeats)

    b = ours_in.batch_size
    n_tokens = int(np.asarray(out.lengths).sum())
    steps = new_tokens - 1  # decode steps after the token sampled from the prefill logits
    rows = [
        ("whole call (s)", hf_total, ours_total),
        ("prefill (s)", hf_prefill, ours_prefill),
        ("tokens/s, whole call", n_tokens / hf_total, n_tokens / ours_total),
        (
            "tokens/s, decode only",
            b * steps / (hf_total - hf_prefill),
            b * steps / (ours_total - ours_prefill),
        ),
    ]
    print(f"\n## Greedy decode: B={b} prompts (L={length}, one image each), T={new_tokens}")
    print(f"identical tokens: {identical}; our compile + first call: {compile_s:.1f} s")
    print(f"{'':26s} {'transformers':>14s} {'o3video_jax':>14s} {'ratio':>8s}")
    for name, theirs, ours in rows:
        ratio = ours / theirs if "tokens" in name else theirs / ours
        print(f"{name:26s} {theirs:14.4g} {ours:14.4g} {ratio:7.1f}x")
    if not identical:
        print("MISMATCH:\n", want, "\n", got)


def part2(config, params, hf_inputs, new_tokens, group, repeats):
    model = Qwen25VL(config)
    prompt = inputs_from_hf(config, **hf_inputs, rule="hf")
    b = prompt.batch_size
    cfg = sampler_lib.SamplingConfig(
        max_new_tokens=new_tokens,
        temperature=1.0,
        top_p=0.95,
        eos_ids=(EOS,),
        pad_id=PAD,
        group_size=group,
    )
    sample = sampler_lib.make_sampler(model, cfg)
    keys = jax.random.key_data(jax.random.split(jax.random.key(0), b * group))

    def rollout():
        out = sample(params, prompt, keys)
        inputs, mask = sampler_lib.completion_inputs(prompt, out, group_size=group)
        return block((out, inputs, *sampler_lib.shift_targets(inputs, mask, out.logps)))

    @jax.jit
    def ref_logprobs(params, inputs, targets):
        variables = {"params": params}
        hidden = model.apply(variables, inputs, method="hidden_states")
        unembed = lambda h: model.apply(variables, h, method="unembed")
        return losses.token_logprobs(hidden, targets, unembed, chunk=64)[0]

    out, inputs, targets, mask, old = rollout()
    ref = block(ref_logprobs(params, inputs, targets))
    rewards = np.random.default_rng(0).random(b * group).astype(np.float32)
    batch = {
        "inputs": jax.device_get(inputs),
        "targets": np.asarray(targets),
        "mask": np.asarray(mask),
        "advantages": np.asarray(gspo.group_advantages(rewards, group)),
        "old_logp": np.asarray(old),
        "ref_logp": np.asarray(ref),
    }
    optimizer = dict(
        lr=1e-6, schedule="constant", warmup_steps=0, total_steps=10, weight_decay=0.0,
        b1=0.9, b2=0.999, eps=1e-8, grad_clip=1.0, freeze_regex="", microbatches=1,
    )  # fmt: skip
    gcfg = ml_collections.ConfigDict(
        dict(
            gspo=gspo.presets()["open_o3_video"],
            optimizer=optimizer,
            loss=dict(chunk=64),
            nan_policy="skip",
        )
    )
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    tx = state.make_optimizer(gcfg.optimizer)
    st, shardings = sharding.make_sharded_state(
        lambda k: params, tx, jax.random.PRNGKey(0), mesh, sharding.DEFAULT_RULES
    )
    update = gspo.make_gspo_update(model, gcfg, mesh, shardings)
    placed = sharding.shard_batch(batch, mesh)
    st, _ = block(update(st, placed))  # compile

    def one_update():
        nonlocal st
        st, m = block(update(st, placed))

    t_roll = best_of(rollout, repeats)
    t_logp = best_of(lambda: block(ref_logprobs(params, inputs, targets)), repeats)
    t_upd = best_of(one_update, repeats)
    total = t_roll + t_logp + t_upd
    n = b * group
    print(f"\n## One GSPO step: {b} prompts x G={group}, T={new_tokens}, L+T={inputs.seq_len}")
    print(f"(open_o3_video preset: temperature 1.0, top-p 0.95; tokens generated: "
          f"{int(np.asarray(out.lengths).sum())})")  # fmt: skip
    print(f"{'phase':34s} {'seconds':>10s} {'share':>7s}")
    for name, t in (
        (f"rollout (prefill {b} + decode {n})", t_roll),
        (f"ref log-probs ({n} rows)", t_logp),
        ("update (fwd+bwd+adam)", t_upd),
        ("total", total),
    ):
        print(f"{name:34s} {t:10.4f} {100 * t / total:6.1f}%")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    # One torch thread: on a small shared CPU, torch's spinning OpenMP threads made generate
    # up to 30x slower (2 threads, loaded 2-core box); one thread is its best case here.
    parser.add_argument("--torch_threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); torch threads: "
          f"{torch.get_num_threads()}; model: text {args.hidden} x {args.layers} layers, "
          f"vocab {VOCAB}, fp32")  # fmt: skip
    model = hf_model(args.hidden, args.layers)
    hf_inputs = prompts(args.prompts)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        config, params = hf.load(tmp, jnp.float32, progress=False)
    part1(model, config, params, hf_inputs, args.new_tokens, args.repeats)
    part2(config, params, hf_inputs, args.new_tokens, args.group, args.repeats)


if __name__ == "__main__":
    main()
