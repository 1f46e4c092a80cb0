"""ModelInputs builders: packing invariance, HF layout parity, validation."""

import numpy as np
import pytest

from o3video_jax.data.model_inputs import Segment, VisionItem, build_model_inputs
from o3video_jax.models.qwen2_5_vl import Qwen25VLConfig, inputs_from_hf
from o3video_jax.models.qwen2_5_vl.positions import rope_positions

CFG = Qwen25VLConfig.preset("tiny")
VS, VE = CFG.vision_start_token_id, CFG.vision_end_token_id
IMG, VID = CFG.image_token_id, CFG.video_token_id


def item(grid, kind="image", sec=None, tag=0.0):
    """A vision item whose pixel rows carry (tag, patch index) so that moves are traceable."""
    n = int(np.prod(grid))
    px = np.zeros((n, 1176), np.float32)
    px[:, 0] = tag
    px[:, 1] = np.arange(n)
    return VisionItem(px, tuple(grid), kind, sec)


def segment(rng, items):
    ids = list(rng.integers(1, 400, 3))
    for it in items:
        pad = IMG if it.kind == "image" else VID
        ids += [VS] + [pad] * (it.num_patches // 4) + [VE] + list(rng.integers(1, 400, 2))
    return Segment(np.array(ids), items)


def test_packed_equals_unpacked():
    rng = np.random.default_rng(0)
    a = segment(rng, [item((1, 4, 6), tag=1), item((2, 8, 8), "video", 0.75, tag=2)])
    b = segment(rng, [item((1, 12, 20), tag=3), item((1, 4, 4), tag=4)])
    na, nb = len(a.input_ids), len(b.input_ids)
    pa = sum(it.num_patches for it in a.vision)
    kw = dict(max_seq_len=na + nb + 5, max_patches=pa + 256 + 16 + 8)
    packed = build_model_inputs([[a, b]], CFG, **kw)
    single = build_model_inputs([[a], [b]], CFG, **kw)

    np.testing.assert_array_equal(packed.input_ids[0, :na], single.input_ids[0, :na])
    np.testing.assert_array_equal(packed.input_ids[0, na : na + nb], single.input_ids[1, :nb])
    assert packed.segment_ids[0].tolist() == [1] * na + [2] * nb + [0] * 5
    np.testing.assert_array_equal(packed.positions[:, 0, :na], single.positions[:, 0, :na])
    np.testing.assert_array_equal(packed.positions[:, 0, na : na + nb], single.positions[:, 1, :nb])
    assert packed.positions[:, 0, na].tolist() == [0, 0, 0]  # the second segment restarts at 0
    assert packed.rope_deltas[0] == single.rope_deltas[1]  # the last segment's delta
    # Feature indices of the second segment are offset by the first one's merged tokens.
    fa, fb = single.feature_index[0, :na], single.feature_index[1, :nb]
    np.testing.assert_array_equal(packed.feature_index[0, :na], fa)
    np.testing.assert_array_equal(
        packed.feature_index[0, na : na + nb], np.where(fb >= 0, fb + pa // 4, -1)
    )
    # Pixels and vision geometry: the second row's items follow the first's.
    pb = single.pixel_values.shape[1] - pa
    np.testing.assert_array_equal(packed.pixel_values[0, :pa], single.pixel_values[0, :pa])
    np.testing.assert_array_equal(packed.pixel_values[0, pa:], single.pixel_values[1, :pb])
    np.testing.assert_array_equal(packed.vision_pos[0, pa:], single.vision_pos[1, :pb])
    ua = pa // 4
    np.testing.assert_array_equal(packed.window_index[0, :ua], single.window_index[0, :ua])
    np.testing.assert_array_equal(
        packed.window_index[0, ua:], single.window_index[1, : pb // 4] + ua
    )
    for name in ("window_segment_ids", "frame_segment_ids"):
        p, s = getattr(packed, name)[0], getattr(single, name)
        np.testing.assert_array_equal(p[:pa], s[0, :pa])
        shifted = np.where(s[1, :pb] > 0, s[1, :pb] + s[0].max(), 0)
        np.testing.assert_array_equal(p[pa:], shifted)


def test_feature_index_points_at_the_right_patches():
    # Video listed before the image but appearing after it in the text.
    video, image = item((2, 4, 4), "video", 1.0, tag=7), item((1, 4, 6), tag=9)
    ids = [1, VS] + [IMG] * 6 + [VE, 2, VS] + [VID] * 8 + [VE]
    x = build_model_inputs(
        [[Segment(np.array(ids), [video, image])]], CFG, max_seq_len=24, max_patches=64
    )
    fi = x.feature_index[0]
    tags = np.where(fi >= 0, x.pixel_values[0, 4 * np.maximum(fi, 0), 0], -1)
    assert tags[: len(ids)].tolist() == [-1, -1] + [9] * 6 + [-1, -1, -1] + [7] * 8 + [-1]
    # The image's merged tokens in order: patch rows 0, 4, 8, ... of the image.
    img_first_patch = x.pixel_values[0, 4 * fi[2:8], 1]
    assert img_first_patch.tolist() == [0, 4, 8, 12, 16, 20]


def test_left_padding_and_text_only():
    seg = Segment(np.array([3, 4, 5]))
    x = build_model_inputs([[seg]], CFG, max_seq_len=6, max_patches=0, pad_side="left")
    assert x.input_ids[0].tolist() == [480, 480, 480, 3, 4, 5]
    assert x.segment_ids[0].tolist() == [0, 0, 0, 1, 1, 1]
    assert x.positions[:, 0].tolist() == [[0, 0, 0, 0, 1, 2]] * 3
    assert x.pixel_values.shape == (1, 0, 1176) and x.window_index.shape == (1, 0)


def test_validation_errors():
    rng = np.random.default_rng(2)
    seg = segment(rng, [item((1, 4, 6))])
    bad = Segment(np.array([1, VS] + [IMG] * 5 + [VE]), [item((1, 4, 6))])
    with pytest.raises(ValueError, match="row 1 segment 0: 5 image pad tokens .* 6 merged"):
        build_model_inputs([[seg], [bad]], CFG, max_seq_len=40, max_patches=24)
    with pytest.raises(ValueError, match="row 0: 13 tokens exceed max_seq_len 10"):
        build_model_inputs([[seg]], CFG, max_seq_len=10, max_patches=24)
    with pytest.raises(ValueError, match="row 0: 24 vision patches exceed max_patches 20"):
        build_model_inputs([[seg]], CFG, max_seq_len=20, max_patches=20)
    odd = Segment(np.array([VS] + [IMG] * 6 + [VE]), [item((1, 3, 8))])
    with pytest.raises(ValueError, match=r"row 0 segment 0: grid \(1, 3, 8\)"):
        build_model_inputs([[odd]], CFG, max_seq_len=20, max_patches=24)
    short = Segment(seg.input_ids, [VisionItem(np.zeros((20, 1176)), (1, 4, 6))])
    with pytest.raises(ValueError, match="pixel_values of shape"):
        build_model_inputs([[short]], CFG, max_seq_len=20, max_patches=24)


def hf_batch(rng):
    """Rows as (segment, items) plus the flat HF processor layout of the same batch."""
    rows = [
        [item((1, 4, 6), tag=1), item((1, 8, 4), tag=2)],
        [item((2, 4, 4), "video", 0.75, tag=3)],
        [item((1, 4, 4), tag=4), item((4, 4, 8), "video", 0.5, tag=5)],
    ]
    segs = [segment(rng, its) for its in rows]
    length = max(len(s.input_ids) for s in segs) + 1
    ids = np.zeros((3, length), np.int64)
    mask = np.zeros((3, length), np.int64)
    for r, s in enumerate(segs):
        ids[r, length - len(s.input_ids) :] = s.input_ids
        mask[r, length - len(s.input_ids) :] = 1
    images = [it for its in rows for it in its if it.kind == "image"]
    videos = [it for its in rows for it in its if it.kind == "video"]
    hf = dict(
        input_ids=ids,
        attention_mask=mask,
        pixel_values=np.concatenate([it.pixel_values for it in images]),
        image_grid_thw=np.array([it.grid_thw for it in images]),
        pixel_values_videos=np.concatenate([it.pixel_values for it in videos]),
        video_grid_thw=np.array([it.grid_thw for it in videos]),
        second_per_grid_ts=np.array([it.second_per_grid for it in videos], np.float32),
    )
    return segs, hf


def test_inputs_from_hf_matches_builder():
    segs, hf = hf_batch(np.random.default_rng(3))
    x = inputs_from_hf(CFG, **hf, max_patches=160)
    ref = build_model_inputs(
        [[s] for s in segs], CFG, max_seq_len=x.seq_len, max_patches=160, pad_side="left", rule="hf"
    )
    for name in (
        "segment_ids",
        "positions",
        "rope_deltas",
        "pixel_values",
        "vision_pos",
        "window_index",
        "window_segment_ids",
        "frame_segment_ids",
        "feature_index",
    ):
        np.testing.assert_array_equal(getattr(x, name), getattr(ref, name), err_msg=name)
    pos, delta = rope_positions(
        hf["input_ids"],
        hf["attention_mask"],
        hf["image_grid_thw"],
        hf["video_grid_thw"],
        hf["second_per_grid_ts"],
        CFG,
        "hf",
    )
    np.testing.assert_array_equal(x.positions, pos)
    # A longer budget pads on the left (rows end in real tokens) and keeps everything else.
    y = inputs_from_hf(CFG, **hf, max_seq_len=x.seq_len + 3, max_patches=160)
    np.testing.assert_array_equal(y.positions[:, :, 3:], x.positions)
    np.testing.assert_array_equal(y.feature_index[:, 3:], x.feature_index)
    assert np.all(y.segment_ids[:, :3] == 0)


def test_inputs_from_hf_scatter_order_matches_transformers():
    torch = pytest.importorskip("torch")
    _, hf = hf_batch(np.random.default_rng(4))
    x = inputs_from_hf(CFG, **{k: torch.tensor(v) for k, v in hf.items()})
    # HF's embedding merge: masked_scatter of the flat merged features, row-major over (B, L).
    ids = torch.tensor(hf["input_ids"])
    expected = torch.full(ids.shape, -1.0)
    for pad, key, offset in ((IMG, "pixel_values", 0.0), (VID, "pixel_values_videos", 1000.0)):
        merged = torch.arange(len(hf[key]) // 4, dtype=torch.float32) + offset
        expected = expected.masked_scatter(ids == pad, merged)
    # Ours: the merged token at feature_index, traced back to its flat HF index via the pixel
    # tags (item tag -> first row of that item in HF's flat pixel arrays).
    fi = x.feature_index
    image_rows = np.cumsum([0] + [int(np.prod(g)) for g in hf["image_grid_thw"]])
    video_rows = np.cumsum([0] + [int(np.prod(g)) for g in hf["video_grid_thw"]])
    starts = {
        1: image_rows[0],
        2: image_rows[1],
        4: image_rows[2],
        3: 1000 * 4 + video_rows[0],
        5: 1000 * 4 + video_rows[1],
    }
    got = np.full(fi.shape, -1.0)
    for r, j in zip(*np.nonzero(fi >= 0), strict=True):
        px = x.pixel_values[r, 4 * fi[r, j]]
        got[r, j] = (starts[int(px[0])] + px[1]) / 4
    np.testing.assert_array_equal(got, expected.numpy())


def test_inputs_from_hf_errors():
    _, hf = hf_batch(np.random.default_rng(5))
    with pytest.raises(ValueError, match="image grids cover"):
        inputs_from_hf(CFG, **{**hf, "pixel_values": hf["pixel_values"][:-4]})
    grids = hf["image_grid_thw"].copy()
    grids[0] = (1, 8, 6)
    px = np.zeros((int(np.prod(grids, axis=1).sum()), 1176), np.float32)
    with pytest.raises(ValueError, match="row 0"):
        inputs_from_hf(CFG, **{**hf, "image_grid_thw": grids, "pixel_values": px})
    with pytest.raises(ValueError, match="max_seq_len"):
        inputs_from_hf(CFG, **hf, max_seq_len=3)
