"""Host-side M-RoPE positions (t, h, w) for Qwen2.5-VL token sequences, in numpy.

A sequence is split into maximal runs of equal token type (0 text, 1 image pad, 2 video pad).
Text tokens get the same position on all three axes; the merged tokens of an image or video
(grid t, h, w in patches; H = h / m, W = w / m merged tokens) are ordered (k, r, c) with c
fastest and get (cur + tpos[k], cur + r, cur + c). Two rules differ in what follows a vision
block and in the temporal step (docs/qwen2_5_vl.md §4.2, §4.4):

rule="qwen" (default; the rule the released checkpoints were trained with, docs/design.md decision 5,
    as in the official Qwen code, transformers 4.49-4.5x and vLLM):
    - text after a vision block starts at max(all previous positions) + 1, which includes the
      temporal extent of a video;
    - video tpos[k] = trunc(f32(f32(k) * sec) * tps); images use step 0 (t = cur for all k).
rule="hf" (transformers 5.24 `get_rope_index`, exactly):
    - after a vision block cur += max(H, W), ignoring the temporal extent;
    - video tpos[k] = trunc(f32(k) * f32(tps * sec)); images use step 1.
With second_per_grid None a video uses sec = 1; seconds are rounded to float32 first, as the
processor's float32 tensor holds them.

Both rules: padding (attention_mask 0) gets position 0 on every axis, and the delta is
max(position) + 1 - (number of real tokens) as the `ModelInputs` contract defines it. (The
official 4.x code divides by the padded row length instead; with the contract's definition the
first decode position is real_len + delta = max + 1 for any padding.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # a runtime import would be circular (the model package imports this)
    from o3video_jax.models.qwen2_5_vl.config import Qwen25VLConfig

TEXT, IMAGE, VIDEO = 0, 1, 2
RULES = ("qwen", "hf")


def token_types(input_ids: np.ndarray, config: Qwen25VLConfig) -> np.ndarray:
    """int[..., L] -> int32[..., L]: 1 at image pads, 2 at video pads, 0 elsewhere."""
    input_ids = np.asarray(input_ids)
    types = np.zeros(input_ids.shape, np.int32)
    types[input_ids == config.image_token_id] = IMAGE
    types[input_ids == config.video_token_id] = VIDEO
    return types


def _temporal_positions(t: int, kind: int, sec: float | None, tps: float, rule: str) -> np.ndarray:
    """int64[t]: temporal offsets tpos[k] of the k-th merged frame, in float32 like the reference."""
    k = np.arange(t, dtype=np.float32)
    if kind == IMAGE:
        return np.arange(t, dtype=np.int64) if rule == "hf" else np.zeros(t, np.int64)
    sec32 = np.float32(1.0 if sec is None else sec)
    if rule == "hf":
        return (k * np.float32(np.float32(tps) * sec32)).astype(np.int64)
    return ((k * sec32) * np.float32(tps)).astype(np.int64)


def segment_positions(
    types: np.ndarray,
    grids: Sequence[Sequence[int]],
    kinds: Sequence[int],
    seconds_per_grid: Sequence[float | None],
    config: Qwen25VLConfig,
    rule: str = "qwen",
) -> tuple[np.ndarray, int]:
    """Positions of one example whose tokens are all real, starting at 0 (used for packing).

    types: int[n] token types (0 text, 1 image pad, 2 video pad).
    grids / kinds / seconds_per_grid: the vision items in order of appearance: grid (t, h, w)
      in patches, kind IMAGE or VIDEO, seconds per temporal grid (videos; None = 1.0).
    Returns (int32[3, n] positions, delta = max + 1 - n).
    """
    if rule not in RULES:
        raise ValueError(f"rule {rule!r} is not one of {RULES}")
    types = np.asarray(types)
    n = types.shape[0]
    m = config.vision.spatial_merge_size
    tps = config.vision.tokens_per_second
    pos = np.zeros((3, n), np.int64)
    boundaries = np.flatnonzero(np.diff(types)) + 1
    starts = np.concatenate([[0], boundaries]).astype(int)
    ends = np.concatenate([boundaries, [n]]).astype(int)
    cur = 0
    item = 0
    for start, end in zip(starts, ends, strict=True):
        kind = int(types[start])
        if kind == TEXT:
            pos[:, start:end] = cur + np.arange(end - start)
            cur += end - start
            continue
        # A run of pads may hold several adjacent items of the same kind.
        i = start
        while i < end:
            if item >= len(grids):
                raise ValueError(
                    f"vision pad run at token {i} has no matching item ({len(grids)} given)"
                )
            if int(kinds[item]) != kind:
                raise ValueError(
                    f"vision item {item} is kind {kinds[item]} but the pad run at token {i} "
                    f"is kind {kind}"
                )
            t, h, w = (int(x) for x in grids[item])
            hh, ww = h // m, w // m
            count = t * hh * ww
            if i + count > end:
                raise ValueError(
                    f"vision item {item} with grid {(t, h, w)} needs {count} pad tokens but its "
                    f"run at token {i} has only {end - i} left"
                )
            tpos = _temporal_positions(t, kind, seconds_per_grid[item], tps, rule)
            block = pos[:, i : i + count].reshape(3, t, hh, ww)
            block[0] = cur + tpos[:, None, None]
            block[1] = cur + np.arange(hh)[None, :, None]
            block[2] = cur + np.arange(ww)[None, None, :]
            if rule == "hf":
                cur += max(hh, ww)
            else:
                cur = int(block.max()) + 1
            i += count
            item += 1
    if item != len(grids):
        raise ValueError(f"{len(grids)} vision items given but the tokens hold only {item}")
    delta = int(pos.max()) + 1 - n if n else 0
    return pos.astype(np.int32), delta


def rope_positions(
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None,
    image_grid_thw: np.ndarray | None,
    video_grid_thw: np.ndarray | None,
    second_per_grid_ts: np.ndarray | None,
    config: Qwen25VLConfig,
    rule: str = "qwen",
    mm_token_type_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """M-RoPE positions of a batch laid out as an HF processor returns it.

    input_ids: int[B, L]; attention_mask: int[B, L] (None = all real), left or right padded;
    image_grid_thw: int[I, 3], video_grid_thw: int[V, 3], second_per_grid_ts: float[V]: the
    images (videos) are consumed in row-major order of their pad tokens across the batch.
    mm_token_type_ids: int[B, L] token types (default: derived from the pad token ids).
    Returns (int32[3, B, L] positions, 0 at padding; int32[B] deltas).
    """
    if rule not in RULES:
        raise ValueError(f"rule {rule!r} is not one of {RULES}")
    input_ids = np.asarray(input_ids)
    b, length = input_ids.shape
    mask = np.ones((b, length), bool) if attention_mask is None else np.asarray(attention_mask) != 0
    types = (
        token_types(input_ids, config)
        if mm_token_type_ids is None
        else np.asarray(mm_token_type_ids, np.int32)
    )
    m2 = config.vision.merge_unit
    queues = {
        IMAGE: [tuple(g) for g in np.asarray(image_grid_thw).reshape(-1, 3)]
        if image_grid_thw is not None
        else [],
        VIDEO: [tuple(g) for g in np.asarray(video_grid_thw).reshape(-1, 3)]
        if video_grid_thw is not None
        else [],
    }
    secs = (
        [float(s) for s in np.asarray(second_per_grid_ts, np.float32).reshape(-1)]
        if second_per_grid_ts is not None
        else [None] * len(queues[VIDEO])
    )
    if len(secs) != len(queues[VIDEO]):
        raise ValueError(
            f"second_per_grid_ts has {len(secs)} entries for {len(queues[VIDEO])} videos"
        )
    next_item = {IMAGE: 0, VIDEO: 0}
    positions = np.zeros((3, b, length), np.int32)
    deltas = np.zeros((b,), np.int32)
    for r in range(b):
        row_types = types[r][mask[r]]
        grids, kinds, row_secs = [], [], []
        for kind in (IMAGE, VIDEO):
            need = int(np.sum(row_types == kind))
            while need > 0:
                k = next_item[kind]
                if k >= len(queues[kind]):
                    raise ValueError(
                        f"row {r}: {need} {_NAMES[kind]} pad tokens left but no "
                        f"{_NAMES[kind]} grid remains ({len(queues[kind])} given)"
                    )
                grid = queues[kind][k]
                need -= int(np.prod(grid)) // m2
                next_item[kind] += 1
                grids.append(grid)
                kinds.append(kind)
                row_secs.append(secs[k] if kind == VIDEO else None)
        # Items must be in order of appearance; the row's image and video runs interleave.
        order = _appearance_order(row_types, kinds, grids, m2)
        try:
            pos, delta = segment_positions(
                row_types,
                [grids[i] for i in order],
                [kinds[i] for i in order],
                [row_secs[i] for i in order],
                config,
                rule,
            )
        except ValueError as e:
            raise ValueError(f"row {r}: {e}") from None
        positions[:, r, mask[r]] = pos
        deltas[r] = delta
    for kind in (IMAGE, VIDEO):
        if next_item[kind] != len(queues[kind]):
            raise ValueError(
                f"{len(queues[kind])} {_NAMES[kind]} grids given but the batch's pad tokens "
                f"use {next_item[kind]}"
            )
    return positions, deltas


_NAMES = {IMAGE: "image", VIDEO: "video"}


def _appearance_order(types: np.ndarray, kinds, grids, m2: int) -> list[int]:
    """Indices of (kinds, grids) sorted by where each item's first pad token sits in `types`."""
    first = {}
    for kind in (IMAGE, VIDEO):
        where = np.flatnonzero(types == kind)
        offset = 0
        for i, (k, g) in enumerate(zip(kinds, grids, strict=True)):
            if k != kind:
                continue
            first[i] = where[offset] if offset < len(where) else len(types)
            offset += int(np.prod(g)) // m2
    return sorted(range(len(kinds)), key=lambda i: first[i])
