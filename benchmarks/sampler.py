"""Rollout speed: our group sampler vs transformers' `generate`, and one GSPO step's split.

    python benchmarks/sampler.py [--repeats 5] [--quick]   # defaults below (CPU: ~2 minutes)
    python benchmarks/sampler.py --new_tokens 32 --prompts 2 --group 4

Greedy (same random fp32 model and prompts, outputs checked identical): tokens/s of
`Qwen2_5_VLForConditionalGeneration.generate(do_sample=False)` vs `rl.sampler` (jitted prefill
+ `lax.while_loop` decode), whole call and decode only (whole - prefill), after warm-up.

GSPO step (temperature 1.0, top-p 0.95, G samples per prompt): the time split of one step:
rollout (sampler), log-probs (reference forward over the B*G prompt+completion rows; the
rollout policy's log-probs come from the sampler), update (`gspo.make_gspo_update`).

Each of --repeats rounds times transformers and ours back to back; the table shows the median
and min-max over the rounds (`bench` returns them; `run_all.py` calls it).

Threads: transformers runs on one torch thread (its best case here), and by default the whole
process is pinned to one core before JAX starts (`--cores 1`, as `taskset -c 0` would), so
XLA:CPU runs every op on one thread too. A greedy decode step is a chain of ~130 small ops
(4-row matmuls of ~20 us, norms, softmax pieces); with XLA's 2-thread pool each fan-out in that
chain (q/k/v, gate/up) hands work to the other thread, whose wake-up costs tens of microseconds
on a VM (measured ~8 voluntary context switches per step): on the 2-core AMD EPYC VM a step
took 0.64-0.80 ms on one core and 0.75-1.5 ms on two. `--cores 0` uses every core.
"""

from __future__ import annotations

import argparse
import tempfile

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

try:
    from benchmarks import stats
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import stats

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


def block(tree):
    return jax.block_until_ready(tree)


def setup_greedy(model, config, params, hf_inputs, new_tokens):
    """(HF generate(n), our sampler, our inputs, keys, whether the tokens are identical)."""
    kw = {k: torch.from_numpy(v) for k, v in hf_inputs.items()}

    def generate(n):
        with torch.no_grad():
            return model.generate(
                **kw, do_sample=False, max_new_tokens=n, eos_token_id=EOS, pad_token_id=PAD
            )

    length = hf_inputs["input_ids"].shape[1]
    want = generate(new_tokens)[:, length:].numpy()
    cfg = sampler_lib.SamplingConfig(
        max_new_tokens=new_tokens, temperature=0.0, eos_ids=(EOS,), pad_id=PAD
    )
    sample = sampler_lib.make_sampler(Qwen25VL(config), cfg)
    ours_in = inputs_from_hf(config, **hf_inputs, rule="hf")
    keys = np.zeros((ours_in.batch_size, 2), np.uint32)
    out = block(sample(params, ours_in, keys))
    got = np.asarray(out.tokens)
    sample.n_tokens = int(np.asarray(out.lengths).sum())
    identical = np.array_equal(got[:, : want.shape[1]], want)
    if not identical:
        print("MISMATCH:\n", want, "\n", got)
    return generate, sample, ours_in, keys, identical


def greedy_repeat(result, generate, sample, params, ours_in, keys, new_tokens, inner):
    """One repeat, transformers and ours back to back: whole call and prefill-only times."""
    b = ours_in.batch_size
    hf_total = stats.timed(lambda: generate(new_tokens), inner)
    hf_prefill = stats.timed(lambda: generate(1), inner)
    ours_total = stats.timed(lambda: block(sample(params, ours_in, keys)), inner)
    ours_prefill = stats.timed(lambda: block(sample.prefill(params, ours_in)), inner)
    n_tokens = sample.n_tokens  # tokens up to each row's first EOS
    steps = new_tokens - 1  # decode steps after the token sampled from the prefill logits
    hf_decode = b * steps / (hf_total - hf_prefill)
    ours_decode = b * steps / (ours_total - ours_prefill)
    result.add("transformers generate: tokens/s, whole call", n_tokens / hf_total)
    result.add("o3video_jax sampler: tokens/s, whole call", n_tokens / ours_total)
    result.add("speed-up, whole call (x)", hf_total / ours_total)
    result.add("transformers: tokens/s, decode only", hf_decode)
    result.add("o3video_jax: tokens/s, decode only", ours_decode)
    result.add("speed-up, decode only (x)", ours_decode / hf_decode)
    result.add("transformers: prefill s", hf_prefill)
    result.add("o3video_jax: prefill s", ours_prefill)


def setup_gspo(config, params, hf_inputs, new_tokens, group):
    """(rollout(), ref_logprobs(), one_update()): the three phases of one GSPO step."""
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
    holder = [block(update(st, placed))[0]]  # compile

    def one_update():
        holder[0], _ = block(update(holder[0], placed))

    info = (b, int(inputs.seq_len), int(np.asarray(out.lengths).sum()))
    return rollout, lambda: block(ref_logprobs(params, inputs, targets)), one_update, info


def gspo_repeat(result, rollout, ref_logprobs, one_update):
    times = {"rollout": stats.timed(rollout), "ref log-probs": stats.timed(ref_logprobs)}
    times["update"] = stats.timed(one_update)
    total = sum(times.values())
    for name, t in times.items():
        result.add(f"GSPO step: {name} s", t)
    for name, t in times.items():
        result.add(f"GSPO step: {name} share %", 100 * t / total)
    result.add("GSPO step: total s", total)


def bench(
    repeats: int = 5,
    quick: bool = False,
    hidden: int = 256,
    layers: int = 4,
    prompts_n: int = 4,
    new_tokens: int = 64,
    group: int = 4,
    torch_threads: int = 1,
    inner: int = 2,
    cores: int = 1,
) -> stats.Result:
    """Greedy whole-call / decode-only tokens/s vs transformers `generate`, and the time split
    of one GSPO step; `repeats` rounds, transformers and ours back to back in each. `cores`:
    pin the process to that many cores first (0: all; see the module docstring)."""
    pinned = stats.pin_cores(cores)
    if quick:
        new_tokens, inner = min(new_tokens, 24), 1
    torch.set_num_threads(torch_threads)
    model = hf_model(hidden, layers)
    hf_inputs = prompts(prompts_n)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        config, params = hf.load(tmp, jnp.float32, progress=False)
    length = hf_inputs["input_ids"].shape[1]
    generate, sample, ours_in, keys, identical = setup_greedy(
        model, config, params, hf_inputs, new_tokens
    )
    rollout, ref_logprobs, one_update, (b, total_len, n_gen) = setup_gspo(
        config, params, hf_inputs, new_tokens, group
    )
    result = stats.Result(
        title=(
            "Sampler: o3video_jax rl.sampler vs transformers generate (greedy), GSPO step; "
            f"process on {pinned}"
        ),
        setup=(
            f"Random fp32 Qwen2.5-VL, text {hidden} x {layers} layers, vocab {VOCAB}; "
            f"{prompts_n} image prompts (L={length}) x {new_tokens} new tokens, greedy; process "
            f"pinned to {pinned}; torch threads {torch.get_num_threads()}, sdpa; XLA CPU thread "
            f"pool sized to the pinned cores; each repeat times transformers then "
            f"ours (mean of {inner} calls each). GSPO step: {b} prompts x G={group}, "
            f"temperature 1.0, top-p 0.95, L+T={total_len}, open_o3_video preset."
        ),
    )
    result.facts["identical greedy tokens"] = str(identical)
    for _ in range(repeats):
        greedy_repeat(result, generate, sample, params, ours_in, keys, new_tokens, inner)
        gspo_repeat(result, rollout, ref_logprobs, one_update)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    # One torch thread: on a small shared CPU, torch's spinning OpenMP threads made generate
    # up to 30x slower (2 threads, loaded 2-core box); one thread is its best case here.
    parser.add_argument("--torch_threads", type=int, default=1)
    parser.add_argument(
        "--cores", type=int, default=1, help="pin the process to this many cores (0: all)"
    )
    args = parser.parse_args()
    stats.pin_cores(args.cores)  # before jax.devices(): XLA sizes its thread pool at start
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); {stats.machine()}")
    load = stats.load_average()
    result = bench(
        args.repeats, args.quick, args.hidden, args.layers, args.prompts, args.new_tokens,
        args.group, args.torch_threads, cores=args.cores,
    )  # fmt: skip
    print(stats.table(result))
    print(f"load average before: {load}; after: {stats.load_average()}")


if __name__ == "__main__":
    main()
