"""An animated GIF of a completion's evidence, in the spirit of upstream's visualiser (§5.5).

The frames fed to the model play in time order under a white text panel; a frame that a
grounded claim cites is held longer with the claim's box, name label and time drawn (the
same drawing as `visualize.render_example`), and its panel shows the claim; the last frame
holds the answer. Written with Pillow, looping.
"""

from __future__ import annotations

import re

import cv2
import numpy as np
from PIL import Image

from o3video_jax.eval.tts import parse_claims
from o3video_jax.eval.visualize import draw_claims

__all__ = ["animation_frames", "write_gif"]

_ANSWER_RE = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _panel(width: int, text: str) -> np.ndarray:
    panel = np.full((40, width, 3), 255, np.uint8)
    text = text.encode("ascii", "replace").decode("ascii").replace("\n", " ")
    cv2.putText(panel, text[: max(width // 8, 1)], (6, 26), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return panel


def animation_frames(frames: np.ndarray, timestamps, completion_text: str, height: int = 224):
    """[(uint8[h, w, 3] image, duration ms)] of the animation (see the module docstring)."""
    frames = np.asarray(frames)
    times = np.asarray(timestamps, np.float64).reshape(-1)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8[T, H, W, 3], got {frames.dtype}{frames.shape}")
    if times.shape[0] != frames.shape[0]:
        raise ValueError(f"{times.shape[0]} timestamps for {frames.shape[0]} frames")
    per_frame: dict[int, list] = {}
    for i, claim in enumerate(parse_claims(completion_text)):
        per_frame.setdefault(int(np.argmin(np.abs(times - claim.t))), []).append((i, claim))
    scale = min(1.0, height / frames.shape[1])
    size = (max(1, round(frames.shape[2] * scale)), max(1, round(frames.shape[1] * scale)))
    out = []
    for idx in range(frames.shape[0]):
        claims = per_frame.get(idx, [])
        tile = draw_claims(frames[idx], claims, float(times[idx]))
        tile = cv2.resize(tile, size, interpolation=cv2.INTER_AREA) if scale < 1 else tile
        caption = "; ".join(f"{c.name} at {c.t:g}s" for _, c in claims) or f"{times[idx]:.1f}s"
        out.append(
            (np.concatenate([tile, _panel(tile.shape[1], caption)]), 1500 if claims else 250)
        )
    answer = _ANSWER_RE.search(completion_text)
    last = out[-1][0][:-40] if out else np.zeros((size[1], size[0], 3), np.uint8)
    text = "Answer: " + (answer.group(1) if answer else "(none)")
    out.append((np.concatenate([last, _panel(last.shape[1], text)]), 4000))
    return out


def write_gif(frames: np.ndarray, timestamps, completion_text: str, path: str, height: int = 224):
    """Writes the animation to `path` (GIF); returns the number of frames written."""
    seq = animation_frames(frames, timestamps, completion_text, height)
    images = [Image.fromarray(img) for img, _ in seq]
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=[d for _, d in seq], loop=0
    )
    return len(images)
