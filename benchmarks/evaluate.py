r"""Items/s of `o3video_jax.evaluate` vs a transformers `generate` loop on the same V-STaR items.

    python benchmarks/evaluate.py [--items 4] [--repeats 5] [--max_new_tokens 16]

A tiny random Qwen2.5-VL (the tests' tiny preset, saved in HF layout with its tokenizer)
answers the five V-STaR calls of every item (frames as images), greedy with repetition penalty
1.05 on both sides. Its weights are redrawn with O(1) activations, as benchmarks/sampler.py
does: the preset's 0.02 init gives near-uniform logits (max |logit| ~0.6, a top-1/top-2 margin
under 1e-4 at ~1 greedy step in 300), where any float32 rounding may pick the other token.
The table reports the smallest margin the reference met, to show greedy decoding is decided.

Ours: the whole `runner.evaluate` (checkpoint load, frame decoding, prompts, tokenization,
batched sampler calls, parsing, the JSONL) in a warm process (compiles excluded: one warm-up
run first), and our sampler calls alone over the same requests. Reference:
`Qwen2_5_VLForConditionalGeneration.generate` over the very same token ids and pixels, one
request at a time (as the reference scripts call their engine), timing generate only. It is
given `mm_token_type_ids` (which image pads are image tokens): without them transformers 5.x
silently uses 1-D text positions for the whole prompt instead of M-RoPE (a different model;
logits off by up to 3e-3 on the preset's weights, enough to flip its near-ties).

Each repeat times the reference, our whole command and our sampler calls back to back; every
repeat's outputs are compared with the reference's (the table counts identical calls; the
script exits non-zero on any difference). Threads: torch runs on one thread by default (its
best case on a small shared CPU: with 2 threads on a loaded 2-core box its spinning OpenMP
threads slowed this loop to 0.13-0.15 items/s at 16 tokens, load averages 9-13, against
10.8-12.3 on a quiet box; `--torch_threads 0` for every core); XLA uses every core.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))

try:
    from benchmarks import stats
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import stats

# runner.evaluate's record field of each V-STaR call
FIELDS = {"vqa": "answer_vqa_raw_output", "temporal": "answer_temporal_pre",
          "spatial": "answer_spatial_pre", "spatial_2": "answer_spatial_pre_2",
          "temporal_2": "answer_temporal_pre_2"}  # fmt: skip


def clear_margin_checkpoint(directory: str, seed: int = 0) -> str:
    """The tests' tiny checkpoint (config, tokenizer) with its weights redrawn as
    benchmarks/sampler.py draws them: O(1) activations, so greedy margins are clear."""
    import torch
    import transformers
    from evaluate_fixtures import tiny_checkpoint

    tiny_checkpoint(directory, seed)
    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        directory, dtype=torch.float32
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
    model.save_pretrained(directory)
    return directory


def bench(
    repeats: int = 5,
    quick: bool = False,
    items: int = 4,
    max_new_tokens: int = 16,
    batch_size: int = 8,
    torch_threads: int = 1,
) -> stats.Result:
    """Items/s of the reference loop, our whole command and our sampler calls, back to back in
    each of `repeats` rounds; ratios per round; identical outputs counted over every round.
    quick: 2 items and at most 16 new tokens."""
    import jax
    import jax.numpy as jnp
    import torch
    import transformers
    from evaluate_fixtures import eval_config, write_vstar

    from o3video_jax.checkpoints import hf
    from o3video_jax.data.tokenizer import Tokenizer
    from o3video_jax.drivers import experiment
    from o3video_jax.evaluate import benchmarks, read_log, runner
    from o3video_jax.evaluate.generate import Generator

    if quick:
        items, max_new_tokens = min(items, 2), min(max_new_tokens, 16)
    torch.set_num_threads(torch_threads or os.cpu_count() or 1)
    root = tempfile.mkdtemp(prefix="bench_eval_")
    ckpt = clear_margin_checkpoint(os.path.join(root, "ckpt"))
    data, media = write_vstar(os.path.join(root, "vstar"), n=items)
    cfg = eval_config("vstar", ckpt, data, media, max_new_tokens=max_new_tokens,
                      batch_size=batch_size, render_items=0)  # fmt: skip
    with cfg.unlocked():
        cfg.mesh.update({"data": -1, "fsdp": 1, "tensor": 1})
    penalty = cfg.eval.repetition_penalty

    def ours(tag):
        wd = os.path.join(root, f"ours_{tag}")
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            runner.evaluate(cfg, wd)
        return time.perf_counter() - t, read_log(os.path.join(wd, "items.jsonl"))

    ours("warm")  # compiles

    # the same requests, built by the same code, for the transformers loop and the sampler
    tok = Tokenizer.from_dir(ckpt)
    loaded = benchmarks.read_benchmark("vstar", data, media)

    class _NoBudget:
        def check(self, seg):
            pass

    preps = [
        runner._prepare("vstar", it, cfg.eval, True, tok, _NoBudget(), 0) for it in loaded.items
    ]
    calls = [(prep.item["key"], pr.call) for prep in preps for pr in prep.prompts]
    reqs = [r for prep in preps for r in prep.requests]
    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        ckpt, dtype=torch.float32
    ).eval()
    eos = (tok.eos_id, tok.pad_id)
    gen_kw = dict(do_sample=False, max_new_tokens=max_new_tokens, repetition_penalty=penalty,
                  eos_token_id=list(eos), pad_token_id=tok.pad_id)  # fmt: skip
    hf_in = []
    for r in reqs:
        seg = r.segment
        ids = torch.tensor(np.asarray(seg.input_ids, np.int64)[None])
        hf_in.append(dict(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            # which tokens are image pads: transformers builds M-RoPE positions only with it
            mm_token_type_ids=(ids == model.config.image_token_id).long(),
            pixel_values=torch.tensor(np.concatenate([v.pixel_values for v in seg.vision])),
            image_grid_thw=torch.tensor([list(v.grid_thw) for v in seg.vision]),
        ))  # fmt: skip

    def reference(scores: bool = False):
        texts, margins, n_new = [], [], []
        t = time.perf_counter()
        for kw in hf_in:
            with torch.no_grad():
                out = model.generate(**kw, **gen_kw, output_scores=scores,
                                     return_dict_in_generate=scores)  # fmt: skip
            seq = out.sequences if scores else out
            new = [int(x) for x in seq[0, kw["input_ids"].shape[1] :]]
            if scores:  # top-1 minus top-2 of the scores greedy picked from (penalty applied)
                top2 = torch.stack(out.scores)[:, 0].topk(2, dim=-1).values
                margins += (top2[:, 0] - top2[:, 1]).tolist()
            if new and new[-1] in eos:
                new = new[:-1]
            n_new.append(len(new))
            texts.append(tok.decode(new))
        return time.perf_counter() - t, texts, margins, n_new

    _, _, margins, n_new = reference(scores=True)  # warm-up, untimed: the margins

    _, params = hf.load(ckpt, jnp.float32, progress=False)
    gen = Generator(
        experiment.model_config(cfg), params, tok,
        runner._sampling(cfg.eval, tok, 1, cfg.eval.max_new_tokens),
        batch_size=cfg.eval.batch_size, buckets=cfg.eval.prompt_buckets,
        max_patches=cfg.eval.max_patches,
    )  # fmt: skip
    gen(reqs)  # compiled already by the warm-up run; one warm call anyway

    def sampler_only():
        t = time.perf_counter()
        texts = [g[0] for g in gen(reqs)]
        return time.perf_counter() - t, texts

    n = len(loaded.items)
    result = stats.Result(
        title=f"Evaluation: o3video_jax.evaluate vs a transformers generate loop, "
        f"{max_new_tokens} new tokens",
        setup=(
            f"V-STaR, {n} items x 5 calls ({len(reqs)} requests, prompts of "
            f"{min(len(r.segment.input_ids) for r in reqs)}-"
            f"{max(len(r.segment.input_ids) for r in reqs)} tokens, 3 frames each), tiny random "
            f"fp32 Qwen2.5-VL (text 64 x 2 layers, vocab 512; weights drawn as the sampler "
            f"benchmark's), greedy, at most {max_new_tokens} new tokens, repetition penalty "
            f"{penalty}; our sampler calls of {batch_size} requests; torch "
            f"{torch.__version__} with {torch.get_num_threads()} threads, transformers "
            f"{transformers.__version__} `generate` one request at a time (generate time "
            f"only), jax {jax.__version__} on {jax.device_count()} {jax.default_backend()} "
            f"device(s), XLA on every core; each repeat times transformers, our whole "
            f"command, our sampler calls back to back, compiles excluded."
        ),
    )
    mismatches, compared = [], 0
    for i in range(repeats):
        ref_s, ref_texts, _, _ = reference()
        ours_s, records = ours(i)
        gen_s, gen_texts = sampler_only()
        result.add("transformers generate loop: items/s", n / ref_s)
        result.add("o3video_jax.evaluate, whole command: items/s", n / ours_s)
        result.add("o3video_jax sampler calls only: items/s", n / gen_s)
        result.add("speed-up, whole command (x)", ref_s / ours_s)
        result.add("speed-up, sampler calls only (x)", ref_s / gen_s)
        want = dict(zip(calls, ref_texts, strict=True))
        by_key = {r["key"]: r for r in records}
        for (key, call), text in want.items():
            mismatches += [(i, "evaluate", key, call)] * (by_key[key][FIELDS[call]] != text)
        mismatches += [
            (i, "sampler", *c) for c, g in zip(calls, gen_texts, strict=True) if g != want[c]
        ]
        compared += 2 * len(calls)
    margins = np.asarray(margins)
    result.facts["identical outputs (calls, all repeats, whole command and sampler vs HF)"] = (
        f"{compared - len(mismatches)}/{compared}"
    )
    result.facts["new tokens per call (reference; mean, min-max)"] = (
        f"{np.mean(n_new):.1f}, {min(n_new)}-{max(n_new)}"
    )
    result.facts["greedy margin top-1 - top-2 over all reference steps (min / median)"] = (
        f"{margins.min():.3g} / {np.median(margins):.3g} ({margins.size} steps)"
    )
    if mismatches:
        result.notes.append(f"MISMATCHED (repeat, side, item, call): {mismatches[:10]}")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max_new_tokens", type=int, default=16)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--torch_threads", type=int, default=1, help="0: every core")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    print(stats.machine())
    load = stats.load_average()
    result = bench(a.repeats, a.quick, a.items, a.max_new_tokens, a.batch_size, a.torch_threads)
    print(stats.table(result))
    print(f"load average (1/5/15 min) before: {load}; after: {stats.load_average()}")
    if any(line.startswith("MISMATCHED") for line in result.notes):
        sys.exit("outputs differ from transformers")


if __name__ == "__main__":
    main()
