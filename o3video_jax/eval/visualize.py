"""Draw a completion's grounded evidence on its frames and save a PNG strip.

Each claim `<obj>n</obj><box>[x1,y1,x2,y2]</box>at<t>T</t>s` (the single-box form, as the
original visualiser) is drawn on the frame whose timestamp is nearest to T: a box in a
rotating colour with a filled name label. Every tile carries a "T s" overlay; a white panel
under the strip shows the `<answer>`. Boxes are in the pixels of `frames` as given.
"""

from __future__ import annotations

import re

import cv2
import numpy as np

from o3video_jax import io
from o3video_jax.eval.tts import Claim, parse_claims

__all__ = ["draw_claims", "render_example"]

# Blue, red, orange, green, grey (RGB), the original's highlight rotation.
COLORS = ((30, 90, 230), (220, 40, 40), (240, 150, 20), (40, 170, 60), (120, 120, 120))
_ANSWER_RE = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _put_label(img: np.ndarray, text: str, x: int, y: int, color, scale: float) -> None:
    """Text on a filled background box whose bottom-left corner is (x, y)."""
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, 1)
    x = min(max(x, 0), max(img.shape[1] - tw - 2, 0))
    y = min(max(y, th + base + 2), img.shape[0])
    cv2.rectangle(img, (x, y - th - base - 2), (x + tw + 2, y), color, thickness=-1)
    cv2.putText(img, text, (x + 1, y - base), _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)


def _ascii(text: str) -> str:
    # cv2's Hershey fonts only cover ASCII.
    return text.encode("ascii", "replace").decode("ascii")


def draw_claims(frame: np.ndarray, claims: list[tuple[int, Claim]], t: float) -> np.ndarray:
    """A copy of `frame` (uint8[H, W, 3] RGB) with `(color_index, claim)` boxes and a time tag."""
    img = np.ascontiguousarray(frame, dtype=np.uint8).copy()
    h, w = img.shape[:2]
    scale = max(0.35, min(h, w) / 480)
    thickness = max(1, round(min(h, w) / 160))
    for color_index, claim in claims:
        color = COLORS[color_index % len(COLORS)]
        # Clamp so absurd coordinates cannot overflow cv2's int32 drawing API.
        x1, x2 = (int(np.clip(v, -1, w)) for v in (claim.box[0], claim.box[2]))
        y1, y2 = (int(np.clip(v, -1, h)) for v in (claim.box[1], claim.box[3]))
        cv2.rectangle(img, (x1, y1), (x2, y2), color, thickness)
        _put_label(img, _ascii(claim.name)[:40], x1, y1, color, scale)
    _put_label(img, f"{t:.1f}s", 0, h, (0, 0, 0), scale)
    return img


def _pick_frames(num_frames: int, claimed: set[int], max_frames: int) -> list[int]:
    """All frames if few; else every claimed frame plus evenly spaced ones, in time order."""
    if num_frames <= max_frames:
        return list(range(num_frames))
    keep = sorted(claimed)[:max_frames]
    for idx in np.linspace(0, num_frames - 1, max_frames).round().astype(int):
        if len(keep) >= max_frames:
            break
        if idx not in keep:
            keep.append(int(idx))
    return sorted(keep)


def render_example(
    frames: np.ndarray,
    timestamps,
    completion_text: str,
    out_png: str,
    *,
    max_frames: int = 8,
    tile_height: int = 224,
) -> np.ndarray:
    """Renders the claims of `completion_text` on `frames` and writes a PNG strip.

    Args:
      frames: uint8[T, H, W, 3] RGB frames as fed to the model.
      timestamps: float[T] seconds of each frame (claims go to the nearest one).
      completion_text: the model's completion (`<think>` with claims, `<answer>`).
      out_png: output path.
      max_frames: most tiles in the strip (frames with claims are kept first).
      tile_height: tiles are resized to this height (never upscaled).

    Returns:
      uint8[h, w, 3] RGB, the image written to `out_png`.
    """
    frames = np.asarray(frames)
    times = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8[T, H, W, 3], got {frames.dtype}{frames.shape}")
    if times.shape[0] != frames.shape[0]:
        raise ValueError(f"{times.shape[0]} timestamps for {frames.shape[0]} frames")
    per_frame: dict[int, list[tuple[int, Claim]]] = {}
    for i, claim in enumerate(parse_claims(completion_text)):
        idx = int(np.argmin(np.abs(times - claim.t)))
        per_frame.setdefault(idx, []).append((i, claim))
    h, w = frames.shape[1:3]
    scale = min(1.0, tile_height / h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    tiles = []
    for idx in _pick_frames(frames.shape[0], set(per_frame), max_frames):
        tile = draw_claims(frames[idx], per_frame.get(idx, []), float(times[idx]))
        tiles.append(cv2.resize(tile, size, interpolation=cv2.INTER_AREA) if scale < 1 else tile)
    strip = np.concatenate(tiles, axis=1)
    answer = _ANSWER_RE.search(completion_text)
    text = _ascii("Answer: " + (answer.group(1) if answer else "(none)")).replace("\n", " ")
    panel = np.full((32, strip.shape[1], 3), 255, np.uint8)
    cv2.putText(panel, text[: strip.shape[1] // 9], (6, 22), _FONT, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    image = np.concatenate([strip, panel], axis=0)
    ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode {out_png}")
    io.write_bytes(out_png, png.tobytes())  # local or gs://
    return image
