r"""Items/s of `o3video_jax.evaluate` vs a transformers `generate` loop on the same V-STaR items.

  python benchmarks/evaluate.py [--items 8] [--repeats 5] [--max_new_tokens 32]

A tiny random Qwen2.5-VL (saved in HF layout) answers the five V-STaR calls of every item
(frames as images, so HF's M-RoPE rule equals ours, docs/design.md decision 5), greedy with repetition penalty
1.05 on both sides. Ours: the whole `runner.evaluate` (frame decoding, prompts, tokenization,
batched sampler calls, parsing, the JSONL) on a warm process (compiles excluded: one warm-up
run first). Reference: `Qwen2_5_VLForConditionalGeneration.generate` over the very same token
ids and pixels, one request at a time (as the reference scripts call their engine), timing
generate only. The outputs must be identical; the script fails otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=8)
    a = p.parse_args()

    import jax
    import torch
    import transformers
    from evaluate_fixtures import eval_config, tiny_checkpoint, write_vstar

    from o3video_jax.data.tokenizer import Tokenizer
    from o3video_jax.evaluate import benchmarks, read_log, runner

    torch.set_num_threads(os.cpu_count() or 1)
    root = tempfile.mkdtemp(prefix="bench_eval_")
    ckpt = tiny_checkpoint(os.path.join(root, "ckpt"))
    data, media = write_vstar(os.path.join(root, "vstar"), n=a.items)
    cfg = eval_config("vstar", ckpt, data, media, max_new_tokens=a.max_new_tokens,
                      batch_size=a.batch_size, render_items=0)  # fmt: skip
    with cfg.unlocked():
        cfg.mesh.update({"data": -1, "fsdp": 1, "tensor": 1})

    def ours(i):
        wd = os.path.join(root, f"ours{i}")
        t = time.perf_counter()
        runner.evaluate(cfg, wd)
        return time.perf_counter() - t, read_log(os.path.join(wd, "items.jsonl"))

    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        ours("warm")  # compiles
        runs = [ours(i) for i in range(a.repeats)]
    ours_s = [t for t, _ in runs]
    records = runs[0][1]

    # the same requests, built by the same code, for the transformers loop
    tok = Tokenizer.from_dir(ckpt)
    loaded = benchmarks.read_benchmark("vstar", data, media)

    class _Budget:
        def check(self, seg):
            pass

    preps = [runner._prepare("vstar", it, cfg.eval, True, tok, _Budget(), 0) for it in loaded.items]
    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
        ckpt, torch_dtype=torch.float32
    ).eval()
    gen_kw = dict(
        do_sample=False,
        max_new_tokens=a.max_new_tokens,
        repetition_penalty=1.05,
        eos_token_id=[tok.eos_id, tok.pad_id],
        pad_token_id=tok.pad_id,
    )

    def reference():
        outs = []
        t = time.perf_counter()
        for prep in preps:
            item_out = {}
            for pr, req in zip(prep.prompts, prep.requests, strict=True):
                seg = req.segment
                ids = torch.tensor(np.asarray(seg.input_ids, np.int64)[None])
                pv = torch.tensor(np.concatenate([v.pixel_values for v in seg.vision]))
                grid = torch.tensor([list(v.grid_thw) for v in seg.vision])
                with torch.no_grad():
                    res = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                         pixel_values=pv, image_grid_thw=grid, **gen_kw)  # fmt: skip
                new = [int(x) for x in res[0, ids.shape[1] :]]
                if new and new[-1] in (tok.eos_id, tok.pad_id):
                    new = new[:-1]
                item_out[pr.call] = tok.decode(new)
            outs.append(item_out)
        return time.perf_counter() - t, outs

    # our generation alone (the sampler calls over the same requests), for the like-for-like row
    import jax.numpy as jnp

    from o3video_jax.checkpoints import hf
    from o3video_jax.drivers import experiment
    from o3video_jax.evaluate.generate import Generator

    _, params = hf.load(ckpt, jnp.float32, progress=False)
    gen = Generator(
        experiment.model_config(cfg), params, tok,
        runner._sampling(cfg.eval, tok, 1, cfg.eval.max_new_tokens),
        batch_size=cfg.eval.batch_size, buckets=cfg.eval.prompt_buckets,
        max_patches=cfg.eval.max_patches,
    )  # fmt: skip
    reqs = [r for prep in preps for r in prep.requests]
    gen(reqs)  # compiled already by the runs above; one warm call anyway
    gen_s, gen_texts = [], None
    for _ in range(a.repeats):
        t = time.perf_counter()
        gen_texts = gen(reqs)
        gen_s.append(time.perf_counter() - t)

    reference()  # warm-up
    ref_runs = [reference() for _ in range(a.repeats)]
    ref_s = [t for t, _ in ref_runs]

    fields = {"vqa": "answer_vqa_raw_output", "temporal": "answer_temporal_pre",
              "spatial": "answer_spatial_pre", "spatial_2": "answer_spatial_pre_2",
              "temporal_2": "answer_temporal_pre_2"}  # fmt: skip
    mismatches = [
        (r["key"], call)
        for r, ref in zip(records, ref_runs[0][1], strict=True)
        for call, field in fields.items()
        if r[field] != ref[call]
    ]
    ref_flat = [ref[pr.call] for prep, ref in zip(preps, ref_runs[0][1], strict=True)
                for pr in prep.prompts]  # fmt: skip
    mismatches += [("generate", i) for i, (g, w) in enumerate(zip(gen_texts, ref_flat,
                   strict=True)) if g[0] != w]  # fmt: skip
    n = len(records)
    med = lambda xs: statistics.median(xs)
    rate = lambda xs: (n / med(xs), n / max(xs), n / min(xs))
    o, r = rate(ours_s), rate(ref_s)
    load = os.getloadavg()
    print(f"V-STaR, {n} items x 5 calls, tiny random Qwen2.5-VL, greedy, {a.max_new_tokens} new "
          f"tokens max, repetition penalty 1.05; {a.repeats} repeats; jax {jax.__version__} "
          f"({jax.device_count()} {jax.devices()[0].platform} devices), torch {torch.__version__}, "
          f"transformers {transformers.__version__}; load average {load[0]:.1f}/{load[1]:.1f}")  # fmt: skip
    print()
    print("| | items/s median (min-max) | s per run median |")
    print("|---|---|---|")
    print(f"| transformers generate loop | {r[0]:.2f} ({r[1]:.2f}-{r[2]:.2f}) | {med(ref_s):.2f} |")
    g = rate(gen_s)
    print(f"| o3video_jax.evaluate, whole command | {o[0]:.2f} ({o[1]:.2f}-{o[2]:.2f}) | "
          f"{med(ours_s):.2f} |")  # fmt: skip
    print(f"| o3video_jax sampler calls only | {g[0]:.2f} ({g[1]:.2f}-{g[2]:.2f}) | "
          f"{med(gen_s):.2f} |")  # fmt: skip
    print(f"| speed-up, whole command / generation only | {o[0] / r[0]:.1f}x / "
          f"{g[0] / r[0]:.1f}x | |")  # fmt: skip
    print()
    print(f"identical outputs: {2 * n * 5 - len(mismatches)}/{2 * n * 5} calls (evaluate and "
          "sampler-only runs vs transformers)")  # fmt: skip
    print(json.dumps({"ours_s": ours_s, "gen_s": gen_s, "ref_s": ref_s, "mismatches": mismatches}))
    if mismatches:
        sys.exit(f"outputs differ for {mismatches[:5]}")


if __name__ == "__main__":
    main()
