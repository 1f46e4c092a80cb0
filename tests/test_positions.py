"""M-RoPE positions: reference worked examples, both rules, padding, HF 5.24 parity."""

import numpy as np
import pytest

from o3video_jax.models.qwen2_5_vl import Qwen25VLConfig
from o3video_jax.models.qwen2_5_vl.positions import IMAGE, rope_positions, segment_positions

CFG = Qwen25VLConfig.preset("tiny")
VS, VE = CFG.vision_start_token_id, CFG.vision_end_token_id
IMG, VID = CFG.image_token_id, CFG.video_token_id


@pytest.mark.parametrize("rule", ["qwen", "hf"])
def test_image_worked_example(rule):
    ids = np.array([[5, VS] + [IMG] * 6 + [VE, 10]])
    pos, delta = rope_positions(ids, None, [[1, 4, 6]], None, None, CFG, rule)
    assert pos[0, 0].tolist() == [0, 1, 2, 2, 2, 2, 2, 2, 5, 6]
    assert pos[1, 0].tolist() == [0, 1, 2, 2, 2, 3, 3, 3, 5, 6]
    assert pos[2, 0].tolist() == [0, 1, 2, 3, 4, 2, 3, 4, 5, 6]
    assert delta.tolist() == [-3]


@pytest.mark.parametrize("rule, after", [("hf", 6), ("qwen", 11)])
def test_video_worked_example(rule, after):
    ids = np.array([[5, VS] + [VID] * 48 + [VE, 10]])  # video starts at cur = 2
    pos, delta = rope_positions(ids, None, None, [[3, 8, 8]], [2.0], CFG, rule)
    vid = pos[:, 0, 2:50].reshape(3, 3, 4, 4)
    assert vid[0, :, 0, 0].tolist() == [2, 6, 10]  # tps 2 * 2.0 s = step 4
    assert np.all(vid[0] == np.array([2, 6, 10])[:, None, None])
    assert vid[1, 0, :, 0].tolist() == [2, 3, 4, 5] and vid[2, 0, 0].tolist() == [2, 3, 4, 5]
    assert pos[:, 0, 50].tolist() == [after] * 3  # <|vision_end|>
    assert pos[:, 0, 51].tolist() == [after + 1] * 3
    # delta = max(all positions) + 1 - 52 tokens; in HF the video's t = 10 stays the maximum.
    assert delta.tolist() == [max(10, after + 1) + 1 - 52]


@pytest.mark.parametrize("rule", ["qwen", "hf"])
def test_fractional_second_per_grid(rule):
    ids = np.array([[VS] + [VID] * 48 + [VE]])
    pos, _ = rope_positions(ids, None, None, [[3, 8, 8]], [0.75], CFG, rule)
    assert sorted(set(pos[0, 0, 1:49].tolist())) == [1, 2, 4]  # cur 1 + tpos 0, 1, 3


def test_video_without_second_per_grid_uses_one_second():
    ids = np.array([[VS] + [VID] * 32 + [VE]])
    pos, _ = rope_positions(ids, None, None, [[2, 8, 8]], None, CFG, "hf")
    assert sorted(set(pos[0, 0, 1:33].tolist())) == [1, 3]  # step = tps = 2


def test_images_have_no_temporal_step_in_qwen_rule():
    # An image grid with t = 2 (two identical frames): HF steps t by 1, Qwen keeps t fixed.
    ids = np.array([[VS] + [IMG] * 8 + [VE]])
    hf, _ = rope_positions(ids, None, [[2, 4, 4]], None, None, CFG, "hf")
    qw, _ = rope_positions(ids, None, [[2, 4, 4]], None, None, CFG, "qwen")
    assert hf[0, 0, 1:9].tolist() == [1] * 4 + [2] * 4
    assert qw[0, 0, 1:9].tolist() == [1] * 8


@pytest.mark.parametrize("rule", ["qwen", "hf"])
def test_padding_left_and_right(rule):
    row = [7, VS] + [IMG] * 6 + [VE, 8, 9]
    ref, ref_delta = rope_positions(np.array([row]), None, [[1, 4, 6]], None, None, CFG, rule)
    n = len(row)
    left = np.array([[0, 0, 0] + row, row + [0, 0, 0]])
    mask = np.array([[0, 0, 0] + [1] * n, [1] * n + [0, 0, 0]])
    pos, delta = rope_positions(left, mask, [[1, 4, 6]] * 2, None, None, CFG, rule)
    np.testing.assert_array_equal(pos[:, 0, 3:], ref[:, 0])
    np.testing.assert_array_equal(pos[:, 1, :n], ref[:, 0])
    assert np.all(pos[:, 0, :3] == 0) and np.all(pos[:, 1, n:] == 0)
    assert delta.tolist() == [ref_delta[0]] * 2


def test_segment_positions_start_at_zero_and_text_is_1d():
    types = np.array([0, 0, IMAGE, IMAGE, 0])
    pos, delta = segment_positions(types, [(1, 2, 4)], [IMAGE], [None], CFG, "qwen")
    assert pos.tolist() == [[0, 1, 2, 2, 4], [0, 1, 2, 2, 4], [0, 1, 2, 3, 4]]
    assert delta == 0
    text, d = segment_positions(np.zeros(4, int), [], [], [], CFG, "hf")
    assert text.tolist() == [[0, 1, 2, 3]] * 3 and d == 0


def test_mismatched_counts_raise():
    ids = np.array([[VS] + [IMG] * 5 + [VE]])
    with pytest.raises(ValueError, match="needs 6 pad tokens"):
        rope_positions(ids, None, [[1, 4, 6]], None, None, CFG)
    ids = np.array([[VS] + [IMG] * 6 + [VE]])
    with pytest.raises(ValueError, match="2 image grids given"):
        rope_positions(ids, None, [[1, 4, 6], [1, 4, 6]], None, None, CFG)
    with pytest.raises(ValueError, match="no image grid remains"):
        rope_positions(ids, None, None, None, None, CFG)
    with pytest.raises(ValueError, match="rule"):
        rope_positions(ids, None, [[1, 4, 6]], None, None, CFG, rule="vllm")


def random_hf_batch(rng, n_rows=3, pad_id=0, video_prob=0.4):
    """A left-padded batch as an HF processor lays it out, with images and videos."""
    rows, image_grids, video_grids, secs = [], [], [], []
    for _ in range(n_rows):
        toks = list(rng.integers(1, 400, rng.integers(1, 5)))
        for _ in range(rng.integers(1, 4)):
            if rng.random() >= video_prob:
                g = [1, 2 * int(rng.integers(1, 7)), 2 * int(rng.integers(1, 7))]
                image_grids.append(g)
                pad = IMG
            else:
                g = [
                    int(rng.integers(1, 5)),
                    2 * int(rng.integers(1, 5)),
                    2 * int(rng.integers(1, 5)),
                ]
                video_grids.append(g)
                secs.append(float(rng.choice([0.5, 0.75, 1.0, 2.0, 1 / 3])))
                pad = VID
            toks += [VS] + [pad] * (int(np.prod(g)) // 4) + [VE]
            toks += list(rng.integers(1, 400, rng.integers(0, 4)))
        rows.append(toks)
    length = max(map(len, rows)) + 2
    ids = np.full((n_rows, length), pad_id)
    mask = np.zeros((n_rows, length), int)
    for r, toks in enumerate(rows):
        ids[r, length - len(toks) :] = toks
        mask[r, length - len(toks) :] = 1
    return ids, mask, image_grids, video_grids, secs


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_parity_with_transformers_get_rope_index(seed):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.Qwen2_5_VLConfig(**CFG.to_hf_dict())
    torch.manual_seed(0)
    model = _hf_model(transformers, hf_config)
    ids, mask, image_grids, video_grids, secs = random_hf_batch(np.random.default_rng(seed))
    types = np.where(ids == IMG, 1, np.where(ids == VID, 2, 0))
    t = lambda x, dt=torch.long: None if not len(x) else torch.tensor(np.asarray(x), dtype=dt)
    hf_pos, hf_delta = model.get_rope_index(
        torch.tensor(ids),
        mm_token_type_ids=torch.tensor(types),
        image_grid_thw=t(image_grids),
        video_grid_thw=t(video_grids),
        second_per_grid_ts=t(secs, torch.float32),
        attention_mask=torch.tensor(mask),
    )
    pos, delta = rope_positions(
        ids,
        mask,
        image_grids or None,
        video_grids or None,
        secs or None,
        CFG,
        rule="hf",
    )
    np.testing.assert_array_equal(pos, hf_pos.numpy())
    np.testing.assert_array_equal(delta, hf_delta.numpy()[:, 0])


_MODEL = {}


def _hf_model(transformers, hf_config):
    if "m" not in _MODEL:
        _MODEL["m"] = transformers.Qwen2_5_VLModel(hf_config).eval()
    return _MODEL["m"]


@pytest.mark.parametrize("seed", [0, 1])
def test_rules_agree_on_images_only(seed):
    ids, mask, image_grids, _, _ = random_hf_batch(np.random.default_rng(seed), video_prob=0.0)
    hf, hd = rope_positions(ids, mask, image_grids, None, None, CFG, "hf")
    qw, qd = rope_positions(ids, mask, image_grids, None, None, CFG, "qwen")
    np.testing.assert_array_equal(hf, qw)
    np.testing.assert_array_equal(hd, qd)
