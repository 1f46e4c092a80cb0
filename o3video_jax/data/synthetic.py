"""Synthetic spatio-temporal videos with exact ground truth, and STGR / V-STAR records on them.

A video shows a few named coloured shapes ("red circle", "blue square", ...) on a plain
background. Each object is visible on a contiguous run of frames, moves in a straight line and
stays in its own horizontal lane, so objects never overlap and every box is exact: it is the
bounding box of the object's own rendered pixels, [x1, y1, x2, y2] in pixel edges (x2, y2
exclusive). Appear and disappear times sit on a 0.5 s grid (frame rates are even integers),
so every time prints exactly with one decimal.

`generate_dataset` writes the videos, key-frame jpgs and JSON records in the formats of
docs/open_o3_video.md §1.2 (STGR-SFT / STGR-RL) and §5.2 (V-STAR). Paths in the records are
relative to `out_dir`, which is both the media root and the key-frame root. Sources follow
the upstream naming that selects a media root: "STR_synthetic", "TVG_synthetic",
"videor1_synthetic_mcq".
"""

from __future__ import annotations

import dataclasses
import json
import os

import cv2
import numpy as np

from o3video_jax import io

COLORS = {  # RGB, far apart in hue so that they survive mp4v's chroma subsampling
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 80, 230),
    "yellow": (230, 210, 40),
    "purple": (160, 60, 200),
    "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (32, 32, 32)


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
    """One object: visible on frames [first_frame, last_frame], centre moving linearly."""

    color: str
    shape: str
    size: int  # diameter / side / triangle base and height, in pixels
    first_frame: int
    last_frame: int
    start_xy: tuple[float, float]
    end_xy: tuple[float, float]

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclasses.dataclass(frozen=True)
class VideoSpec:
    width: int
    height: int
    fps: int
    num_frames: int
    objects: tuple[ObjectSpec, ...]

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps


@dataclasses.dataclass(frozen=True)
class GroundTruth:
    """Per object name: boxes float32[F, 4] pixel [x1, y1, x2, y2] (nan when not visible),
    visible bool[F], and the visible interval [appear, disappear) in seconds."""

    boxes: dict[str, np.ndarray]
    visible: dict[str, np.ndarray]
    intervals: dict[str, tuple[float, float]]


def _draw(canvas: np.ndarray, obj: ObjectSpec, frame: int, color) -> None:
    span = max(obj.last_frame - obj.first_frame, 1)
    a = (frame - obj.first_frame) / span
    cx = obj.start_xy[0] + a * (obj.end_xy[0] - obj.start_xy[0])
    cy = obj.start_xy[1] + a * (obj.end_xy[1] - obj.start_xy[1])
    half = obj.size / 2
    if obj.shape == "circle":
        cv2.circle(canvas, (round(cx), round(cy)), round(half), color, -1, cv2.LINE_8)
    elif obj.shape == "square":
        p1 = (round(cx - half), round(cy - half))
        p2 = (round(cx - half) + obj.size - 1, round(cy - half) + obj.size - 1)
        cv2.rectangle(canvas, p1, p2, color, -1, cv2.LINE_8)
    elif obj.shape == "triangle":
        pts = np.array(
            [[cx, cy - half], [cx - half, cy + half - 1], [cx + half, cy + half - 1]]
        ).round()
        cv2.fillPoly(canvas, [pts.astype(np.int32)], color, cv2.LINE_8)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; expected one of {SHAPES}")


def render(spec: VideoSpec) -> tuple[np.ndarray, GroundTruth]:
    """Frames uint8[F, H, W, 3] RGB and their exact ground truth."""
    f, h, w = spec.num_frames, spec.height, spec.width
    frames = np.empty((f, h, w, 3), np.uint8)
    frames[:] = BACKGROUND
    boxes, visible, intervals = {}, {}, {}
    mask = np.zeros((h, w), np.uint8)
    for obj in spec.objects:
        if not 0 <= obj.first_frame <= obj.last_frame < f:
            raise ValueError(
                f"{obj.name}: frames [{obj.first_frame}, {obj.last_frame}] not in video"
            )
        b = np.full((f, 4), np.nan, np.float32)
        for i in range(obj.first_frame, obj.last_frame + 1):
            _draw(frames[i], obj, i, COLORS[obj.color])
            mask[:] = 0
            _draw(mask, obj, i, 1)
            ys, xs = np.nonzero(mask)
            b[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        boxes[obj.name] = b
        visible[obj.name] = ~np.isnan(b[:, 0])
        intervals[obj.name] = (obj.first_frame / spec.fps, (obj.last_frame + 1) / spec.fps)
    return frames, GroundTruth(boxes, visible, intervals)


def make_video(path: str | os.PathLike, spec: VideoSpec) -> GroundTruth:
    """Write `spec` as an mp4 ('mp4v') at `path`; returns its ground truth."""
    frames, gt = render(spec)
    writer = cv2.VideoWriter(
        os.fspath(path), cv2.VideoWriter_fourcc(*"mp4v"), spec.fps, (spec.width, spec.height)
    )
    if not writer.isOpened():
        raise OSError(f"cv2.VideoWriter cannot write {os.fspath(path)!r}")
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return gt


def random_spec(
    rng: np.random.Generator,
    width: int = 160,
    height: int = 120,
    fps: int = 4,
    seconds: tuple[int, int] = (4, 8),
    num_objects: tuple[int, int] = (2, 3),
) -> VideoSpec:
    """2-3 objects with distinct colours, distinct appear times and one lane each."""
    if fps % 2:
        raise ValueError(f"random_spec: fps must be even (0.5 s time grid), got {fps}")
    if seconds[0] < 3 or num_objects[0] < 1:
        raise ValueError(f"random_spec: need >= 3 s and >= 1 object, got {seconds}, {num_objects}")
    dur = int(rng.integers(seconds[0], seconds[1] + 1))
    k = int(rng.integers(num_objects[0], num_objects[1] + 1))
    half_s = fps // 2  # frames per 0.5 s
    colors = rng.choice(list(COLORS), size=k, replace=False)
    lanes = rng.permutation(k)
    lane_h = height / k
    # Distinct appear times on the 0.5 s grid, each leaving >= 1.5 s of visibility.
    appear = np.sort(rng.choice(np.arange(0, 2 * dur - 3), size=k, replace=False))
    objects = []
    for j in range(k):
        size = int(rng.integers(max(10, int(lane_h * 0.4)), int(lane_h * 0.7) + 1))
        size = min(size, width // 4)
        gone = int(rng.integers(appear[j] + 3, 2 * dur + 1))  # half-seconds, exclusive
        cy = (lanes[j] + 0.5) * lane_h
        x_lo, x_hi = size / 2 + 1, width - size / 2 - 2
        xs = (x_lo, x_hi) if rng.random() < 0.5 else (x_hi, x_lo)
        objects.append(
            ObjectSpec(
                color=str(colors[j]),
                shape=str(rng.choice(SHAPES)),
                size=size,
                first_frame=int(appear[j]) * half_s,
                last_frame=gone * half_s - 1,
                start_xy=(xs[0], cy),
                end_xy=(xs[1], cy),
            )
        )
    return VideoSpec(width, height, fps, dur * fps, tuple(objects))


def blank_media(src_root: str | os.PathLike, dst_root: str | os.PathLike) -> str:
    """A copy of a dataset's media with every frame replaced by the background colour.

    Every videos/*.mp4 keeps its size, frame count and frame rate, every kfs/*.jpg its size,
    so the same records give the same prompts, without anything to see: the frame-blanking
    ablation. Returns `dst_root` (reused when already written).
    """
    src_root, dst_root = os.fspath(src_root), os.fspath(dst_root)
    done = os.path.join(dst_root, ".complete")
    if os.path.exists(done):
        return dst_root
    for sub in ("videos", "kfs"):
        src = os.path.join(src_root, sub)
        if not os.path.isdir(src):
            continue
        os.makedirs(os.path.join(dst_root, sub), exist_ok=True)
        for name in sorted(os.listdir(src)):
            path, out = os.path.join(src, name), os.path.join(dst_root, sub, name)
            if name.endswith(".jpg"):
                h, w = cv2.imread(path).shape[:2]
                blank = np.empty((h, w, 3), np.uint8)
                blank[:] = BACKGROUND
                cv2.imwrite(out, cv2.cvtColor(blank, cv2.COLOR_RGB2BGR))
            elif name.endswith(".mp4"):
                cap = cv2.VideoCapture(path)
                w, h = (
                    int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                    int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                )
                fps, n = cap.get(cv2.CAP_PROP_FPS), int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
                cap.release()
                if w <= 0 or h <= 0 or n <= 0:
                    raise ValueError(f"blank_media: cannot read the geometry of {path}")
                spec = VideoSpec(w, h, int(round(fps)), n, ())
                make_video(out, spec)
    open(done, "w").close()
    return dst_root


def write_corrupt_files(directory: str | os.PathLike) -> dict[str, str]:
    """Bad videos for tests: {"truncated", "random", "empty"} -> path (all named .mp4)."""
    directory = io.require_local(directory, "write_corrupt_files")
    os.makedirs(directory, exist_ok=True)
    obj = ObjectSpec("red", "square", 20, 0, 9, (20.0, 30.0), (60.0, 30.0))
    good = os.path.join(directory, "good_source.mp4")
    make_video(good, VideoSpec(96, 64, 4, 10, (obj,)))
    with open(good, "rb") as f:
        data = f.read()
    os.remove(good)
    paths = {k: os.path.join(directory, f"{k}.mp4") for k in ("truncated", "random", "empty")}
    with open(paths["truncated"], "wb") as f:
        f.write(data[: len(data) * 6 // 10])  # OpenCV's mp4 keeps its index at the end
    with open(paths["random"], "wb") as f:
        f.write(np.random.default_rng(0).bytes(4096))
    open(paths["empty"], "wb").close()
    return paths


def generate_dataset(
    out_dir: str | os.PathLike, n_videos: int, seed: int, *, perception: bool = False, **spec_kw
) -> dict:
    """Write n_videos synthetic videos and their records under `out_dir`.

    Layout: videos/syn_XXXXX.mp4, kfs/syn_XXXXX_fFFFF.jpg (frame FFFF), json_data/STGR-SFT.json,
    json_data/STGR-RL.json, json_data/vstar.json, json_data/perception.json (dense one-hop SFT
    records of every video: `inventory_record` and `perception_records`, for a perception
    stage before SFT), ground_truth.json (per-frame boxes).
    Deterministic for a seed. `spec_kw` goes to `random_spec`. Returns {"sft", "rl",
    "vstar": record lists, "paths": {name: file}}. `perception` adds to the SFT records the
    dense one-hop `perception_records` of every video.
    """
    from o3video_jax.data import synthetic_questions as sq  # it imports this module

    out_dir = io.require_local(out_dir, "generate_dataset (train.synthetic_data.prepare uploads)")
    for sub in ("videos", "kfs", "json_data"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    sft, rl, vstar, gts, dense = [], [], [], {}, []
    for i in range(n_videos):
        rng = np.random.default_rng([seed, i])
        spec = random_spec(rng, **spec_kw)
        vid = f"syn_{i:05d}"
        frames, gt = render(spec)
        make_video(os.path.join(out_dir, "videos", vid + ".mp4"), spec)
        video = sq.SyntheticVideo(vid, f"videos/{vid}.mp4", spec, gt, frames)
        sft += sq.sft_records(video, rng, out_dir)
        spans = sq.perception_records(video)
        dense += [sq.inventory_record(video), *spans]
        if perception:
            sft += spans
        rl += sq.rl_records(video, rng, out_dir)
        vstar.append(sq.vstar_record(video, rng))
        gts[vid] = {
            name: {
                "interval": list(gt.intervals[name]),
                "boxes": [
                    b.tolist() if v else None
                    for b, v in zip(gt.boxes[name], gt.visible[name], strict=True)
                ],
            }
            for name in gt.boxes
        }
    paths = {
        "sft": os.path.join(out_dir, "json_data", "STGR-SFT.json"),
        "rl": os.path.join(out_dir, "json_data", "STGR-RL.json"),
        "vstar": os.path.join(out_dir, "json_data", "vstar.json"),
        "ground_truth": os.path.join(out_dir, "ground_truth.json"),
        "perception": os.path.join(out_dir, "json_data", "perception.json"),
    }
    files = (
        ("sft", sft),
        ("rl", rl),
        ("vstar", vstar),
        ("ground_truth", gts),
        ("perception", dense),
    )
    for key, obj in files:
        with open(paths[key], "w") as f:
            json.dump(obj, f, indent=1, allow_nan=False)
    return {"sft": sft, "rl": rl, "vstar": vstar, "perception": dense, "paths": paths}
