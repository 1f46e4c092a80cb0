"""grain pipelines: skips/flags on bad media, error budget, exact resume, shards, batch layout."""

import json
import os

import cv2
import numpy as np
import pytest

from o3video_jax.data import examples as ex
from o3video_jax.data import pipeline as pl
from o3video_jax.data import prompts
from o3video_jax.data.tokenizer import make_tiny_tokenizer
from o3video_jax.models.qwen2_5_vl.config import Qwen25VLConfig

CFG = Qwen25VLConfig.preset("tiny")
L, P = 768, 512


def _write_video(path, n=30, fps=10, w=64, h=48):
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for i in range(n):
        frame = np.zeros((h, w, 3), np.uint8)
        cv2.rectangle(frame, (i, 5), (i + 20, 30), (40 * (i % 6), 200, 90), -1)
        vw.write(frame)
    vw.release()


def _st(i, video="good.mp4", kf_time=1.0, box=(0.1, 0.2, 0.5, 0.9)):
    return {
        "id": f"st{i}", "task": "temporal-spatial free-form QA", "source": "STR_coin",
        "question": f"What happens {i}?", "answer": "a man walks",
        "reasoning_process": f"<obj>man</obj><box>{list(box)}</box>at<t>{kf_time}</t>s",
        "video_path": video, "key_frames": [{"time": kf_time, "path": "kf.jpg", "idx": 0}],
        "key_items": {"0": {"man": [list(box)]}},
    }  # fmt: skip


def _vqa(i):
    return {
        "id": f"vq{i}", "task": "visual QA", "source": "treevgr", "question": f"Where {i}?",
        "answer": "<obj>dog</obj><box>[1, 2, 30, 40]</box>", "image_path": "img.jpg",
        "image_size": [80, 60], "reasoning_process": "the dog <box>[1,2,30,40]</box>",
    }  # fmt: skip


def _tqa(i, video="good.mp4"):
    return {
        "id": f"tq{i}", "task": "temporal QA", "source": "TVG_x", "question": f"When {i}?",
        "answer": "From <t>1.0</t>s to <t>2.0</t>s", "reasoning_process": "at <t>1.5</t>s",
        "video_path": video,
    }  # fmt: skip


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    _write_video(root / "good.mp4")
    data = (root / "good.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "random.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "empty.mp4").write_bytes(b"")
    cv2.imwrite(str(root / "kf.jpg"), np.full((48, 64, 3), 128, np.uint8))
    cv2.imwrite(str(root / "img.jpg"), np.full((60, 80, 3), 60, np.uint8))
    tok = make_tiny_tokenizer(root / "tok", [prompts.R1_PREAMBLE, "Frame 1 at 0.5s: What?"])
    return root, tok


def _builder(env, kind="sft", **kw):
    root, tok = env
    cfg = ex.ExampleConfig(
        kind=kind, media_root=str(root), frame_min_pixels=28 * 28, frame_max_pixels=56 * 56,
        image_max_pixels=56 * 56, max_frames=4, max_seq_len=L, max_patches=P, **kw,
    )  # fmt: skip
    return ex.ExampleBuilder(cfg, tok)


def _pcfg(**kw):
    base = dict(batch_size=2, max_seq_len=L, max_patches=P, shard_index=0, shard_count=1)
    return pl.PipelineConfig(**{**base, **kw})


GOOD = [_st(i) for i in range(4)] + [_vqa(i) for i in range(4)] + [_tqa(i) for i in range(4)]
FLAGGED = [_st(10, box=(0.1, 0.2, 0.5, 1.3)), _st(11, kf_time=9.0)]  # box past frame; 9 s > 3 s
BROKEN = [_tqa(20, "truncated.mp4"), _tqa(21, "random.mp4"), _tqa(22, "empty.mp4"),
          _tqa(23, "missing.mp4"), dict(_vqa(24), image_size=[80])]  # fmt: skip


RL_DATA = GOOD[:8] + [dict(_tqa(i), answer="[1.0, 2.0]") for i in range(4)] + FLAGGED


def _ids(batches):
    return sorted(i for b in batches for row in b.record_ids for i in row)


def test_bad_examples_skipped_counted_and_flagged(env):
    ds = pl.sft_dataset(GOOD + FLAGGED + BROKEN, _builder(env), CFG, _pcfg(max_error_fraction=1))
    it = iter(ds)
    batches = list(it)
    assert _ids(batches) == sorted(r["id"] for r in GOOD + FLAGGED)
    s = it.stats
    assert s.seen == 19 and dict(s.skipped) == {"decode": 4, "record": 1}
    assert {o[0] for o in s.offenders} == {"tq20", "tq21", "tq22", "tq23", "vq24"}
    # st10: the reasoning box and the key_items box clip (y2 = 1.3); st11: key frame at 9 s is
    # beyond the 3 s video and beyond the last sampled frame (dropped from the prompt).
    assert s.flags == {"box_clipped": 2, "time_beyond_video": 1, "key_frame_dropped": 1}
    tok_eff, patch_eff = s.efficiency(L, P)
    assert 0.3 < tok_eff <= 1 and 0 < patch_eff <= 1


def test_error_fraction_stop_names_offenders(env):
    data = GOOD[:4] + BROKEN[:3] + GOOD[4:]
    ds = pl.sft_dataset(
        data, _builder(env), CFG, _pcfg(shuffle=False, max_error_fraction=0.2, min_examples=7)
    )
    with pytest.raises(pl.DataErrorBudget) as e:
        list(ds)
    msg = str(e.value)
    assert "3 of 7 examples" in msg and "decode: 3" in msg
    assert all(i in msg for i in ("tq20", "tq21", "tq22"))


def _assert_batches_equal(a, b):
    assert a.record_ids == b.record_ids
    for f in ("input_ids", "segment_ids", "positions", "pixel_values", "feature_index"):
        np.testing.assert_array_equal(getattr(a.inputs, f), getattr(b.inputs, f))
    np.testing.assert_array_equal(a.targets, b.targets)
    np.testing.assert_array_equal(a.loss_mask, b.loss_mask)


def test_state_restore_reproduces_following_batches(env):
    data = GOOD + FLAGGED + BROKEN[:2]
    cfg = _pcfg(num_epochs=2, pack_window=5, seed=3, max_error_fraction=1)
    ds = pl.sft_dataset(data, _builder(env), CFG, cfg)
    it = iter(ds)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # orbax stores it as JSON
    assert state["pos"] > 0  # mid-window: the restore must re-pack and skip emitted rows
    expected = [next(it) for _ in range(4)]
    expected_stats = it.stats.to_state()
    again = iter(ds)
    again.set_state(state)
    got = [next(again) for _ in range(4)]
    for a, b in zip(expected, got, strict=True):
        _assert_batches_equal(a, b)
    assert again.stats.to_state() == expected_stats
    # A differently seeded run differs (the check above can fail).
    other = iter(
        pl.sft_dataset(data, _builder(env), CFG, _pcfg(num_epochs=2, pack_window=5, seed=4))
    )
    assert [next(other).record_ids for _ in range(3)] != [b.record_ids for b in expected[:3]]


def test_two_process_shards_disjoint_and_covering(env):
    data = RL_DATA
    seen = []
    for index in range(2):
        cfg = _pcfg(shard_index=index, shard_count=2, batch_size=3, seed=1)
        ids = [i for b in pl.rl_dataset(data, _builder(env, "rl"), CFG, cfg) for i in b.record_ids]
        seen.append({i for i in ids if i is not None})
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == {r["id"] for r in data}
    assert abs(len(seen[0]) - len(seen[1])) <= 1


def test_rl_batch_layout(env):
    data = GOOD[:3]
    cfg = _pcfg(batch_size=2, group_size=4, shuffle=False)
    batches = list(pl.rl_dataset(data, _builder(env, "rl"), CFG, cfg))
    assert len(batches) == 2
    b = batches[1]  # partial: one prompt and a padding row
    assert b.valid.tolist() == [True, False] and b.record_ids == ("st2", None)
    assert b.group_size == 4 and b.group_index.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    b0 = batches[0]
    for r in range(2):
        n = int(b0.prompt_lengths[r])
        seg = b0.inputs.segment_ids[r]
        assert (seg[L - n :] == 1).all() and (seg[: L - n] == 0).all()  # left padded
        # Every prompt ends with the generation prompt "<|im_start|>assistant\n".
        tail = env[1].decode(b0.inputs.input_ids[r, L - 20 :])
        assert tail.endswith(f"What happens {r}?<|im_end|>\n<|im_start|>assistant\n")
    rec = b0.records[0]
    assert rec["frame_size"] == [56, 56] and rec["key_items"]["0"]["man"] == [[0.1, 0.2, 0.5, 0.9]]


@pytest.mark.parametrize("loss_mask", ["assistant", "original"])
def test_sft_targets_and_loss_mask(env, loss_mask):
    _, tok = env
    cfg = _pcfg(batch_size=4, shuffle=False)
    batches = list(pl.sft_dataset(GOOD, _builder(env, loss_mask=loss_mask), CFG, cfg))
    b = batches[0]
    ids, tg, m = b.inputs.input_ids, b.targets, b.loss_mask
    real = b.inputs.segment_ids > 0
    # Within a segment targets are the next input token; no loss on padding.
    same = real[:, :-1] & (b.inputs.segment_ids[:, 1:] == b.inputs.segment_ids[:, :-1])
    np.testing.assert_array_equal(tg[:, :-1][same], ids[:, 1:][same])
    assert m[~real].sum() == 0
    texts = tok.decode(tg[0][m[0] > 0])
    if loss_mask == "assistant":
        n_seg = len(b.record_ids[0])
        assert texts.count("<think>") == n_seg and texts.count("<|im_end|>") == n_seg
        assert "<|im_start|>" not in texts and "system" not in texts
    else:
        assert "<|im_start|>" in texts and (tg[m > 0] == CFG.image_token_id).sum() == 0
        assert "You are" not in texts and prompts.R1_PREAMBLE[:20] in texts


def test_worker_processes_match_in_process(env):
    data = GOOD[:6]
    base = _pcfg(batch_size=2, seed=5)
    want = list(pl.sft_dataset(data, _builder(env), CFG, base))
    got = list(pl.sft_dataset(data, _builder(env), CFG, _pcfg(batch_size=2, seed=5, num_workers=2)))
    assert len(want) == len(got)
    for a, b in zip(want, got, strict=True):
        _assert_batches_equal(a, b)
    assert os.path.exists(env[0] / "good.mp4")


def test_eval_mcq_native_video(env):
    data = [{"id": f"m{i}", "question": "Which colour?", "options": ["red", "green"],
             "answer": "B", "video_path": "good.mp4"} for i in range(2)]  # fmt: skip
    builder = _builder(env, "mcq", video_mode="video")
    (b,) = list(pl.eval_dataset(data, builder, CFG, _pcfg(shuffle=False)))
    assert b.record_ids == ("m0", "m1") and b.records[0]["answer"] == "B"
    ids = b.inputs.input_ids[0]
    # 4 frames of 56 x 56 -> grid (2, 4, 4) -> 8 video pad tokens, no image pads.
    assert (ids == CFG.video_token_id).sum() == 8 and (ids == CFG.image_token_id).sum() == 0
    text = env[1].decode(ids[b.inputs.segment_ids[0] > 0])
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.")
    assert "<|vision_end|>Select the best answer" in text and "A. red\nB. green" in text
    # second_per_grid = 2 / sample_fps = 2 / (4 / 3 s) = 1.5 s: temporal positions of the two
    # grid steps differ by trunc(1.5 * tokens_per_second 2) = 3.
    t = b.inputs.positions[0, 0][ids == CFG.video_token_id]
    assert t[4] - t[0] == 3


def test_over_budget_examples_are_skipped(env):
    # Rows of 300 tokens: the video examples (~390 tokens) do not fit, the image ones do.
    data = GOOD[:2] + GOOD[4:6]
    ds = pl.sft_dataset(data, _builder(env), CFG, _pcfg(max_seq_len=300, max_error_fraction=1))
    it = iter(ds)
    assert _ids(list(it)) == ["vq0", "vq1"]
    assert dict(it.stats.skipped) == {"over_budget": 2}


def test_prompt_split_and_system_prompt_options(env):
    """SFT records under the RL template keep their SFT target; a custom system prompt replaces
    the per-task Open-o3 prompts (and only them)."""
    _, tok = env
    rec = _tqa(0)
    text = lambda b: tok.decode(b(rec).segment.input_ids)  # noqa: E731
    sft, as_rl = text(_builder(env)), text(_builder(env, prompt_split="rl"))
    rl_system = prompts.system_prompt(rec["task"], "rl")
    assert prompts.system_prompt(rec["task"], "sft") in sft and rl_system not in sft
    assert rl_system in as_rl and "Question: " not in as_rl  # RL user text has no prefix
    target = "<think>at <t>1.5</t>s</think>"
    assert target in sft and target in as_rl
    short = text(_builder(env, prompt_split="rl", system_prompt="Be brief."))
    assert short.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert short.split("<|im_end|>", 1)[1] == as_rl.split("<|im_end|>", 1)[1]
    with pytest.raises(ValueError, match="prompt_split"):
        _builder(env, prompt_split="test")
