"""Static-shape model inputs: the contract between the host-side data code and the model.

Everything that depends on the geometry of the data (patch order, vision rotary ids, window
permutation, attention segments, M-RoPE positions, the vision-feature scatter map) is computed
on the host in numpy (docs/design.md decision 2) and padded to budgets that are fixed for a whole run:

  B rows, L = max_seq_len text positions, P = max_patches vision patches per row (a multiple
  of 4, the spatial merge unit), P/4 merged vision tokens per row.

The vision tower runs per row (batched over B) so that it shards over the data axes; the
features of row b are written into the text of row b only.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

PATCH_DIM = 3 * 2 * 14 * 14  # (C, T, Ph, Pw) rows of pixel_values


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ModelInputs:
    """Fixed-size inputs of `Qwen25VL`. All arrays are numpy on the host, jax under jit.

    Text:
      input_ids:    int32[B, L]    token ids; padding positions hold the pad id (any id works).
      segment_ids:  int32[B, L]    0 = padding; 1, 2, ... = example within the row. Attention
                                   is causal and restricted to equal non-zero segment ids, which
                                   covers left padding, right padding and packed rows.
      positions:    int32[3, B, L] M-RoPE (t, h, w) positions, per segment, by the original
                                   Qwen rule (docs/design.md decision 5); 0 at padding.
      rope_deltas:  int32[B]       max(position) + 1 - (number of real tokens) of the row's
                                   last segment; the decode position of the n-th generated
                                   token is prompt_len + n + delta ("last + 1" rule).
    Vision (per row; P may be 0 for text-only runs):
      pixel_values:       float32[B, P, 1176]  patches in processor order (t, h_blk, w_blk,
                                               dh, dw), zero rows as padding.
      vision_pos:         int32[B, P, 2]       (h, w) rotary ids per patch, processor order.
      window_index:       int32[B, P // 4]     permutation of merge units into window order
                                               (HF `window_index`); padding units map to
                                               themselves and sit at the end.
      window_segment_ids: int32[B, P]          after the window permutation: window id per
                                               patch (1, 2, ...), 0 = padding.
      frame_segment_ids:  int32[B, P]          after the window permutation: (image, frame)
                                               id per patch for the full-attention blocks,
                                               0 = padding.
      feature_index:      int32[B, L]          for each text position, the index of the
                                               merged vision token (processor order, in
                                               [0, P // 4)) written there, or -1 for text.
    """

    input_ids: np.ndarray
    segment_ids: np.ndarray
    positions: np.ndarray
    rope_deltas: np.ndarray
    pixel_values: np.ndarray
    vision_pos: np.ndarray
    window_index: np.ndarray
    window_segment_ids: np.ndarray
    frame_segment_ids: np.ndarray
    feature_index: np.ndarray

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    @property
    def max_patches(self) -> int:
        return self.pixel_values.shape[1]

    def replace(self, **kwargs) -> ModelInputs:
        return dataclasses.replace(self, **kwargs)


def text_only_inputs(input_ids: np.ndarray, segment_ids: np.ndarray | None = None) -> ModelInputs:
    """ModelInputs for text without vision: 1D positions per segment, no patches.

    input_ids: int[B, L]; segment_ids: int[B, L] (default: all ones).
    """
    input_ids = np.asarray(input_ids, np.int32)
    b, length = input_ids.shape
    if segment_ids is None:
        segment_ids = np.ones((b, length), np.int32)
    segment_ids = np.asarray(segment_ids, np.int32)
    pos = np.zeros((b, length), np.int32)
    deltas = np.zeros((b,), np.int32)
    for r in range(b):
        for s in np.unique(segment_ids[r]):
            if s == 0:
                continue
            idx = np.nonzero(segment_ids[r] == s)[0]
            pos[r, idx] = np.arange(len(idx), dtype=np.int32)
    return ModelInputs(
        input_ids=input_ids,
        segment_ids=segment_ids,
        positions=np.broadcast_to(pos, (3, b, length)).copy(),
        rope_deltas=deltas,
        pixel_values=np.zeros((b, 0, PATCH_DIM), np.float32),
        vision_pos=np.zeros((b, 0, 2), np.int32),
        window_index=np.zeros((b, 0), np.int32),
        window_segment_ids=np.zeros((b, 0), np.int32),
        frame_segment_ids=np.zeros((b, 0), np.int32),
        feature_index=np.full((b, length), -1, np.int32),
    )


def init_inputs(config) -> ModelInputs:
    """Smallest inputs that touch every parameter (4 tokens, one 2x2 merge unit): for `init`
    and `jax.eval_shape` of the parameters. `config`: a `Qwen25VLConfig`."""
    b, length, p = 1, 4, config.vision.merge_unit
    feature_index = np.full((b, length), -1, np.int32)
    feature_index[0, 1] = 0
    return ModelInputs(
        input_ids=np.zeros((b, length), np.int32),
        segment_ids=np.ones((b, length), np.int32),
        positions=np.zeros((3, b, length), np.int32),
        rope_deltas=np.zeros((b,), np.int32),
        pixel_values=np.zeros((b, p, config.vision.patch_dim), np.float32),
        vision_pos=np.zeros((b, p, 2), np.int32),
        window_index=np.zeros((b, p // config.vision.merge_unit), np.int32),
        window_segment_ids=np.ones((b, p), np.int32),
        frame_segment_ids=np.ones((b, p), np.int32),
        feature_index=feature_index,
    )
