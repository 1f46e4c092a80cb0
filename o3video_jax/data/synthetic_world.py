"""The synthetic world: coloured shapes on a plain background, rendered with exact ground truth.

A video shows a few named coloured shapes ("red circle", "blue square", ...). Each object is
visible on a contiguous run of frames, moves in a straight line and stays in its own horizontal
lane, so objects never overlap and every box is the bounding box of the object's own rendered
pixels, [x1, y1, x2, y2] in pixel edges (x2, y2 exclusive). Appear and disappear times sit on a
0.5 s grid. The questions and records built on it are `synthetic_questions` and `synthetic`;
both import this module, so neither imports the other's caller.
"""

from __future__ import annotations

import dataclasses
import os

import cv2
import numpy as np

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
