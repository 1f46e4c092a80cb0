r"""Benchmark evaluation (V-STaR, VideoMME, WorldSense, VideoMMMU, temporal grounding).

Args (`:arg`): benchmark=vstar|videomme|worldsense|videommmu|tvg (default vstar),
think=true|false (default true: the grounded think prompts), runlocal (tiny budgets, CPU),
size=3b|7b|... (the model preset when no checkpoint is given, e.g. for the AOT plan:
`python -m o3video_jax.train.aot --config experiments/configs/eval.py:benchmark=vstar,size=7b
--topology v5p:2x2x1` compiles each prompt bucket's prefill and decode loop).
Per-benchmark settings are the reference's (docs/open_o3_video.md §5.1): V-STaR 2048 new tokens,
16 frames at 1 fps near native resolution (qwen_vl_utils image budget 16384*28*28 px);
VideoMME / WorldSense / VideoMMMU 8192 new tokens, native video at 2 fps, <= 64 frames of
<= 512*512 px, 1.0 s per temporal grid step (`eval.second_per_grid="upstream"`: upstream hands
the frames to vLLM without an fps, so the processor's default 2.0 applied; "sampled" uses
2 / sample fps), the VideoMMMU image at qwen_vl_utils' defaults (`eval.videommmu_image=
"upstream"`; "capped" = 854x480); greedy, repetition penalty 1.05 (vLLM's, as the reference
engine); think mode everywhere, as upstream's eval_all.sh.
Budgets: V-STaR's admit 16 frames of 1920x1080 (smart_resize 1932x1092: 10,764 patches, 2,691
tokens a frame; 172,224 patches and 43,056 image tokens per call); VideoMMMU's add an image of
up to ~3.2 Mpx. An item over the budgets is scored as a failure inside n and listed under
`failed` in the summary (lower `eval.batch_size` if a 1080p batch does not fit in memory).
Test-time scaling: --config.eval.samples=8 --config.eval.vote=confidence
--config.eval.temperature=1.0 (the reference's TTS temperature is unknown).

TPU VM (v5e-8 / v5p-8, one host; every worker runs the same command on a pod slice, each
process evaluating its own share of the items):
  tpu_scripts/launch.sh NAME ZONE -- python -m o3video_jax.evaluate \
    --config experiments/configs/eval.py:benchmark=vstar \
    --config.model.hf_checkpoint=/data/Open-o3-Video \
    --config.eval.data=/data/V-STaR/V_STaR_test.json \
    --config.eval.media_root=/data/V-STaR/videos --workdir /data/eval/vstar
GPU host (8 GPUs, one process):
  python -m o3video_jax.evaluate --config experiments/configs/eval.py:benchmark=videomme \
    --config.model.hf_checkpoint=/data/Open-o3-Video --config.model.attention=cudnn \
    --config.eval.data=/data/Video-MME/videomme/test-00000-of-00001.parquet \
    --config.eval.media_root=/data/Video-MME --workdir /data/eval/videomme
Rerunning the same command resumes (WORKDIR/items.jsonl is the resume log).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402

_PX = 28 * 28
# (max_new_tokens, max_frames, prompt buckets, max_patches per row)
_VSTAR_1080P = 16 * (1092 // 14) * (1932 // 14)  # 16 frames of 1920x1080 at native size
_SETTINGS = {
    "vstar": (2048, 16, [4096, 8192, 16384, 24576, 32768, 49152], _VSTAR_1080P),
    "videomme": (8192, 64, [4096, 8192, 12288, 16384], 32 * 4 * 336),
    "worldsense": (8192, 64, [4096, 8192, 12288, 16384], 32 * 4 * 336),
    "videommmu": (8192, 64, [4096, 8192, 12288, 16384, 20480], 32 * 4 * 336 + 4 * 4096),
    "tvg": (1024, 16, [1024, 2048, 4096], 16 * 4 * 136),
}


def get_config(arg=None):
    a = common.parse_arg(arg, benchmark="vstar", think=True, runlocal=False, size="")
    if a.benchmark not in _SETTINGS:
        raise ValueError(f"benchmark={a.benchmark!r}; known: {sorted(_SETTINGS)}")
    c = common.base_config()
    c.stage = "eval"
    if a.size:  # a preset's shapes (AOT plans without a checkpoint); hf_checkpoint overrides
        c.model.preset = a.size
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "bfloat16"
    c.model.remat = "none"
    c.model.scan_layers = True  # compile time flat in depth (stacked layer params)
    c.mesh.update({"data": 1, "fsdp": -1, "tensor": 1})
    max_new, frames, buckets, patches = _SETTINGS[a.benchmark]
    c.eval = e = common.ml_collections.ConfigDict()
    e.benchmark = a.benchmark
    e.think = a.think
    e.data = ""  # the benchmark file (see o3video_jax/evaluate/benchmarks.py)
    e.media_root = ""  # the benchmark's video folder
    e.limit = 0  # first N items (0 = all)
    e.max_new_tokens = max_new
    e.temperature = 0.0
    e.top_p = 1.0
    e.repetition_penalty = 1.05  # vLLM's, as the reference engine; 1.0 = off
    e.samples = 1  # N paths per question (test-time scaling, multiple-choice benchmarks)
    e.vote = "majority"  # majority | confidence (§5.4)
    e.relevance_max_new_tokens = 8  # the rating must be exactly one digit
    # relevance ratings: greedy | generation (eval.temperature/top_p, as upstream's scorer,
    # which reuses the generation's sampling parameters)
    e.relevance_sampling = "greedy"
    # non-think option letters: upstream (its per-benchmark substring parsers) | ours
    # (word-bounded: "DNA." holds no answer "A")
    e.letter_parser = "upstream"
    e.batch_size = 8  # prompts per sampler call (a multiple of the data-parallel shards)
    e.chunk_items = 0  # items per resume unit (0 = batch_size)
    e.prompt_buckets = buckets
    e.max_patches = patches
    # vision patch buckets per row: [] = powers of two from 64 up to max_patches (a batch pads
    # its patches to the smallest that fits); [max_patches] = one vision shape, fewer compiles
    e.patch_buckets = []
    e.max_frames = frames
    # Prompts longer than this are prefilled in [block, block] attention tiles (linear memory;
    # docs/design.md decision 16); 0 = one dense [T, T] score matrix per layer.
    e.prefill_block = 512
    e.image_min_pixels = 4 * _PX  # qwen_vl_utils image defaults (V-STaR frames, VideoMMMU image)
    e.image_max_pixels = 16384 * _PX
    e.video_min_pixels = 128 * _PX
    e.video_max_pixels = 105369 if a.benchmark == "tvg" else 512 * 512
    e.render_items = 4  # the first K items drawn into WORKDIR/report (PNG strip + GIF)
    e.judge_url = ""  # OpenAI-compatible endpoint for V-STaR "What" ("" = exact match)
    e.judge_model = ""
    e.judge_api_key_env = "OPENAI_API_KEY"
    # native-video benchmarks: upstream (1.0 s per grid, vLLM's default) | sampled (2 / fps)
    e.second_per_grid = "upstream"
    # VideoMMMU image: upstream (qwen_vl_utils' image defaults above) | capped (854x480, the
    # max_pixels upstream gives the processor it uses only for the chat template)
    e.videommmu_image = "upstream"
    if a.runlocal:
        c.model.dtype = "float32"
        c.model.param_dtype = "float32"
        c.mesh.update({"data": -1, "fsdp": 1, "tensor": 1})
        e.max_new_tokens = 16
        e.batch_size = 2
        e.prompt_buckets = [512, 1024, 2048]
        e.max_patches = 2048
        e.max_frames = 4
        e.image_max_pixels = 56 * 56
        e.video_min_pixels = 56 * 56
        e.video_max_pixels = 56 * 56
        e.render_items = 1
    c.lock()
    return c
