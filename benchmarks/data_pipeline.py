"""Video clip loading: our read_video + preprocess beside OpenCV's decode floor and transformers.

For every 8 s window of every video (16 frames at 2 fps, frames resized to Open-o3's
~100k-pixel budget) it measures the CPU time per clip (each of --repeats rounds measures every clip once; the
table shows the median and min-max over the rounds of the mean over the clips):

  decode floor   plain OpenCV: seek to the window, grab() through it, retrieve() the 16 frames
  ours           video.read_video(max_pixels=...) + vision.preprocess_video, per --resample
  beyond decode  (ours - floor) / ours
  preprocess     on the same 16 decoded full-size frames, equal output (one image per frame,
                 as Open-o3 feeds frames): vision.preprocess_image x16 vs transformers'
                 Qwen2VLImageProcessor (its PIL/numpy backend: torchvision is not installed)

and, with --workers, wall-clock clips/s of the whole read+preprocess path in a grain pipeline
with that many worker processes (grain `mp_prefetch`, the mechanism of
o3video_jax.data.pipeline; its full SFT/RL batching adds prompts, tokens and packing).

  python benchmarks/data_pipeline.py [videos ...] --synthetic [--repeats 5] [--quick] [--workers 1 2]
  (no videos: /work/shared/data/videos/*.mp4)
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

try:
    from benchmarks import stats
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import stats

FPS, FRAMES, WINDOW = 2.0, 16, 8.0
MAX_PIXELS = vision.O3_FRAME_MAX_PIXELS  # 105,369 (Open-o3's per-frame budget)


def cpu_ms(fn) -> float:
    """CPU milliseconds of this process (all its threads) for one call.

    CPU time rather than wall time: the machine is shared, and other processes' load makes
    wall times swing by 2x; CPU time is what a clip costs a core (OpenCV's decoder threads
    included) and so what bounds throughput with one worker per core.
    """
    t = time.process_time()
    fn()
    return (time.process_time() - t) * 1e3


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


def measure_clip(path: str, start: float, clip, hf, resamples) -> dict[str, float]:
    """{"floor", <resample>, "prep/<resample>", "hf"} -> CPU ms of one run each on one clip
    (`clip`: the clip as read at full size, for the preprocessing-only figures)."""
    full = list(clip.frames)
    row = {"floor": cpu_ms(lambda: decode_floor(path, clip.frame_indices))}
    for r in resamples:
        row[r] = cpu_ms(lambda r=r: ours(path, start, r))
        row["prep/" + r] = cpu_ms(
            lambda r=r: [vision.preprocess_image(f, 3136, MAX_PIXELS, r) for f in full]
        )
    row["hf"] = cpu_ms(lambda: hf(images=full, return_tensors="np"))
    return row


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


DEFAULT_VIDEOS = "/work/shared/data/videos/*.mp4"


def bench(
    repeats: int = 5,
    quick: bool = False,
    videos: list[str] | None = None,
    synthetic_clip: bool = True,
    per_video: int = 2,
    resamples: tuple[str, ...] = ("pil", "fast"),
) -> stats.Result:
    """Each repeat measures every clip once per path (floor, ours per resample, preprocessing
    alone, transformers) back to back; a repeat's figure is the mean over the clips."""
    import glob

    videos = sorted(glob.glob(DEFAULT_VIDEOS)) if videos is None else list(videos)
    if quick:
        videos, per_video = videos[:1], 1
    tmp = tempfile.mkdtemp()
    paths = videos + ([make_synthetic(tmp)] if synthetic_clip else [])
    if not paths:
        raise SystemExit("data_pipeline: no videos (pass paths or --synthetic)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import Qwen2VLImageProcessorPil

        hf = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=MAX_PIXELS)
    items = [w for p in paths for w in windows(p, per_video)]
    clips = {}
    for path, start in items:  # read once for the preprocessing-only figures; warm-up
        clips[path, start] = video.read_video(path, FPS, FRAMES, start=start, end=start + WINDOW)
        measure_clip(path, start, clips[path, start], hf, resamples)
    result = stats.Result(
        title="Data pipeline: video clip read + preprocess, CPU ms per 16-frame clip",
        setup=(
            f"{len(items)} clips (8 s windows of {len(paths)} videos"
            f"{', one synthetic' if synthetic_clip else ''}), 16 frames at 2 fps resized to "
            f"<= {MAX_PIXELS:,} pixels; CPU ms of this process per clip, mean over the clips "
            "in each repeat; decode floor = plain OpenCV seek + grab + retrieve."
        ),
    )
    for _ in range(repeats):
        row: dict[str, list[float]] = {}
        for path, start in items:
            for k, v in measure_clip(path, start, clips[path, start], hf, resamples).items():
                row.setdefault(k, []).append(v)
        mean = {k: statistics.mean(v) for k, v in row.items()}
        result.add("decode floor ms / clip", mean["floor"])
        for r in resamples:
            result.add(f"ours ({r}) ms / clip", mean[r])
            result.add(f"ours ({r}) share beyond decoding %", 100 * (1 - mean["floor"] / mean[r]))
        result.add("transformers processor, preprocessing only ms / clip", mean["hf"])
        for r in resamples:
            result.add(f"ours ({r}), preprocessing only ms / clip", mean["prep/" + r])
            result.add(f"preprocessing speed-up ({r}) (x)", mean["hf"] / mean["prep/" + r])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("videos", nargs="*", help=f"default: {DEFAULT_VIDEOS}")
    ap.add_argument("--synthetic", action="store_true", help="add one generated clip")
    ap.add_argument("--per-video", type=int, default=2, help="8 s windows per video")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, nargs="*", default=[])
    ap.add_argument("--resample", nargs="+", default=["pil", "fast"])
    args = ap.parse_args()
    print(stats.machine())
    load = stats.load_average()
    result = bench(
        args.repeats,
        args.quick,
        args.videos or None,
        args.synthetic,
        args.per_video,
        tuple(args.resample),
    )
    print(stats.table(result))
    print(f"load average before: {load}; after: {stats.load_average()}")
    if args.workers:
        import glob

        paths = args.videos or sorted(glob.glob(DEFAULT_VIDEOS))
        items = [w for p in paths for w in windows(p, args.per_video)]
        for workers in args.workers:
            for r in args.resample:
                cps = grain_clips_per_s(items * 2, workers, r)
                print(
                    f"grain mp_prefetch workers={workers} ({r}): {cps:.1f} clips/s, "
                    f"{cps * FRAMES:.0f} frames/s"
                )


if __name__ == "__main__":
    main()
