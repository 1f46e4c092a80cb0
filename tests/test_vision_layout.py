"""Vision geometry: rotary ids, window partition, segment ids, padding, HF parity."""

import numpy as np
import pytest

from o3video_jax.models.qwen2_5_vl import Qwen25VLConfig
from o3video_jax.models.qwen2_5_vl.vision_layout import vision_layout

CFG = Qwen25VLConfig.preset("tiny")  # window 112 px = 4 merged tokens, merge 2


def test_rotary_ids_worked_example():
    pos = vision_layout([(1, 4, 6)], CFG).vision_pos
    # Merge blocks (h_blk, w_blk) in raster order, each block's 2x2 patches in raster order.
    h = [0, 0, 1, 1] * 3 + [2, 2, 3, 3] * 3
    w = [0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5] * 2
    assert pos[:, 0].tolist() == h and pos[:, 1].tolist() == w


def test_rotary_ids_repeat_per_frame():
    pos = vision_layout([(3, 4, 6)], CFG).vision_pos
    np.testing.assert_array_equal(pos.reshape(3, 24, 2), np.broadcast_to(pos[:24], (3, 24, 2)))


def test_window_partition_worked_example():
    layout = vision_layout([(1, 12, 20)], CFG)
    assert layout.cu_window_seqlens.tolist() == [0, 64, 128, 160, 192, 224, 240]
    prefix = [0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23, 30, 31, 32, 33, 4, 5, 6, 7]
    assert layout.window_index[:20].tolist() == prefix
    # Hand-derived edge windows: window (0, 2) is rows 0-3 x cols 8-9; window (1, 2) rows 4-5.
    assert layout.window_index[32:40].tolist() == [8, 9, 18, 19, 28, 29, 38, 39]
    assert layout.window_index[-4:].tolist() == [48, 49, 58, 59]
    assert sorted(layout.window_index.tolist()) == list(range(60))
    counts = np.bincount(layout.window_segment_ids)[1:]
    assert counts.tolist() == [64, 64, 32, 32, 32, 16]
    assert np.all(np.diff(layout.window_segment_ids) >= 0)  # contiguous after permutation
    assert np.all(layout.frame_segment_ids == 1)


def test_segments_across_items_and_frames():
    # An image (1,4,4): 4 units, one window; a video (3,8,8): 3 frames x 16 units, one window each.
    layout = vision_layout([(1, 4, 4), (3, 8, 8)], CFG)
    assert layout.window_index[:4].tolist() == [0, 1, 2, 3]
    assert layout.window_index[4:20].tolist() == list(range(4, 20))  # frame 0 of the video
    frame = np.repeat([1, 2, 3, 4], [16, 64, 64, 64])
    np.testing.assert_array_equal(layout.frame_segment_ids, frame)
    np.testing.assert_array_equal(layout.window_segment_ids, frame)  # one window per frame
    assert layout.cu_window_seqlens.tolist() == [0, 16, 80, 144, 208]


def test_padding_to_budget():
    layout = vision_layout([(1, 4, 6)], CFG, max_patches=40)
    assert layout.num_patches == 24 and layout.vision_pos.shape == (40, 2)
    assert layout.window_index[6:].tolist() == [6, 7, 8, 9]  # padding units map to themselves
    assert np.all(layout.window_segment_ids[24:] == 0) and np.all(
        layout.frame_segment_ids[24:] == 0
    )
    assert np.all(layout.window_segment_ids[:24] > 0) and np.all(layout.vision_pos[24:] == 0)
    empty = vision_layout([], CFG, max_patches=8)
    assert empty.window_index.tolist() == [0, 1] and np.all(empty.frame_segment_ids == 0)


def test_errors_name_the_culprit():
    with pytest.raises(ValueError, match=r"row 3: grid \(1, 5, 6\).*divisible"):
        vision_layout([(1, 5, 6)], CFG, row=3)
    with pytest.raises(ValueError, match="row 1: 48 vision patches .* exceed max_patches 40"):
        vision_layout([(1, 4, 6), (1, 4, 6)], CFG, max_patches=40, row=1)
    with pytest.raises(ValueError, match="multiple of 4"):
        vision_layout([(1, 4, 6)], CFG, max_patches=30)


def test_parity_with_transformers_vision_utils():
    torch = pytest.importorskip("torch")
    vision_utils = pytest.importorskip("transformers.vision_utils")
    grids = [(1, 12, 20), (2, 4, 8), (3, 8, 8), (1, 18, 2), (2, 16, 10)]
    layout = vision_layout(grids, CFG, max_patches=1600)
    g = torch.tensor(grids)
    index, cu = vision_utils.get_vision_window_index(g, 2, 112, 14)
    pos = vision_utils.get_vision_position_ids(g, 2)
    n = layout.num_patches
    np.testing.assert_array_equal(layout.window_index[: n // 4], index.numpy())
    np.testing.assert_array_equal(layout.cu_window_seqlens, cu.numpy())
    np.testing.assert_array_equal(layout.vision_pos[:n], pos.numpy())
    # Window segments after permutation reproduce cu_window_seqlens; frames reproduce cu_seqlens.
    cu_seqlens = vision_utils.get_vision_cu_seqlens(g).numpy()
    for seg, ref in ((layout.window_segment_ids, cu), (layout.frame_segment_ids, cu_seqlens)):
        bounds = np.concatenate([[0], np.cumsum(np.bincount(seg[:n])[1:])])
        np.testing.assert_array_equal(bounds, np.asarray(ref))
