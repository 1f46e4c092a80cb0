"""`inputs_from_hf`: `ModelInputs` from arrays laid out as a Hugging Face processor returns them.

HF batches vision flat: `pixel_values` holds every image of the batch in scan order (the k-th
image fills the k-th run of `<|image_pad|>` counted row-major over (batch, seq)), likewise
`pixel_values_videos`. Here the flat arrays are split per row by counting each row's pad
tokens, and each row's pixels are laid out as [its images..., its videos...], padded to the
patch budget P; `feature_index` points every pad token at its merged token in that order.

Positions default to rule="hf" (transformers 5.24 `get_rope_index`) so that a forward pass
matches transformers exactly; pass rule="qwen" for the rule the checkpoints were trained with
(docs/design.md decision 5; identical for images and short videos). Rows may be left or right padded
(attention_mask 0 -> segment id 0, position 0). When `max_seq_len` exceeds L, the extra
padding goes on the left if every row ends in a real token (prompts stay right-aligned for
`prefill`), else on the right.
"""

from __future__ import annotations

import numpy as np

from o3video_jax.models.qwen2_5_vl.config import Qwen25VLConfig
from o3video_jax.models.qwen2_5_vl.inputs import ModelInputs
from o3video_jax.models.qwen2_5_vl.positions import IMAGE, VIDEO, rope_positions
from o3video_jax.models.qwen2_5_vl.vision_layout import check_grid, vision_layout


def _numpy(x, dtype=None) -> np.ndarray | None:
    """torch tensors (any device / dtype), jax or numpy arrays, lists -> numpy."""
    if x is None:
        return None
    if hasattr(x, "detach"):  # torch.Tensor; bfloat16 has no numpy equivalent in torch
        x = x.detach().cpu()
        x = x.float() if x.is_floating_point() else x
        x = x.numpy()
    return np.asarray(x) if dtype is None else np.asarray(x, dtype)


def _split_per_row(
    pad_counts: np.ndarray, grids: np.ndarray, pixels: np.ndarray, unit: int, name: str
) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Assigns flat items to rows: row b takes the next items until their merged tokens
    equal its pad count. Returns per row a list of (grid int[3], pixels float32[thw, 1176])."""
    sizes = np.prod(grids, axis=1) if len(grids) else np.zeros(0, np.int64)
    if int(sizes.sum()) != len(pixels):
        raise ValueError(
            f"{name} grids cover {int(sizes.sum())} patches but pixel values have {len(pixels)} rows"
        )
    starts = np.concatenate([[0], np.cumsum(sizes)])
    rows, k = [], 0
    for b, need in enumerate(pad_counts.tolist()):
        mine = []
        while need > 0:
            if k >= len(grids):
                raise ValueError(
                    f"row {b}: {need} {name} pad tokens left but all {len(grids)} {name} grids "
                    f"are used"
                )
            need -= int(sizes[k]) // unit
            mine.append((grids[k], pixels[starts[k] : starts[k + 1]]))
            k += 1
        if need < 0:
            raise ValueError(
                f"row {b}: its {name} pad tokens end inside {name} {k - 1} (grid "
                f"{tuple(grids[k - 1])}); pad counts and grids disagree"
            )
        rows.append(mine)
    if k != len(grids):
        raise ValueError(f"{len(grids)} {name} grids given but the pad tokens use only {k}")
    return rows


def inputs_from_hf(
    config: Qwen25VLConfig,
    *,
    input_ids,
    attention_mask=None,
    pixel_values=None,
    image_grid_thw=None,
    pixel_values_videos=None,
    video_grid_thw=None,
    second_per_grid_ts=None,
    mm_token_type_ids=None,
    max_seq_len: int | None = None,
    max_patches: int | None = None,
    rule: str = "hf",
) -> ModelInputs:
    """ModelInputs from HF processor outputs (torch, jax or numpy arrays).

    input_ids, attention_mask, mm_token_type_ids: int[B, L]; pixel_values: float[N_img, 1176];
    image_grid_thw: int[I, 3]; pixel_values_videos: float[N_vid, 1176]; video_grid_thw:
    int[V, 3]; second_per_grid_ts: float[V]. max_seq_len >= L (default L); max_patches: patch
    budget P per row (default: the largest row, rounded up to a multiple of 4).
    """
    ids = _numpy(input_ids, np.int64)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [B, L], got shape {ids.shape}")
    b, length = ids.shape
    mask = (
        np.ones((b, length), np.int32)
        if attention_mask is None
        else (_numpy(attention_mask) != 0).astype(np.int32)
    )
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
    vc = config.vision
    unit, patch_dim = vc.merge_unit, vc.patch_dim
    image_grids = _numpy(image_grid_thw, np.int64)
    video_grids = _numpy(video_grid_thw, np.int64)
    image_grids = np.zeros((0, 3), np.int64) if image_grids is None else image_grids.reshape(-1, 3)
    video_grids = np.zeros((0, 3), np.int64) if video_grids is None else video_grids.reshape(-1, 3)
    for name, grids in (("image", image_grids), ("video", video_grids)):
        for i, g in enumerate(grids):
            check_grid(g, vc.spatial_merge_size, f"{name} {i}: ")
    image_px = _numpy(pixel_values, np.float32)
    video_px = _numpy(pixel_values_videos, np.float32)
    image_px = np.zeros((0, patch_dim), np.float32) if image_px is None else image_px
    video_px = np.zeros((0, patch_dim), np.float32) if video_px is None else video_px
    for name, px in (("pixel_values", image_px), ("pixel_values_videos", video_px)):
        if px.ndim != 2 or px.shape[1] != patch_dim:
            raise ValueError(f"{name} must be [N, {patch_dim}], got shape {px.shape}")

    types = _numpy(mm_token_type_ids, np.int32)
    if types is None:
        types = np.where(
            ids == config.image_token_id, IMAGE, np.where(ids == config.video_token_id, VIDEO, 0)
        ).astype(np.int32)
    positions, deltas = rope_positions(
        ids,
        mask,
        image_grids,
        video_grids,
        second_per_grid_ts if second_per_grid_ts is None else _numpy(second_per_grid_ts),
        config,
        rule=rule,
        mm_token_type_ids=types,
    )

    # The embedding scatter counts every pad token (HF's masked_scatter ignores the mask).
    per_row = {
        IMAGE: _split_per_row((types == IMAGE).sum(1), image_grids, image_px, unit, "image"),
        VIDEO: _split_per_row((types == VIDEO).sum(1), video_grids, video_px, unit, "video"),
    }
    row_patches = [
        sum(int(np.prod(g)) for kind in (IMAGE, VIDEO) for g, _ in per_row[kind][r])
        for r in range(b)
    ]
    budget = max_patches
    if budget is None:
        budget = -(-max(row_patches, default=0) // unit) * unit
    out_len = length if max_seq_len is None else int(max_seq_len)
    if out_len < length:
        raise ValueError(f"max_seq_len {out_len} is shorter than the input length {length}")
    extra = out_len - length
    left = extra and bool(np.all(mask[:, -1] == 1))
    sl = slice(extra, out_len) if left else slice(0, length)

    input_ids_out = np.full((b, out_len), config.padding_id, np.int32)
    segment_ids = np.zeros((b, out_len), np.int32)
    pos_out = np.zeros((3, b, out_len), np.int32)
    feature_index = np.full((b, out_len), -1, np.int32)
    input_ids_out[:, sl] = ids
    segment_ids[:, sl] = mask
    pos_out[:, :, sl] = positions
    pixels = np.zeros((b, budget, patch_dim), np.float32)
    vision_pos = np.zeros((b, budget, 2), np.int32)
    window_index = np.zeros((b, budget // unit), np.int32)
    window_seg = np.zeros((b, budget), np.int32)
    frame_seg = np.zeros((b, budget), np.int32)
    for r in range(b):
        items = per_row[IMAGE][r] + per_row[VIDEO][r]
        layout = vision_layout([g for g, _ in items], config, budget, row=r)
        if items:
            pixels[r, : layout.num_patches] = np.concatenate([px for _, px in items])
        vision_pos[r] = layout.vision_pos
        window_index[r] = layout.window_index
        window_seg[r] = layout.window_segment_ids
        frame_seg[r] = layout.frame_segment_ids
        # Row pixel order is images then videos; pads of each kind are filled in scan order.
        n_image_units = sum(int(np.prod(g)) for g, _ in per_row[IMAGE][r]) // unit
        row_feat = np.full(length, -1, np.int32)
        for kind, base in ((IMAGE, 0), (VIDEO, n_image_units)):
            where = np.flatnonzero(types[r] == kind)
            row_feat[where] = base + np.arange(len(where))
        feature_index[r, sl] = row_feat

    return ModelInputs(
        input_ids=input_ids_out,
        segment_ids=segment_ids,
        positions=pos_out,
        rope_deltas=deltas.astype(np.int32),
        pixel_values=pixels,
        vision_pos=vision_pos,
        window_index=window_index,
        window_segment_ids=window_seg,
        frame_segment_ids=frame_seg,
        feature_index=feature_index,
    )
