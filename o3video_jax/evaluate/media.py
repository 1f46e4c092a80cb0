"""Frames and vision items of one benchmark item, sampled as the reference evaluation does.

- V-STaR (`extract_frames_from_video`): cv2 at 1 fps, at most 16 frames; if int(duration)
  > 16, `linspace(0, total - 1, 16)` cast to int, else every int(video_fps)-th frame from 0,
  capped at 16; frame time = index / video_fps; a frame that fails to decode is dropped.
  Each frame is one image at qwen_vl_utils' image budget (near native resolution).
- VideoMME / WorldSense / VideoMMMU: one native video as qwen_vl_utils reads it (2 fps, at
  least 4 and at most `max_frames` frames, even, `linspace(...).round()` indices), every frame
  resized to smart_resize(min_pixels=128*28*28, max_pixels=the benchmark's video_max_pixels);
  1.0 s per temporal grid step by default (upstream's vLLM got no fps: its processor's 2.0).
- TVG: the training frame layout (2 fps, at most 16 frames, ~128 tokens per frame).

Failures raise `MediaError` (reason "decode"), which the runner counts as a bad item.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from o3video_jax.data import vision
from o3video_jax.data.model_inputs import VisionItem
from o3video_jax.data.video import VideoDecodeError, read_video

__all__ = ["Media", "MediaError", "decode_image", "frames_media", "native_video", "vstar_frames"]


class MediaError(Exception):
    reason = "decode"


@dataclasses.dataclass(frozen=True)
class Media:
    """frames: uint8[T, H, W, 3] RGB as fed to the model; times: T seconds (prompt labels in
    frames mode); sample_fps: frames per second of the sampling; items: the vision items in
    prompt order; size: (W, H) of the frames fed to the model."""

    frames: np.ndarray
    times: tuple[float, ...]
    sample_fps: float
    items: tuple[VisionItem, ...]
    size: tuple[int, int]


def _images(frames: list[np.ndarray], min_pixels: int, max_pixels: int):
    items, fed = [], []
    for f in frames:
        pv, grid = vision.preprocess_image(f, min_pixels, max_pixels)
        h, w = int(grid[1]) * vision.PATCH_SIZE, int(grid[2]) * vision.PATCH_SIZE
        items.append(VisionItem(pv, tuple(grid), "image"))
        fed.append(f if f.shape[:2] == (h, w) else vision.resize(f, h, w))
    return items, np.stack(fed)


def vstar_frames(
    path: str, *, fps: float = 1.0, max_frames: int = 16, min_pixels: int, max_pixels: int
) -> Media:
    """V-STaR's multi-image input (module docstring)."""
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise MediaError(f"could not open video {path!r}")
    try:
        video_fps = cap.get(cv2.CAP_PROP_FPS)
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if not video_fps > 0 or total <= 0:
            raise MediaError(f"{path!r}: no frame count / fps in the container")
        interval = max(int(video_fps / fps), 1)  # upstream divides by zero below 1 fps files
        if int(total / video_fps * fps) > max_frames:
            indices = np.linspace(0, total - 1, max_frames, dtype=int).tolist()
        else:
            indices = list(range(0, total, interval))[:max_frames]
        frames, times = [], []
        for idx in indices:
            cap.set(cv2.CAP_PROP_POS_FRAMES, idx)
            ok, bgr = cap.read()
            if not ok:
                continue
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            times.append(idx / video_fps)
    finally:
        cap.release()
    if not frames:
        raise MediaError(f"no frames decoded from {path!r}")
    items, fed = _images(frames, min_pixels, max_pixels)
    size = (fed.shape[2], fed.shape[1])
    return Media(fed, tuple(times), float(fps), tuple(items), size)


def _sampled(path: str, fps: float, max_frames: int, min_pixels: int, max_pixels: int):
    """The Open-o3 sampled clip, its frames resized to the smart_resize size, and (h, w)."""
    try:
        clip = read_video(path, fps, max_frames, 4, sampling="o3")
    except VideoDecodeError as e:
        raise MediaError(f"{path!r}: {e}") from e
    if clip.skipped:
        raise MediaError(f"{path!r}: {clip.skipped} sampled frames undecodable")
    h, w = vision.smart_resize(
        *clip.frames.shape[1:3], min_pixels=min_pixels, max_pixels=max_pixels
    )
    return clip, [vision.resize(f, h, w) for f in clip.frames], h, w


def native_video(
    path: str,
    *,
    fps: float = 2.0,
    max_frames: int,
    min_pixels: int,
    max_pixels: int,
    second_per_grid: float | None = None,
) -> Media:
    """One video item as qwen_vl_utils + the Qwen processor build it (module docstring).

    second_per_grid: seconds per temporal grid step (M-RoPE time positions); None: 2 / the
    sample fps. Upstream handed the frames to vLLM without an fps, so its processor's default
    (fps 2.0: 1.0 s per grid) applied whatever the sampling; pass 1.0 for that.
    """
    clip, frames, h, w = _sampled(path, fps, max_frames, min_pixels, max_pixels)
    frames = np.stack(frames)
    pv, grid = vision.preprocess_video(frames, h * w, h * w)
    spg = vision.second_per_grid(clip.sample_fps) if second_per_grid is None else second_per_grid
    item = VisionItem(pv, tuple(grid), "video", float(spg))
    times = tuple(float(t) for t in clip.o3_labels)
    return Media(frames, times, float(clip.sample_fps), (item,), (w, h))


def frames_media(
    path: str, *, fps: float = 2.0, max_frames: int = 16, min_pixels: int, max_pixels: int
) -> Media:
    """The training layout: sampled frames as separate images at the frame budget."""
    clip, frames, h, w = _sampled(path, fps, max_frames, min_pixels, max_pixels)
    items, fed = _images(frames, h * w, h * w)
    times = tuple(float(t) for t in clip.o3_labels)
    return Media(fed, times, float(clip.sample_fps), tuple(items), (w, h))


def decode_image(data: bytes, *, min_pixels: int, max_pixels: int) -> VisionItem:
    """An encoded image (VideoMMMU's `image.bytes`) as one image item."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise MediaError("the item's image does not decode")
    pv, grid = vision.preprocess_image(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), min_pixels, max_pixels)
    return VisionItem(pv, tuple(grid), "image")
