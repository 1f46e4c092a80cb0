"""GPU check: what a user needs to know before trusting a CUDA host, in one command.

    bash benchmarks/gpu_check.sh            # on the GPU host (installs nothing itself)
    python benchmarks/gpu_check.py --quick  # the same sections at toy sizes (runs on CPU too)

Sections (each timed, failures reported and the rest still run; a markdown summary is printed
and written to --out):
  parity    HF golden fixtures (tests/fixtures/golden) on the GPU: worst |logit| error at
            matmul precision "highest" (fp32) and at XLA's default (TF32 on Hopper).
  attention the cuDNN path (`model.attention="cudnn"`) vs the XLA path: bf16 logits of a
            3B-shaped model with few layers; what an fp32 config does with cudnn.
  sampler   our greedy sampler vs transformers `generate` on the same GPU (fp32, TF32 off on
            both sides): identical tokens, median tokens/s over repeats.
  train     one SFT and one GSPO run of the tiny synthetic config through the CLI.
  step      forward+backward of a 3B-shaped decoder (few layers) in bf16: tokens/s and the
            fraction of the bf16 peak (XLA's own FLOP count), XLA vs cuDNN attention.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from o3video_jax.models.qwen2_5_vl import Qwen25VL, Qwen25VLConfig  # noqa: E402
from o3video_jax.models.qwen2_5_vl.inputs import text_only_inputs  # noqa: E402

H200_BF16_PEAK = 989e12  # dense bf16 FLOP/s, NVIDIA H200 SXM datasheet (H100's rate)
SUMMARY: list[str] = []


def say(line: str = "") -> None:
    print(line, flush=True)
    SUMMARY.append(line)


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t0)
    return out


def med(ts: list[float]) -> str:
    return f"{statistics.median(ts):.4g} s (min {min(ts):.4g}, max {max(ts):.4g}, n={len(ts)})"


# ---- parity ------------------------------------------------------------------------------------
def section_parity(args) -> None:
    from o3video_jax.checkpoints import hf
    from o3video_jax.models.qwen2_5_vl.hf_inputs import inputs_from_hf

    golden = os.path.join(REPO, "tests", "fixtures", "golden")
    cases = sorted(d for d in os.listdir(golden) if os.path.exists(f"{golden}/{d}/logits.npz"))
    say("| case | max abs err, precision highest | max abs err, default (TF32) | max |logit| |")
    say("|---|---|---|---|")
    for case in cases:
        meta = (
            json.load(open(f"{golden}/{case}/meta.json"))
            if os.path.exists(f"{golden}/{case}/meta.json")
            else {}
        )
        model_dir = f"{golden}/models/{meta.get('model', 'untied')}"
        inputs = dict(np.load(f"{golden}/{case}/inputs.npz"))
        want = np.load(f"{golden}/{case}/logits.npz")["logits"]
        errs = []
        for precision in ("highest", "default"):
            with jax.default_matmul_precision(precision):
                config, params = hf.load(model_dir, jnp.float32, progress=False)
                kw = {k: v for k, v in inputs.items() if k in _HF_KEYS}
                ours = inputs_from_hf(
                    config, **kw, rule=meta.get("rule", "hf"), max_seq_len=64, max_patches=224
                )
                out = jax.jit(lambda p, x, c=config: Qwen25VL(c).apply({"params": p}, x))(
                    params, ours
                )
                logits = np.asarray(getattr(out, "logits", out))[ours.segment_ids != 0]
            errs.append(float(np.abs(logits - want[inputs["attention_mask"] == 1]).max()))
        say(f"| {case} | {errs[0]:.2e} | {errs[1]:.2e} | {float(np.abs(want).max()):.2f} |")


_HF_KEYS = (
    "input_ids", "attention_mask", "pixel_values", "image_grid_thw", "pixel_values_videos",
    "video_grid_thw", "second_per_grid_ts", "position_ids",
)  # fmt: skip


# ---- attention ---------------------------------------------------------------------------------
def shaped_3b(layers: int, dtype: str, attention: str, quick: bool) -> Qwen25VLConfig:
    """The 3B decoder with `layers` layers and a 2-block vision tower: the inputs are text, and
    on 2026-12-04 the full 32-block tower's init + compile alone outran a 85 s budget on an
    H200, so this section never reached the decoder."""
    base = Qwen25VLConfig.preset("tiny" if quick else "3b")
    text = dataclasses.replace(base.text, num_hidden_layers=layers)
    vision = dataclasses.replace(base.vision, depth=2, fullatt_block_indexes=(1,))
    return dataclasses.replace(
        base,
        text=text,
        vision=vision,
        dtype=dtype,
        param_dtype=dtype,
        attention=attention,
        remat="none",
    )


def _tokens(b: int, length: int, vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, min(vocab, 30000), (b, length)).astype(np.int32)
    seg = np.ones((b, length), np.int32)
    seg[0, : length // 4] = 0  # left padding on one row: the masked path is exercised
    return text_only_inputs(ids, seg)


def section_attention(args) -> None:
    b, length = (2, 64) if args.quick else (2, 2048)
    inputs = _tokens(b, length, 151936)
    outs = {}
    for backend in ("xla", "cudnn"):
        cfg = shaped_3b(2, "bfloat16", backend, args.quick)
        model = Qwen25VL(cfg)
        try:
            params = jax.jit(model.init)(jax.random.key(0), inputs)["params"]
            fn = jax.jit(lambda p, x, m=model: m.apply({"params": p}, x))
            out = fn(params, inputs)
            outs[backend] = np.asarray(getattr(out, "logits", out), np.float32)
            say(f"- {backend} bf16 forward B={b} L={length}: ok")
        except Exception as e:  # noqa: BLE001 - report and continue
            say(f"- {backend} bf16 forward: FAILED {type(e).__name__}: {str(e)[:300]}")
    if len(outs) == 2:
        mask = inputs.segment_ids.astype(bool)
        a, c = outs["xla"][mask], outs["cudnn"][mask]
        rel = float(np.linalg.norm(a - c) / np.linalg.norm(a))
        say(f"- cudnn vs xla bf16 logits: relative L2 {rel:.2e}, max abs {np.abs(a - c).max():.3f}")
    cfg = shaped_3b(1, "float32", "cudnn", args.quick)
    model = Qwen25VL(cfg)
    small = _tokens(1, 64, 151936)
    try:
        params = jax.jit(model.init)(jax.random.key(0), small)["params"]
        jax.block_until_ready(jax.jit(lambda p, x: model.apply({"params": p}, x))(params, small))
        say("- cudnn with an fp32 config: ran (fallback or native)")
    except Exception as e:  # noqa: BLE001
        say(f"- cudnn with an fp32 config: {type(e).__name__}: {str(e)[:300]}")


# ---- sampler vs transformers generate ----------------------------------------------------------
def section_sampler(args) -> None:
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from o3video_jax.checkpoints import hf
    from o3video_jax.models.qwen2_5_vl.hf_inputs import inputs_from_hf
    from o3video_jax.rl import sampler as sampler_lib

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    hidden, layers, new, b = (128, 2, 16, 2) if args.quick else (1024, 8, 128, 8)
    vocab, pad, eos, vs, ve, img = 32000, 480, 482, 489, 490, 492
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=3 * hidden,
            num_hidden_layers=layers, num_attention_heads=hidden // 64,
            num_key_value_heads=max(hidden // 256, 1), rms_norm_eps=1e-6,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "mrope_section": [8, 12, 12],
                             "rope_theta": 1e6},
            bos_token_id=pad, eos_token_id=eos, tie_word_embeddings=False,
        ),
        vision_config=dict(
            depth=2, hidden_size=64, num_heads=2, intermediate_size=128, out_hidden_size=hidden,
            fullatt_block_indexes=[1], tokens_per_second=2, window_size=112,
        ),
        image_token_id=img, video_token_id=img + 1, vision_start_token_id=vs,
        vision_end_token_id=ve, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration._from_config(
        config, attn_implementation="sdpa", dtype=torch.float32
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # O(1) activations, so greedy argmax is not a near-tie everywhere
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
    model = model.eval()
    rng = np.random.default_rng(0)
    rows, pixels, grids = [], [], []
    for r in range(b):
        h, w = 4, 4 + 2 * (r % 3)
        ids = list(rng.integers(0, pad, 20 + 3 * r)) + [vs] + [img] * (h * w // 4) + [ve]
        rows.append(ids + list(rng.integers(0, pad, 12)))
        pixels.append(rng.normal(size=(h * w, 3 * 2 * 14 * 14)).astype(np.float32))
        grids.append((1, h, w))
    length = max(map(len, rows))
    hf_in = {
        "input_ids": np.full((b, length), pad, np.int64),
        "attention_mask": np.zeros((b, length), np.int64),
        "mm_token_type_ids": np.zeros((b, length), np.int64),
        "pixel_values": np.concatenate(pixels),
        "image_grid_thw": np.asarray(grids, np.int64),
    }
    for r, ids in enumerate(rows):
        hf_in["input_ids"][r, length - len(ids) :] = ids
        hf_in["attention_mask"][r, length - len(ids) :] = 1
        hf_in["mm_token_type_ids"][r, length - len(ids) :] = np.asarray(ids) == img
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        jcfg, params = hf.load(tmp, jnp.float32, progress=False)
    model = model.to(dev)
    kw = {k: torch.from_numpy(v).to(dev) for k, v in hf_in.items()}

    def generate():
        with torch.no_grad():
            out = model.generate(
                **kw, do_sample=False, max_new_tokens=new, eos_token_id=eos, pad_token_id=pad
            )
        if dev == "cuda":
            torch.cuda.synchronize()
        return out

    want = generate()[:, length:].cpu().numpy()
    with jax.default_matmul_precision("highest"):
        cfg = sampler_lib.SamplingConfig(
            max_new_tokens=new, temperature=0.0, eos_ids=(eos,), pad_id=pad
        )
        sample = sampler_lib.make_sampler(Qwen25VL(jcfg), cfg)
        ours_in = inputs_from_hf(jcfg, **hf_in, rule="hf")
        keys = np.zeros((b, 2), np.uint32)
        t0 = time.perf_counter()
        out = jax.block_until_ready(sample(params, ours_in, keys))
        compile_s = time.perf_counter() - t0
        got = np.asarray(out.tokens)[:, : want.shape[1]]
        theirs, ours = [], []
        for _ in range(args.repeats):  # interleaved
            t0 = time.perf_counter()
            generate()
            theirs.append(time.perf_counter() - t0)
            ours += timed(lambda: sample(params, ours_in, keys), 1)
    n = int(np.asarray(out.lengths).sum())
    same = float((got == want).all(axis=1).mean())
    say(f"- model: text {hidden} x {layers} layers, vocab {vocab}, fp32 (TF32 off both sides); "
        f"B={b}, T={new}; torch device {dev}")  # fmt: skip
    say(f"- rows with identical greedy tokens: {same:.2f}; first-token agreement "
        f"{float((got[:, 0] == want[:, 0]).mean()):.2f}; our compile {compile_s:.1f} s")  # fmt: skip
    say(f"- transformers generate: {med(theirs)}")
    say(f"- o3video_jax sampler:   {med(ours)}")
    ratios = [t / o for t, o in zip(theirs, ours, strict=True)]
    say(f"- **whole-call speed-up: median {statistics.median(ratios):.2f}x "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f}); ours "
        f"{n / statistics.median(ours):.0f} tokens/s**")  # fmt: skip


# ---- the CLI: one SFT and one GSPO run ---------------------------------------------------------
def section_train(args) -> None:
    work = tempfile.mkdtemp(prefix="gpu_check_")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cfg = os.path.join(REPO, "experiments", "configs", "synthetic.py")
    common = ["--config.log.progress=false", "--config.log.tensorboard=false"]
    for stage, extra in (
        ("sft", ["--config.total_steps=4"]),
        ("gspo", ["--config.total_steps=2", f"--config.model.hf_checkpoint={work}/sft/hf"]),
    ):
        cmd = [sys.executable, "-m", "o3video_jax.train", f"--config={cfg}:stage={stage},size=tiny",
               f"--workdir={work}/{stage}", *common, *extra]  # fmt: skip
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        dt = time.perf_counter() - t0
        last = ""
        for path in glob.glob(f"{work}/{stage}/**/*.jsonl", recursive=True):
            lines = open(path).read().strip().splitlines()
            if lines:
                last = lines[-1][:400]
        say(f"- {stage}: rc={p.returncode} in {dt:.1f} s (with compile); last metrics: {last}")
        if p.returncode != 0:
            say("```\n" + p.stderr[-2000:] + "\n```")
            return


# ---- 3B-shaped training step -------------------------------------------------------------------
def step_flops(params, cfg: Qwen25VLConfig, b: int, length: int) -> float:
    """Analytic FLOPs of one forward + backward of the decoder on text: 6 per matmul weight per
    token (every 2-D kernel except the embedding lookup; the unembedding counts once, tied or
    not) plus causal attention, 6 * 2 * B * L^2 / 2 * heads * head_dim per layer."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    matmul = sum(
        x.size
        for path, x in flat
        if x.ndim >= 2 and "embed_tokens" not in jax.tree_util.keystr(path)
        and "visual" not in jax.tree_util.keystr(path)
    )  # fmt: skip
    t = cfg.text
    if cfg.tie_word_embeddings:
        matmul += t.vocab_size * t.hidden_size
    head_dim = t.hidden_size // t.num_attention_heads
    attn = 6 * 2 * b * length * length / 2 * t.num_attention_heads * head_dim * t.num_hidden_layers
    return 6.0 * matmul * b * length + attn


def section_step(args) -> None:
    layers = 2 if args.quick else 4
    b, length = (2, 64) if args.quick else (4, 4096)
    inputs = _tokens(b, length, 151936)
    for backend in ("xla", "cudnn"):
        cfg = shaped_3b(layers, "bfloat16", backend, args.quick)
        model = Qwen25VL(cfg)
        targets = jnp.asarray(np.roll(inputs.input_ids, -1, axis=1))

        def loss(p, x, t, m=model):
            h = m.apply({"params": p}, x, method="hidden_states")
            logits = m.apply({"params": p}, h, method="unembed").astype(jnp.float32)
            lp = jax.nn.log_softmax(logits)
            return -jnp.take_along_axis(lp, t[..., None], -1).mean()

        try:
            params = jax.jit(model.init)(jax.random.key(0), inputs)["params"]
            step = jax.jit(jax.value_and_grad(loss))
            compiled = step.lower(params, inputs, targets).compile()
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            xla_flops = float(cost.get("flops", 0.0))
            flops = step_flops(params, cfg, b, length)
            ts = timed(lambda c=compiled, p=params, t=targets: c(p, inputs, t), args.repeats + 1)[
                1:
            ]
            tok_s = b * length / statistics.median(ts)
            # XLA's cost analysis does not count cuBLAS / cuDNN custom calls (most of the
            # matmuls and, with cudnn, the attention), so the rate uses the analytic count.
            say(f"- {backend}: fwd+bwd {layers} layers of 3B, B={b} L={length}: {med(ts)}; "
                f"{tok_s:,.0f} tokens/s; {flops / 1e12:.1f} TFLOP a step (analytic: matmuls "
                f"and causal attention; XLA's count {xla_flops / 1e12:.2f} T omits custom "
                f"calls) -> {flops / statistics.median(ts) / H200_BF16_PEAK:.1%} of the "
                f"989 TFLOP/s bf16 peak")  # fmt: skip
        except Exception as e:  # noqa: BLE001
            say(f"- {backend}: FAILED {type(e).__name__}: {str(e)[:300]}")


SECTIONS = {
    "parity": section_parity,
    "attention": section_attention,
    "sampler": section_sampler,
    "train": section_train,
    "step": section_step,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes (CPU smoke test)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp") + "/gpu_check.md")
    args = parser.parse_args()
    dev = jax.devices()[0]
    say(f"# gpu_check ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    say(f"device: {dev.device_kind} ({jax.default_backend()}), {jax.device_count()} device(s); "
        f"jax {jax.__version__}; python {sys.version.split()[0]}")  # fmt: skip
    failed = []
    for name in args.sections.split(","):
        say(f"\n## {name}")
        t0 = time.perf_counter()
        try:
            SECTIONS[name](args)
        except Exception:  # noqa: BLE001 - every section runs; failures are listed
            failed.append(name)
            say("```\n" + traceback.format_exc()[-3000:] + "\n```")
        say(f"({name}: {time.perf_counter() - t0:.0f} s)")
        with open(args.out, "w") as f:  # after every section: a killed run keeps what it did
            f.write("\n".join(SUMMARY) + "\n")
    say(f"\nfailed sections: {failed or 'none'}")
    with open(args.out, "w") as f:
        f.write("\n".join(SUMMARY) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
