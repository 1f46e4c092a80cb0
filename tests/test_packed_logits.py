"""Packed rows give the same logits as the same examples in separate rows (issue 3)."""

import jax
import numpy as np

from o3video_jax.data.model_inputs import Segment, VisionItem, build_model_inputs
from o3video_jax.models.qwen2_5_vl import Qwen25VL, Qwen25VLConfig

CFG = Qwen25VLConfig.preset("tiny", dtype="float32")
VS, VE = CFG.vision_start_token_id, CFG.vision_end_token_id
IMG, VID = CFG.image_token_id, CFG.video_token_id


def _segment(rng, grids):
    ids, items = list(rng.integers(1, 400, 3)), []
    for grid, kind in grids:
        n = int(np.prod(grid))
        items.append(
            VisionItem(
                rng.normal(size=(n, 1176)).astype(np.float32),
                grid,
                kind,
                0.75 if kind == "video" else None,
            )
        )
        pad = IMG if kind == "image" else VID
        ids += [VS] + [pad] * (n // 4) + [VE] + list(rng.integers(1, 400, 4))
    return Segment(np.array(ids), items)


def test_packed_logits_equal_unpacked():
    rng = np.random.default_rng(0)
    a = _segment(rng, [((1, 4, 6), "image"), ((2, 4, 4), "video")])
    b = _segment(rng, [((1, 8, 4), "image")])
    na, nb = len(a.input_ids), len(b.input_ids)
    kw = dict(max_seq_len=na + nb + 3, max_patches=160)
    packed = build_model_inputs([[a, b]], CFG, **kw)
    single = build_model_inputs([[a], [b]], CFG, **kw)

    model = Qwen25VL(CFG)
    params = model.init(jax.random.key(0), single)["params"]
    lp = np.asarray(model.apply({"params": params}, packed))
    ls = np.asarray(model.apply({"params": params}, single))
    # Vision attention never crosses items, text attention never crosses segments.
    np.testing.assert_allclose(lp[0, :na], ls[0, :na], atol=2e-5)
    np.testing.assert_allclose(lp[0, na : na + nb], ls[1, :nb], atol=2e-5)
    # The check can fail: the same tokens without segment separation differ.
    merged = packed.replace(segment_ids=np.where(packed.segment_ids > 0, 1, 0).astype(np.int32))
    lm = np.asarray(model.apply({"params": params}, merged))
    assert np.abs(lm[0, na : na + nb] - ls[1, :nb]).max() > 1e-3
