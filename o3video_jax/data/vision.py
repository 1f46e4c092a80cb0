"""Qwen2.5-VL pixel preprocessing on the host: smart_resize, bicubic resize, CLIP normalisation
and patchification into the processor's row order (docs/qwen2_5_vl.md §2.3, §5).

Output rows are ordered (t, h_blk, w_blk, dh, dw): 2x2 merge blocks in raster order, each
block's four patches in raster order. Each row is one 14x14 patch of two consecutive frames,
flattened (C, T, Ph, Pw) with Pw fastest: 3 * 2 * 14 * 14 = 1176 values.

Resampling (`resample=`):
  "pil"  (default) PIL bicubic on uint8: the algorithm of transformers' PIL backend (what
         Qwen2VLImageProcessor runs without torchvision), so pixel_values match it to 2.4e-7
         with or without resizing; torchvision's `resize(antialias=True)` (used by Open-o3
         Video / qwen-vl-utils) is within +-1 grey level of it. ~2.5-3 ms per 640x360 ->
         420x224 frame.
  "fast" OpenCV approximation: a separable prefilter with PIL's stretched bicubic kernel
         (the antialiasing), then cv2.INTER_CUBIC sampling; ~3-4x cheaper. Against "pil" on
         real 640x360/640x480 video frames at downscales 1.5-5.7x: mean |diff| 0.26 grey
         levels, max 13 (sharp edges); on smooth rendered scenes mean 0.01-0.17, max 3-8.
         Upscaling uses plain INTER_CUBIC (a = -0.75 instead of PIL's -0.5): mean 0.6, max 13.
  16 frames 640x360 -> 420x224 as images (2-core CPU, CPU time): transformers 73 ms, ours
  "pil" 50 ms (1.5x, bound by the shared PIL resize), "fast" 22 ms (3.4x); see
  benchmarks/data_pipeline.py.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image

PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
FACTOR = PATCH_SIZE * MERGE_SIZE  # 28: sides are multiples of one merged token
PATCH_DIM = 3 * TEMPORAL_PATCH_SIZE * PATCH_SIZE * PATCH_SIZE  # 1176

# transformers' Qwen2VL processor defaults (docs/qwen2_5_vl.md §5.1).
IMAGE_MIN_PIXELS = 56 * 56
IMAGE_MAX_PIXELS = 28 * 28 * 1280
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
# Open-o3 Video's constants (docs/open_o3_video.md §1.4): images <= 256 tokens; video frames at
# 128 tokens, whose effective cap is max(min(100352, total/n*2), int(1.05*100352)) = 105369.
O3_IMAGE_MAX_PIXELS = 256 * 28 * 28
O3_FRAME_MAX_PIXELS = int(1.05 * 128 * 28 * 28)

OPENAI_CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
OPENAI_CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
# Fused rescale + normalise (x - 255 mean) / (255 std), as transformers' torchvision backend.
_MEAN_255 = (OPENAI_CLIP_MEAN * np.float32(255.0)).reshape(3, 1, 1, 1)
_STD_255 = (OPENAI_CLIP_STD * np.float32(255.0)).reshape(3, 1, 1, 1)


def smart_resize(
    height: int,
    width: int,
    factor: int = FACTOR,
    min_pixels: int = IMAGE_MIN_PIXELS,
    max_pixels: int = IMAGE_MAX_PIXELS,
) -> tuple[int, int]:
    """(h', w'): multiples of `factor`, area within [min_pixels, max_pixels], aspect kept.

    Python's round() (half to even) is part of the rule: 70 / 28 = 2.5 rounds to 2.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"smart_resize: height and width must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"smart_resize: aspect ratio must be at most 200, got {height}x{width} "
            f"({max(height, width) / min(height, width):.1f})"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _bicubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _antialias_kernel(scale: float) -> np.ndarray:
    """PIL's bicubic kernel stretched by a downscale factor `scale` > 1, sampled, normalised."""
    radius = int(math.ceil(2 * scale))
    w = _bicubic(np.arange(-radius, radius + 1) / scale)
    return (w / w.sum()).astype(np.float32)


def resize(rgb: np.ndarray, height: int, width: int, resample: str = "pil") -> np.ndarray:
    """Bicubic resize of uint8[H, W, 3] to uint8[height, width, 3] (see module docstring)."""
    h0, w0 = rgb.shape[:2]
    if (h0, w0) == (height, width):
        return rgb
    if resample == "pil":
        img = Image.fromarray(np.ascontiguousarray(rgb))
        return np.asarray(img.resize((width, height), Image.BICUBIC))
    if resample == "fast":
        sy, sx = h0 / height, w0 / width
        if sy > 1 or sx > 1:
            one = np.ones(1, np.float32)
            kx = _antialias_kernel(sx) if sx > 1 else one
            ky = _antialias_kernel(sy) if sy > 1 else one
            rgb = cv2.sepFilter2D(rgb, -1, kx, ky, borderType=cv2.BORDER_REFLECT)
        return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_CUBIC)
    raise ValueError(f"resize: resample must be 'pil' or 'fast', got {resample!r}")


def _normalise(x: np.ndarray) -> np.ndarray:
    """uint8[..., 3, T, 14, 14] -> float32, (x - 255 mean) / (255 std) per channel."""
    out = np.empty(x.shape, np.float32)
    np.subtract(x, _MEAN_255, out=out)
    out /= _STD_255
    return out


def patchify(frames: np.ndarray) -> np.ndarray:
    """Normalise and patchify uint8[T, H, W, 3] (T even, H and W multiples of 28).

    Returns float32[T/2 * H/14 * W/14, 1176] in processor order. The permutation runs on the
    uint8 frames (a quarter of the bytes) into contiguous memory, so that both float passes
    are contiguous: about 2x faster than permuting floats or computing on the strided view.
    """
    t, h, w, c = frames.shape
    gt, gh, gw = t // TEMPORAL_PATCH_SIZE, h // PATCH_SIZE, w // PATCH_SIZE
    m, p = MERGE_SIZE, PATCH_SIZE
    x = frames.reshape(gt, TEMPORAL_PATCH_SIZE, gh // m, m, p, gw // m, m, p, c)
    # (gt, tp, hb, dh, ph, wb, dw, pw, c) -> (gt, hb, wb, dh, dw, c, tp, ph, pw)
    x = np.ascontiguousarray(x.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7))
    return _normalise(x).reshape(gt * gh * gw, PATCH_DIM)


def _patchify_image(img: np.ndarray) -> np.ndarray:
    """uint8[H, W, 3] -> float32[H/14 * W/14, 1176]: patchify([img, img]), normalising once."""
    h, w, c = img.shape
    gh, gw = h // PATCH_SIZE, w // PATCH_SIZE
    m, p = MERGE_SIZE, PATCH_SIZE
    x = img.reshape(gh // m, m, p, gw // m, m, p, c)
    # (hb, dh, ph, wb, dw, pw, c) -> (hb, wb, dh, dw, c, 1, ph, pw)
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 4, 6, 2, 5))[..., None, :, :]
    return np.repeat(_normalise(x), TEMPORAL_PATCH_SIZE, axis=-3).reshape(gh * gw, PATCH_DIM)


def _check_frames(frames: np.ndarray, ndim: int, name: str) -> None:
    if frames.ndim != ndim or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        want = "uint8[H, W, 3]" if ndim == 3 else "uint8[T, H, W, 3]"
        raise ValueError(f"{name}: expected RGB {want}, got {frames.dtype}{list(frames.shape)}")


def preprocess_image(
    rgb: np.ndarray,
    min_pixels: int = IMAGE_MIN_PIXELS,
    max_pixels: int = IMAGE_MAX_PIXELS,
    resample: str = "pil",
) -> tuple[np.ndarray, np.ndarray]:
    """One RGB image uint8[H, W, 3] -> (float32[h*w, 1176], int64[3] grid (1, h, w)).

    The image fills both temporal slots of its rows (Qwen duplicates images to T=2).
    """
    _check_frames(rgb, 3, "preprocess_image")
    height, width = smart_resize(*rgb.shape[:2], min_pixels=min_pixels, max_pixels=max_pixels)
    img = resize(rgb, height, width, resample)
    grid = np.array([1, height // PATCH_SIZE, width // PATCH_SIZE], np.int64)
    return _patchify_image(img), grid


def preprocess_video(
    frames: np.ndarray,
    min_pixels: int = VIDEO_MIN_PIXELS,
    max_pixels: int = VIDEO_MAX_PIXELS,
    resample: str = "pil",
) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8[T, H, W, 3] -> (float32[ceil(T/2)*h*w, 1176], int64[3] grid (t, h, w)).

    One smart_resize for all frames; an odd T repeats the last frame (transformers' rule).
    """
    _check_frames(frames, 4, "preprocess_video")
    if frames.shape[0] == 0:
        raise ValueError("preprocess_video: got no frames")
    height, width = smart_resize(*frames.shape[1:3], min_pixels=min_pixels, max_pixels=max_pixels)
    if frames.shape[1:3] != (height, width):
        frames = np.stack([resize(f, height, width, resample) for f in frames])
    if pad := -frames.shape[0] % TEMPORAL_PATCH_SIZE:
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
    grid = np.array(
        [frames.shape[0] // TEMPORAL_PATCH_SIZE, height // PATCH_SIZE, width // PATCH_SIZE],
        np.int64,
    )
    return patchify(frames), grid


def second_per_grid(sample_fps: float, temporal_patch_size: int = TEMPORAL_PATCH_SIZE) -> float:
    """Seconds covered by one temporal grid step (`second_per_grid_ts`): 2 / fps -> 1.0 at 2 fps."""
    if not sample_fps > 0:
        raise ValueError(f"second_per_grid: sample_fps must be positive, got {sample_fps}")
    return temporal_patch_size / sample_fps
