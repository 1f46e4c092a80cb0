"""Forward throughput on CPU, float32: our jitted Qwen25VL vs transformers' eager forward (sdpa).

    python benchmarks/forward.py [--repeats 5] [--quick] [--frames 16] [--size 224] [--text 64]

Same weights (random, exported with `hf.save` and read back by `from_pretrained`) and the
same inputs (one video of `frames` frames at size x size plus `text` text tokens) on both
sides. Prints tokens/s for both and their ratio, our achieved GFLOP/s (useful FLOPs counted
analytically: the work transformers does too, i.e. attention only inside windows / frames /
the causal triangle; XLA's own count of what it executes is shown alongside), and the
machine's float32 matmul rate measured with a large `jnp.dot`; every repeat times all of them
back to back and the table shows the median and min-max over the repeats.
Targets (issue 13): >= 1.0x transformers with the same threads, >= 70% of the matmul rate.

Two columns for ours: the dense vision attention (every block one masked P x P attention:
`attention_chunk=0`) and the blocked local segment attention (local_attention.py; windows
bounded by 64 patches, frames by the video's frame size via `max_frame_patches`), with XLA's
FLOP count and its peak temporary memory (`compiled.memory_analysis()`) for each.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import traverse_util

from o3video_jax.checkpoints import hf
from o3video_jax.models.qwen2_5_vl import (
    Qwen25VL,
    Qwen25VLConfig,
    TextConfig,
    VisionConfig,
    inputs_from_hf,
)

try:
    from benchmarks import stats
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import stats

BASE = 8192 - 32  # special tokens at BASE + k (BRIEF convention)
VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = BASE + 9, BASE + 10, BASE + 12, BASE + 13


def bench_config() -> Qwen25VLConfig:
    """Text 512 x 8 layers (8 heads, 2 kv, mlp 1376, vocab 8192); vision 256 x 4 blocks."""
    return Qwen25VLConfig(
        text=TextConfig(
            vocab_size=8192,
            hidden_size=512,
            intermediate_size=1376,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=2,
            rms_norm_eps=1e-6,
            mrope_section=(8, 12, 12),
            max_position_embeddings=4096,
        ),
        vision=VisionConfig(
            depth=4,
            hidden_size=256,
            num_heads=4,
            intermediate_size=688,
            fullatt_block_indexes=(3,),
            out_hidden_size=512,
            tokens_per_second=2,
        ),
        image_token_id=IMAGE_PAD,
        video_token_id=VIDEO_PAD,
        vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
        bos_token_id=BASE,
        eos_token_id=BASE + 2,
        pad_token_id=BASE,
    )


def random_params(config: Qwen25VLConfig, seed: int = 0):
    """Random params with O(1) activations (timing does not depend on the values)."""
    abstract = traverse_util.flatten_dict(nn.meta.unbox(hf.abstract_params(config)))
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in abstract.items():
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if path[-1] == "scale":
            noise = 1.0 + 0.1 * noise
        elif path[-1] == "bias":
            noise *= 0.02
        elif path[-1] == "kernel":
            noise /= np.sqrt(leaf.shape[0])
        out[path] = jnp.asarray(noise)
    return traverse_util.unflatten_dict(out)


def hf_inputs(config: Qwen25VLConfig, frames: int, size: int, text: int) -> dict[str, np.ndarray]:
    """One row: text/2 tokens, <vision_start> video <vision_end>, text/2 tokens."""
    rng = np.random.default_rng(0)
    grid = (frames // 2, size // 14, size // 14)
    n_video = grid[0] * grid[1] * grid[2] // 4
    head, tail = rng.integers(0, BASE, text // 2), rng.integers(0, BASE, text - text // 2)
    ids = np.concatenate([head, [VISION_START], np.full(n_video, VIDEO_PAD), [VISION_END], tail])
    types = (ids == VIDEO_PAD).astype(np.int64) * 2
    return {
        "input_ids": ids[None].astype(np.int64),
        "attention_mask": np.ones((1, len(ids)), np.int64),
        "mm_token_type_ids": types[None],
        "pixel_values_videos": rng.standard_normal((int(np.prod(grid)), 1176), np.float32),
        "video_grid_thw": np.asarray([grid], np.int64),
        "second_per_grid_ts": np.asarray([1.0], np.float32),
    }


def useful_flops(config: Qwen25VLConfig, grid: tuple[int, int, int], seq_len: int) -> float:
    """Matmul FLOPs of one forward, attention counted only where it is allowed."""
    v, t = config.vision, config.text
    frames, h, w = grid
    n = frames * h * w
    win = v.window_size // v.patch_size  # window side in patches
    window_sq = frames * sum(
        (min(win, h - r) * min(win, w - c)) ** 2 for r in range(0, h, win) for c in range(0, w, win)
    )
    frame_sq = frames * (h * w) ** 2
    dv, iv = v.hidden_size, v.intermediate_size
    flops = 2 * n * v.patch_dim * dv
    for i in range(v.depth):
        pairs = frame_sq if i in v.fullatt_block_indexes else window_sq
        flops += 2 * n * dv * 4 * dv + 2 * n * 3 * dv * iv + 4 * pairs * dv
    flops += 2 * (n // 4) * (4 * dv) ** 2 + 2 * (n // 4) * 4 * dv * v.out_hidden_size
    d, kv = t.hidden_size, t.num_key_value_heads * t.head_dim
    causal_pairs = seq_len * (seq_len + 1) / 2
    per_layer = 2 * seq_len * (2 * d * d + 2 * d * kv) + 2 * seq_len * 3 * d * t.intermediate_size
    flops += t.num_hidden_layers * (per_layer + 4 * causal_pairs * d)
    return flops + 2 * seq_len * d * t.vocab_size


def with_vision_attention(config: Qwen25VLConfig, chunk: int, max_frame: int) -> Qwen25VLConfig:
    """The same model with the vision tower's blocked attention set (chunk 0 = dense)."""
    vision = dataclasses.replace(config.vision, attention_chunk=chunk, max_frame_patches=max_frame)
    return config.replace(vision=vision)


def compile_forward(config: Qwen25VLConfig, params, inputs):
    """(compiled forward, XLA-counted FLOPs, peak temporary bytes or NaN)."""
    compiled = jax.jit(Qwen25VL(config).apply).lower({"params": params}, inputs).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    memory = compiled.memory_analysis()
    temp = float(getattr(memory, "temp_size_in_bytes", float("nan")))
    return compiled, float(cost.get("flops", float("nan"))), temp


def matmul_rate(n: int = 2048, inner: int = 3) -> float:
    """Measured float32 GFLOP/s of one large jnp.dot (mean of `inner` calls)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    return 2 * n**3 / stats.timed(lambda: dot(a, b).block_until_ready(), inner) / 1e9


def bench(
    repeats: int = 5,
    quick: bool = False,
    frames: int = 16,
    size: int = 224,
    text: int = 64,
    torch_threads: int | None = None,
) -> stats.Result:
    """Each repeat times, back to back: ours blocked (default), ours dense vision attention,
    transformers eager, and the matmul rate; ratios are taken within the repeat."""
    if quick:
        frames, size = min(frames, 4), min(size, 112)
    # Same threads on both sides: XLA's CPU client uses every core.
    torch.set_num_threads(torch_threads or os.cpu_count())
    config = bench_config()
    params = random_params(config)
    arrays = hf_inputs(config, frames, size, text)
    inputs = inputs_from_hf(config, **arrays)
    seq_len = inputs.seq_len
    grid = tuple(int(x) for x in arrays["video_grid_thw"][0])
    variables = {"params": params}

    dense, xla_flops, temp = compile_forward(with_vision_attention(config, 0, 0), params, inputs)
    blocked_cfg = with_vision_attention(config, 128, grid[1] * grid[2])
    blocked, xla_flops_b, temp_b = compile_forward(blocked_cfg, params, inputs)
    ours_dense = lambda: dense(variables, inputs).block_until_ready()
    ours_blocked = lambda: blocked(variables, inputs).block_until_ready()
    dense_logits = np.asarray(dense(variables, inputs))
    blocked_logits = np.asarray(blocked(variables, inputs))

    with tempfile.TemporaryDirectory() as tmp:
        hf.save(tmp, config, params, progress=False)
        model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(
            tmp, attn_implementation="sdpa", dtype=torch.float32
        ).eval()
    kwargs = {k: torch.from_numpy(v) for k, v in arrays.items()}

    def hf_forward():
        model.model.rope_deltas = None
        with torch.inference_mode():
            return model(**kwargs, use_cache=False).logits

    hf_logits = hf_forward().numpy()  # also the warm-up
    flops = useful_flops(config, grid, seq_len)
    result = stats.Result(
        title="Forward pass: o3video_jax (jit) vs transformers eager (sdpa), float32",
        setup=(
            f"Text 512 x 8 layers (vocab 8192), vision 256 x 4 blocks; one row of {seq_len} "
            f"tokens ({text} text + a {frames}-frame {size}x{size} video = grid {grid}, "
            f"{int(np.prod(grid))} patches); torch threads {torch.get_num_threads()}; each "
            "repeat times ours (blocked, then dense vision attention), transformers and a "
            f"2048^3 jnp.dot back to back. Useful GFLOP / forward: {flops / 1e9:.2f}."
        ),
    )
    result.facts["max abs logits diff vs transformers (blocked / dense)"] = (
        f"{np.abs(hf_logits - blocked_logits).max():.1e} / "
        f"{np.abs(hf_logits - dense_logits).max():.1e}"
    )
    result.facts["XLA-counted GFLOP (blocked / dense)"] = (
        f"{xla_flops_b / 1e9:.2f} / {xla_flops / 1e9:.2f}"
    )
    result.facts["XLA peak temporary MiB (blocked / dense)"] = (
        f"{temp_b / 2**20:.1f} / {temp / 2**20:.1f}"
    )
    for _ in range(repeats):
        t_blocked = stats.timed(ours_blocked)
        t_dense = stats.timed(ours_dense)
        t_hf = stats.timed(hf_forward)
        peak = matmul_rate()
        result.add("o3video_jax blocked (default): s / forward", t_blocked)
        result.add("o3video_jax dense vision attention: s / forward", t_dense)
        result.add("transformers eager: s / forward", t_hf)
        result.add("speed-up vs transformers, blocked (x)", t_hf / t_blocked)
        result.add("speed-up vs transformers, dense (x)", t_hf / t_dense)
        result.add("f32 matmul rate GFLOP/s", peak)
        result.add("% of matmul rate, ours blocked (%)", 100 * flops / t_blocked / 1e9 / peak)
        result.add("% of matmul rate, transformers (%)", 100 * flops / t_hf / 1e9 / peak)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--text", type=int, default=64)
    parser.add_argument("--torch_threads", type=int, default=0, help="0: every core, as XLA")
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); {stats.machine()}")
    load = stats.load_average()
    result = bench(args.repeats, args.quick, args.frames, args.size, args.text, args.torch_threads)
    print(stats.table(result))
    print(f"load average before: {load}; after: {stats.load_average()}")


if __name__ == "__main__":
    main()
