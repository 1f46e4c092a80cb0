"""Host-side builder of `ModelInputs` from tokenized examples and their preprocessed media.

A batch is a list of rows; a row is a list of `Segment`s (several segments = a packed row).
Each segment is one example: its tokens (with the processor-expanded `<|image_pad|>` /
`<|video_pad|>` runs) and its vision items. Within a row:
  - segment ids are 1, 2, ... per segment, 0 at padding;
  - every segment's M-RoPE positions start at 0 (`positions.segment_positions`);
  - pixel rows are concatenated segment by segment, and within a segment in `Segment.vision`
    order; `feature_index` maps the k-th image-pad run of a segment to its k-th image item
    (videos alike), so images and videos may be listed in any relative order;
  - `rope_deltas` is the delta of the row's last segment (the one a decode continues).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from o3video_jax.models.qwen2_5_vl import positions as positions_lib
from o3video_jax.models.qwen2_5_vl.config import Qwen25VLConfig
from o3video_jax.models.qwen2_5_vl.inputs import ModelInputs
from o3video_jax.models.qwen2_5_vl.vision_layout import check_grid, vision_layout

KINDS = {"image": positions_lib.IMAGE, "video": positions_lib.VIDEO}


@dataclasses.dataclass(frozen=True)
class VisionItem:
    """One preprocessed image or video.

    pixel_values: float32[t*h*w, 1176] in processor order; grid_thw: (t, h, w) in patches;
    kind: "image" | "video"; second_per_grid: seconds per temporal grid step (videos; None
    means 1.0 as in HF).
    """

    pixel_values: np.ndarray
    grid_thw: tuple[int, int, int]
    kind: str = "image"
    second_per_grid: float | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"vision item kind {self.kind!r} is not 'image' or 'video'")
        object.__setattr__(self, "grid_thw", tuple(int(x) for x in self.grid_thw))

    @property
    def num_patches(self) -> int:
        t, h, w = self.grid_thw
        return t * h * w


@dataclasses.dataclass(frozen=True)
class Segment:
    """One example: input_ids int[n] and its vision items (see the module docstring)."""

    input_ids: np.ndarray
    vision: Sequence[VisionItem] = ()


def _segment_arrays(seg: Segment, config: Qwen25VLConfig, rule: str, where: str):
    """Positions, delta and local feature index (into this segment's merged tokens)."""
    ids = np.asarray(seg.input_ids)
    if ids.ndim != 1:
        raise ValueError(f"{where}input_ids must be 1-D, got shape {ids.shape}")
    types = positions_lib.token_types(ids, config)
    unit = config.vision.merge_unit
    items = list(seg.vision)
    offsets = np.cumsum([0] + [it.num_patches // unit for it in items])
    feature = np.full(ids.shape, -1, np.int32)
    first_token = {}  # item index -> its first pad token (items in order of appearance)
    for name, kind in KINDS.items():
        where_tok = np.flatnonzero(types == kind)
        mine = [i for i, it in enumerate(items) if it.kind == name]
        need = sum(items[i].num_patches for i in mine) // unit
        if need != len(where_tok):
            raise ValueError(
                f"{where}{len(where_tok)} {name} pad tokens but its {len(mine)} {name} "
                f"item(s) have {need} merged tokens (t*h*w/{unit})"
            )
        done = 0
        for i in mine:
            count = items[i].num_patches // unit
            feature[where_tok[done : done + count]] = offsets[i] + np.arange(count)
            first_token[i] = where_tok[done] if count else len(ids)
            done += count
    order = sorted(range(len(items)), key=lambda i: first_token[i])
    pos, delta = positions_lib.segment_positions(
        types,
        [items[i].grid_thw for i in order],
        [KINDS[items[i].kind] for i in order],
        [items[i].second_per_grid for i in order],
        config,
        rule,
    )
    return pos, delta, feature


def build_model_inputs(
    rows: Sequence[Sequence[Segment]],
    config: Qwen25VLConfig,
    *,
    max_seq_len: int,
    max_patches: int,
    pad_side: str = "right",
    rule: str = "qwen",
) -> ModelInputs:
    """Packs rows of segments into fixed-size `ModelInputs` (B = len(rows), L, P budgets).

    pad_side: "right" (training) or "left" (prompts for `prefill`, last token at L - 1).
    rule: M-RoPE rule, "qwen" (default, docs/design.md decision 5) or "hf" (see positions.py).
    """
    if pad_side not in ("left", "right"):
        raise ValueError(f"pad_side {pad_side!r} is not 'left' or 'right'")
    b, length, budget = len(rows), int(max_seq_len), int(max_patches)
    unit, patch_dim = config.vision.merge_unit, config.vision.patch_dim
    if budget % unit:
        raise ValueError(f"max_patches {budget} must be a multiple of {unit}")
    input_ids = np.full((b, length), config.padding_id, np.int32)
    segment_ids = np.zeros((b, length), np.int32)
    pos = np.zeros((3, b, length), np.int32)
    deltas = np.zeros((b,), np.int32)
    feature_index = np.full((b, length), -1, np.int32)
    pixel_values = np.zeros((b, budget, patch_dim), np.float32)
    vision_pos = np.zeros((b, budget, 2), np.int32)
    window_index = np.tile(np.arange(budget // unit, dtype=np.int32), (b, 1))
    window_seg = np.zeros((b, budget), np.int32)
    frame_seg = np.zeros((b, budget), np.int32)

    for r, row in enumerate(rows):
        total = sum(len(np.asarray(s.input_ids)) for s in row)
        if total > length:
            raise ValueError(f"row {r}: {total} tokens exceed max_seq_len {length}")
        start = length - total if pad_side == "left" else 0
        tok, feat_base, patch = start, 0, 0
        grids = []
        for s, seg in enumerate(row):
            where = f"row {r} segment {s}: "
            for item in seg.vision:
                check_grid(item.grid_thw, config.vision.spatial_merge_size, where)
            p, delta, feat = _segment_arrays(seg, config, rule, where)
            n = p.shape[1]
            input_ids[r, tok : tok + n] = np.asarray(seg.input_ids)
            segment_ids[r, tok : tok + n] = s + 1
            pos[:, r, tok : tok + n] = p
            feature_index[r, tok : tok + n] = np.where(feat >= 0, feat + feat_base, -1)
            deltas[r] = delta
            for item in seg.vision:
                grid = item.grid_thw
                pv = np.asarray(item.pixel_values, np.float32)
                if pv.shape != (item.num_patches, patch_dim):
                    raise ValueError(
                        f"{where}{item.kind} with grid {grid} needs pixel_values of shape "
                        f"{(item.num_patches, patch_dim)}, got {pv.shape}"
                    )
                if patch + item.num_patches > budget:
                    n_row = sum(it.num_patches for sg in row for it in sg.vision)
                    raise ValueError(f"row {r}: {n_row} vision patches exceed max_patches {budget}")
                pixel_values[r, patch : patch + item.num_patches] = pv
                patch += item.num_patches
                feat_base += item.num_patches // unit
                grids.append(grid)
            tok += n
        layout = vision_layout(grids, config, budget, row=r)
        vision_pos[r] = layout.vision_pos
        window_index[r] = layout.window_index
        window_seg[r] = layout.window_segment_ids
        frame_seg[r] = layout.frame_segment_ids

    return ModelInputs(
        input_ids=input_ids,
        segment_ids=segment_ids,
        positions=pos,
        rope_deltas=deltas,
        pixel_values=pixel_values,
        vision_pos=vision_pos,
        window_index=window_index,
        window_segment_ids=window_seg,
        frame_segment_ids=frame_seg,
        feature_index=feature_index,
    )
