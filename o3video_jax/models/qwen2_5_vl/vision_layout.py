"""Host-side geometry of one row's vision patches (docs/qwen2_5_vl.md §2.3, §2.5, §2.6).

For the images and videos of one row (grids (t, h, w) in patches, in the row's pixel order),
computes in numpy what the jitted vision tower needs as fixed-size arrays:

  vision_pos          int32[P, 2]  (h, w) rotary ids per patch, processor order (merge-block
                                   order: t, h_blk, w_blk, dh, dw).
  window_index        int32[P/4]   merge units in window order (HF `window_index`): per item,
                                   per frame, ws x ws windows in window-row-major order, edge
                                   windows truncated, units raster-ordered inside a window.
  window_segment_ids  int32[P]     per patch, after the window permutation: window id 1, 2, ...
  frame_segment_ids   int32[P]     per patch, after the window permutation: (item, frame) id
                                   1, 2, ... (full-attention blocks attend within a frame).

Padding up to the budget P: padding units sit at the end of window_index and map to
themselves; their segment ids are 0 and their rotary ids are 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # a runtime import would be circular (the model package imports this)
    from o3video_jax.models.qwen2_5_vl.config import Qwen25VLConfig


@dataclasses.dataclass(frozen=True)
class VisionLayout:
    """Per-row vision geometry padded to `max_patches` (see the module docstring)."""

    vision_pos: np.ndarray  # int32[P, 2]
    window_index: np.ndarray  # int32[P // 4]
    window_segment_ids: np.ndarray  # int32[P]
    frame_segment_ids: np.ndarray  # int32[P]
    cu_window_seqlens: np.ndarray  # int32[num_windows + 1], unpadded (HF form, for checks)
    num_patches: int  # real patches (the rest is padding)


def check_grid(grid: Sequence[int], merge: int, where: str = "") -> tuple[int, int, int]:
    """Validates one (t, h, w) grid and returns it as ints."""
    if len(grid) != 3:
        raise ValueError(f"{where}grid {tuple(grid)} must be (t, h, w)")
    t, h, w = (int(x) for x in grid)
    if t <= 0 or h <= 0 or w <= 0:
        raise ValueError(f"{where}grid {(t, h, w)} must be positive")
    if h % merge or w % merge:
        raise ValueError(
            f"{where}grid {(t, h, w)}: h and w must be divisible by spatial_merge_size {merge}"
        )
    return t, h, w


def rotary_ids(t: int, h: int, w: int, merge: int) -> np.ndarray:
    """int32[t*h*w, 2]: (h, w) ids of one item's patches in merge-block processor order."""
    hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    shape = (h // merge, merge, w // merge, merge)
    hh = hh.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    ww = ww.reshape(shape).transpose(0, 2, 1, 3).reshape(-1)
    return np.tile(np.stack([hh, ww], axis=-1), (t, 1)).astype(np.int32)


def frame_windows(hh: int, ww: int, ws: int) -> tuple[np.ndarray, np.ndarray]:
    """One frame of hh x ww merge units tiled into ws x ws windows (edges truncated).

    Returns (int64[hh*ww] raster unit ids r*ww+c in window order, int64[hh*ww] window number
    of each, 0-based, in the same order).
    """
    r, c = np.meshgrid(np.arange(hh), np.arange(ww), indexing="ij")
    n_wc = -(-ww // ws)
    win = ((r // ws) * n_wc + (c // ws)).reshape(-1)
    order = np.argsort(win, kind="stable")  # stable: raster order inside each window
    win = win[order]
    # Renumber windows densely (all are non-empty with truncated edges, but be exact).
    _, win = np.unique(win, return_inverse=True)
    return order, win


def vision_layout(
    grids: Sequence[Sequence[int]],
    config: Qwen25VLConfig,
    max_patches: int | None = None,
    row: int | None = None,
) -> VisionLayout:
    """Geometry of one row's vision items; `grids` in the row's pixel order.

    max_patches: budget P (multiple of 4); None = exactly the row's patches.
    row: only used to name the culprit in error messages.
    """
    vc = config.vision
    merge, unit = vc.spatial_merge_size, vc.merge_unit
    ws = vc.window_tokens
    where = "" if row is None else f"row {row}: "
    checked = [check_grid(g, merge, where) for g in grids]
    n = sum(t * h * w for t, h, w in checked)
    budget = n if max_patches is None else int(max_patches)
    if budget % unit:
        raise ValueError(f"max_patches {budget} must be a multiple of {unit}")
    if n > budget:
        raise ValueError(f"{where}{n} vision patches (grids {checked}) exceed max_patches {budget}")

    pos_parts, index_parts, win_parts, frame_parts = [], [], [], []
    base = 0  # merge units before the current item
    n_windows = 0
    n_frames = 0
    for t, h, w in checked:
        hh, ww = h // merge, w // merge
        pos_parts.append(rotary_ids(t, h, w, merge))
        order, win = frame_windows(hh, ww, ws)
        n_win = int(win.max()) + 1
        for tt in range(t):
            index_parts.append(base + tt * hh * ww + order)
            win_parts.append(n_windows + 1 + win)
            frame_parts.append(np.full(hh * ww, n_frames + 1))
            n_windows += n_win
            n_frames += 1
        base += t * hh * ww

    n_units, p_units = n // unit, budget // unit
    window_index = np.arange(p_units, dtype=np.int32)  # padding maps to itself
    window_seg = np.zeros(p_units, np.int32)
    frame_seg = np.zeros(p_units, np.int32)
    vision_pos = np.zeros((budget, 2), np.int32)
    if n_units:
        window_index[:n_units] = np.concatenate(index_parts)
        window_seg[:n_units] = np.concatenate(win_parts)
        frame_seg[:n_units] = np.concatenate(frame_parts)
        vision_pos[:n] = np.concatenate(pos_parts)
    counts = np.bincount(window_seg[:n_units], minlength=n_windows + 1)[1:]
    cu = np.concatenate([[0], np.cumsum(counts * unit)]).astype(np.int32)
    return VisionLayout(
        vision_pos=vision_pos,
        window_index=window_index,
        window_segment_ids=np.repeat(window_seg, unit),
        frame_segment_ids=np.repeat(frame_seg, unit),
        cu_window_seqlens=cu,
        num_patches=n,
    )
