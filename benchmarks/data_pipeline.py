"""Video clip loading: our read_video + preprocess beside OpenCV's decode floor and transformers.

For every 8 s window of every video (16 frames at 2 fps, frames resized to Open-o3's
~100k-pixel budget) it measures the CPU time per clip (best of --repeats; see `best_ms`):

  decode floor   plain OpenCV: seek to the window, grab() through it, retrieve() the 16 frames
  ours           video.read_video(max_pixels=...) + vision.preprocess_video, per --resample
  beyond decode  (ours - floor) / ours
  preprocess     on the same 16 decoded full-size frames, equal output (one image per frame,
                 as Open-o3 feeds frames): vision.preprocess_image x16 vs transformers'
                 Qwen2VLImageProcessor (its PIL/numpy backend: torchvision is not installed)

and, with --workers, wall-clock clips/s of the whole read+preprocess path in a grain pipeline
with that many worker processes (grain `mp_prefetch`, the mechanism of
o3video_jax.data.pipeline; its full SFT/RL batching adds prompts, tokens and packing).

  python benchmarks/data_pipeline.py /work/shared/data/videos/*.mp4 --synthetic --workers 1 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

import cv2
import numpy as np

from o3video_jax.data import synthetic, video, vision

FPS, FRAMES, WINDOW = 2.0, 16, 8.0
MAX_PIXELS = vision.O3_FRAME_MAX_PIXELS  # 105,369 (Open-o3's per-frame budget)


def best_ms(fn, repeats: int) -> float:
    """Best-of-`repeats` CPU milliseconds of this process (all its threads).

    CPU time rather than wall time: the machine is shared, and other processes' load makes
    wall times swing by 2x; CPU time is what a clip costs a core (OpenCV's decoder threads
    included) and so what bounds throughput with one worker per core.
    """
    fn()  # warm caches / imports
    times = []
    for _ in range(repeats):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return min(times) * 1e3


def windows(path: str, per_video: int) -> list[tuple[str, float]]:
    cap = cv2.VideoCapture(path)
    duration = cap.get(cv2.CAP_PROP_FRAME_COUNT) / cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    n = max(1, min(per_video, int(duration // WINDOW)))
    return [(path, k * WINDOW) for k in range(n)]


def decode_floor(path: str, indices: np.ndarray) -> list[np.ndarray]:
    cap = cv2.VideoCapture(path)
    wanted, frames = set(indices.tolist()), []
    if indices[0] > 0:  # windows after the first start with one seek, as read_video's
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(indices[0]))
    for i in range(int(indices[0]), int(indices[-1]) + 1):
        cap.grab()
        if i in wanted:
            frames.append(cap.retrieve()[1])
    cap.release()
    return frames


def measure_clip(path: str, start: float, hf, resamples, repeats: int):
    """{"floor", <resample>, "prep/<resample>", "hf"} -> ms for one clip, and the clip."""
    clip = video.read_video(path, FPS, FRAMES, start=start, end=start + WINDOW)
    full = list(clip.frames)
    row = {"floor": best_ms(lambda: decode_floor(path, clip.frame_indices), repeats)}
    for r in resamples:
        row[r] = best_ms(lambda r=r: ours(path, start, r), repeats)
        row["prep/" + r] = best_ms(
            lambda r=r: [vision.preprocess_image(f, 3136, MAX_PIXELS, r) for f in full], repeats
        )
    row["hf"] = best_ms(lambda: hf(images=full, return_tensors="np"), repeats)
    return row, clip


def ours(path: str, start: float, resample: str):
    clip = video.read_video(
        path, FPS, FRAMES, start=start, end=start + WINDOW, max_pixels=MAX_PIXELS, resample=resample
    )
    return vision.preprocess_video(clip.frames, 3136, MAX_PIXELS, resample)


class _Load:  # picklable for grain workers
    def __init__(self, resample: str):
        self.resample = resample

    def __call__(self, item):
        pv, _ = ours(item[0], item[1], self.resample)
        return pv.shape[0]


def grain_clips_per_s(items, workers: int, resample: str) -> float:
    import grain
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    ds = grain.MapDataset.source(items).map(_Load(resample)).to_iter_dataset()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    it = iter(ds)
    next(it)  # workers started and warm
    t = time.perf_counter()
    n = sum(1 for _ in it)
    return n / (time.perf_counter() - t)


def make_synthetic(directory: str) -> str:
    """A 10 s 448x224 (100,352-pixel, no resize needed) 8 fps clip with three objects."""
    objs = (
        synthetic.ObjectSpec("red", "circle", 60, 0, 59, (40.0, 40.0), (400.0, 40.0)),
        synthetic.ObjectSpec("blue", "square", 60, 10, 79, (400.0, 112.0), (40.0, 112.0)),
        synthetic.ObjectSpec("green", "triangle", 60, 20, 69, (40.0, 184.0), (400.0, 184.0)),
    )
    path = os.path.join(directory, "synthetic_448x224_8fps.mp4")
    synthetic.make_video(path, synthetic.VideoSpec(448, 224, 8, 80, objs))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("videos", nargs="*")
    ap.add_argument("--synthetic", action="store_true", help="add one generated clip")
    ap.add_argument("--per-video", type=int, default=2, help="8 s windows per video")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="*", default=[])
    ap.add_argument("--resample", nargs="+", default=["pil", "fast"])
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    paths = list(args.videos) + ([make_synthetic(tmp)] if args.synthetic else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import Qwen2VLImageProcessorPil

        hf = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=MAX_PIXELS)

    head = f"{'clip':<28}{'src':>10}{'floor':>8}"
    head += "".join(f"{'ours/' + r:>11}{'beyond':>8}" for r in args.resample)
    head += f"{'hf-prep':>9}" + "".join(f"{'prep/' + r:>10}{'x':>6}" for r in args.resample)
    print(f"CPU ms per 16-frame clip (best of {args.repeats}); {os.cpu_count()}-core CPU")
    print(head)
    totals: dict[str, list[float]] = {}
    items = [w for p in paths for w in windows(p, args.per_video)]
    for path, start in items:
        row, clip = measure_clip(path, start, hf, args.resample, args.repeats)
        floor, full = row["floor"], clip.frames
        for k, v in row.items():
            totals.setdefault(k, []).append(v)
        h, w = full.shape[1:3]
        name = f"{os.path.basename(path)[:20]}@{start:g}s"
        line = f"{name:<28}{f'{w}x{h}@{clip.source_fps:.4g}':>10}{floor:8.1f}"
        line += "".join(f"{row[r]:11.1f}{(row[r] - floor) / row[r]:8.0%}" for r in args.resample)
        line += f"{row['hf']:9.1f}"
        line += "".join(
            f"{row['prep/' + r]:10.1f}{row['hf'] / row['prep/' + r]:6.1f}" for r in args.resample
        )
        print(line)

    mean = {k: statistics.mean(v) for k, v in totals.items()}
    print(f"\nmean over {len(items)} clips:")
    print(f"  decode floor          {mean['floor']:7.1f} ms  {1e3 / mean['floor']:6.1f} clips/s")
    for r in args.resample:
        clips = 1e3 / mean[r]
        print(
            f"  ours ({r:<4})           {mean[r]:7.1f} ms  {clips:6.1f} clips/s  "
            f"{clips * FRAMES:7.1f} frames/s  beyond decode {(mean[r] - mean['floor']) / mean[r]:.0%}"
        )
    for r in args.resample:
        print(
            f"  preprocess 16 frames: transformers {mean['hf']:.1f} ms, ours/{r} "
            f"{mean['prep/' + r]:.1f} ms -> {mean['hf'] / mean['prep/' + r]:.1f}x"
        )
    for workers in args.workers:
        for r in args.resample:
            cps = grain_clips_per_s(items * 2, workers, r)
            print(
                f"  grain mp_prefetch workers={workers} ({r}): {cps:.1f} clips/s, {cps * FRAMES:.0f} frames/s"
            )


if __name__ == "__main__":
    main()
