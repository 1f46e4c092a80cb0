"""Record loaders/validators: every malformed field names the record and field; geometry."""

import copy
import json

import numpy as np
import pytest

from o3video_jax.data import records as R

ST_RL = {
    "id": "st1",
    "task": "temporal-spatial free-form QA",
    "source": "STR_coin",
    "question": "What does the man hold?",
    "answer": "a cup",
    "video_path": "a/b.mp4",
    "key_frames": [
        {"time": 1.5, "path": "k/1.jpg", "idx": 0},
        {"time": 9, "path": "k/2.jpg", "idx": 1},
    ],
    "key_items": {
        "0": {"man": [[0.1, 0.2, 0.5, 1.2]]},
        "1": {"cup": [[0.0, 0.0, 0.5, 0.5]]},
        "2": None,
    },
}
VQA_RL = {
    "id": 7,
    "task": "visual QA",
    "source": "gqa",
    "question": "Where is the dog?",
    "answer": "<obj>dog</obj><box>[10, 20, 110, 220]</box>",
    "image_path": "img.jpg",
    "image_size": [200, 400],
}
TQA_RL = {"id": "t", "task": "temporal QA", "source": "timerft", "question": "When?",
          "answer": "[2.5, 4.0]", "video_path": "v.mp4"}  # fmt: skip
TGMCQ_RL = dict(TQA_RL, id="tg", task="temporal QA (MCQ)", source="TVG_x", answer="B\n[1, 3]")
MCQ_RL = dict(TQA_RL, id="m", task="General video QA MCQ", source="videor1_mcq", answer="C")
SFT = dict(VQA_RL, id="s", reasoning_process="look <box>[1,2,3,4]</box>")


def _without(d, key):
    d = copy.deepcopy(d)
    del d[key]
    return d


def _with(d, **kw):
    d = copy.deepcopy(d)
    d.update(kw)
    return d


BAD = [
    # (raw, split, expected id, expected field)
    (_without(ST_RL, "id"), "rl", "#0", "id"),
    (_without(ST_RL, "task"), "rl", "st1", "task"),
    (_with(ST_RL, task="temporal qa"), "rl", "st1", "task"),
    (_with(TGMCQ_RL, reasoning_process="r"), "sft", "tg", "task"),  # no TG-MCQ in SFT
    (_without(ST_RL, "source"), "rl", "st1", "source"),
    (_with(ST_RL, question="  "), "rl", "st1", "question"),
    (_with(ST_RL, answer=3), "rl", "st1", "answer"),
    (_without(SFT, "reasoning_process"), "sft", "s", "reasoning_process"),
    (_without(ST_RL, "video_path"), "rl", "st1", "video_path"),
    (_without(VQA_RL, "image_path"), "rl", "7", "image_path"),
    (_with(VQA_RL, image_size=[200]), "rl", "7", "image_size"),
    (_with(VQA_RL, image_size=[200, -1]), "rl", "7", "image_size"),
    (_with(VQA_RL, answer="<obj>dog</obj>"), "rl", "7", "answer"),
    (_with(VQA_RL, answer="<box>[1, 2, 3]</box>"), "rl", "7", "answer"),
    (_with(ST_RL, key_frames=[]), "rl", "st1", "key_frames"),
    (_with(ST_RL, key_frames=[{"time": 1.0, "path": "p"}]), "rl", "st1", "key_frames"),
    (_with(ST_RL, key_frames=[{"time": -1, "path": "p", "idx": 0}]), "rl", "st1", "key_frames"),
    (_with(ST_RL, key_frames=[{"time": "1", "path": "p", "idx": 0}]), "rl", "st1", "key_frames"),
    (_with(ST_RL, key_items={"0": {"man": [[0.1, 0.2, 0.5]]}, "1": {"c": [[0, 0, 1, 1]]}}), "rl", "st1", "key_items"),
    (_with(ST_RL, key_items={"0": {"man": [[0.5, 0.2, 0.1, 0.9]]}, "1": {"c": [[0, 0, 1, 1]]}}), "rl", "st1", "key_items"),
    (_with(ST_RL, key_items={"0": {"man": [[0.1, 0.2, 0.5, 0.9]]}}), "rl", "st1", "key_items"),  # idx 1 missing
    (_with(ST_RL, key_items=[1, 2]), "rl", "st1", "key_items"),
    (_with(TQA_RL, answer="from 2 to 4"), "rl", "t", "answer"),
    (_with(TQA_RL, answer="[4, 2]"), "rl", "t", "answer"),
    (_with(TQA_RL, answer="[1, 2, 3]"), "rl", "t", "answer"),
    (_with(TGMCQ_RL, answer="B [1, 3]"), "rl", "tg", "answer"),
    (_with(TGMCQ_RL, answer="BB\n[1, 3]"), "rl", "tg", "answer"),
    (_with(MCQ_RL, answer="C and D"), "rl", "m", "answer"),
]  # fmt: skip


@pytest.mark.parametrize("raw,split,rid,field", BAD)
def test_malformed_record_names_id_and_field(raw, split, rid, field):
    with pytest.raises(R.RecordError) as e:
        R.parse_stgr(raw, split, index=0)
    assert (e.value.record_id, e.value.field) == (rid, field)
    assert repr(rid) in str(e.value) and repr(field) in str(e.value)


def test_valid_records_parse_answers():
    st = R.parse_stgr(ST_RL, "rl")
    assert st.key_frames[1] == R.KeyFrame(9, "k/2.jpg", 1) and type(st.key_frames[1].time) is int
    assert set(st.key_items) == {"0", "1"}  # the None entry is dropped, as upstream does
    assert R.parse_stgr(TQA_RL, "rl").answer_segment == (2.5, 4.0)
    tg = R.parse_stgr(TGMCQ_RL, "rl")
    assert (tg.answer_letter, tg.answer_segment) == ("B", (1.0, 3.0))
    assert R.parse_stgr(MCQ_RL, "rl").answer_letter == "C"
    vqa = R.parse_stgr(VQA_RL, "rl")
    assert vqa.id == "7" and vqa.answer_box == (10, 20, 110, 220) and vqa.image_size == (200, 400)
    assert R.parse_stgr(SFT, "sft").reasoning_process.startswith("look")
    assert vqa.to_dict()["image_size"] == [200, 400]


def test_json_array_and_jsonl_load_the_same(tmp_path):
    rows = [ST_RL, VQA_RL, TQA_RL]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    a = R.load_stgr(tmp_path / "a.json", "rl")
    b = R.load_stgr(tmp_path / "b.jsonl", "rl")
    assert a == b and [r.id for r in a] == ["st1", "7", "t"]
    (tmp_path / "c.jsonl").write_text(json.dumps(ST_RL) + "\n{broken\n")
    with pytest.raises(R.RecordError) as e:
        R.load_stgr(tmp_path / "c.jsonl", "rl")
    assert e.value.record_id == "line 2" and e.value.field == "json"


def test_convert_boxes_normalised_and_original_pixels():
    # Normalised at a 56 x 28 (W x H) frame: x * 56, y * 28; y2 = 1.2 * 28 = 33.6 clips to 28.
    px, clipped = R.convert_boxes([[0.1, 0.2, 0.5, 1.2], [0, 0, 1, 1]], (56, 28))
    np.testing.assert_allclose(px, [[5.6, 5.6, 28.0, 28.0], [0, 0, 56, 28]])
    assert clipped.tolist() == [True, False]
    # Original 200 x 400 image resized to 56 x 112: factor 0.28 on both axes.
    px, clipped = R.convert_boxes([10, 20, 110, 420], (56, 112), (200, 400))
    np.testing.assert_allclose(px, [[2.8, 5.6, 30.8, 112.0]])
    assert clipped.tolist() == [True]


def test_ground_truth_flags_clipping_and_times_beyond_video():
    st = R.parse_stgr(ST_RL, "rl")
    gt = R.ground_truth(st, (56, 28), duration=5.0)
    assert gt.flags == {R.BOX_CLIPPED: 1, R.TIME_BEYOND_VIDEO: 1}  # y2=1.2; key frame at 9 s
    np.testing.assert_allclose(gt.key_boxes["0"]["man"], [[5.6, 5.6, 28.0, 28.0]])
    assert R.ground_truth(st, (56, 28), duration=10.0).flags == {R.BOX_CLIPPED: 1}
    tq = R.parse_stgr(TQA_RL, "rl")
    assert R.ground_truth(tq, (28, 28), duration=3.0).flags == {R.TIME_BEYOND_VIDEO: 1}  # end 4.0
    vqa = R.ground_truth(R.parse_stgr(VQA_RL, "rl"), (56, 112))
    np.testing.assert_allclose(vqa.answer_box, [2.8, 5.6, 30.8, 61.6])
    assert vqa.flags == {}


VSTAR = {
    "vid": "abc", "domain": "sports", "fps": 10.0, "frame_count": 50, "width": 100, "height": 50,
    "question": "q", "answer": "a", "temporal_question": "tq", "spatial_question": "sq",
    "spatial_question_2": "sq2", "timestamps": [1, 6],
    "bboxes": [{"timestamp": 1, "xmin": 0, "ymin": 0, "xmax": 50, "ymax": 60},
               {"timestamp": 2, "xmin": 10, "ymin": 10, "xmax": 20, "ymax": 20}],
}  # fmt: skip


def test_vstar_parse_flags_and_errors():
    v = R.parse_vstar(VSTAR, index=3)
    assert v.id == "abc#3" and v.duration == 5.0 and v.timestamps == (1.0, 6.0)
    assert v.flags() == {R.TIME_BEYOND_VIDEO: 1, R.BOX_CLIPPED: 1}  # end 6 s > 5 s; ymax 60 > 50
    px, _ = v.boxes_in_frame((50, 25))
    np.testing.assert_allclose(px[1], [5, 5, 10, 10])
    bad = copy.deepcopy(VSTAR)
    del bad["bboxes"][0]["xmax"]
    with pytest.raises(R.RecordError) as e:
        R.parse_vstar(bad, index=0)
    assert (e.value.record_id, e.value.field) == ("abc#0", "bboxes")
    with pytest.raises(R.RecordError, match="'frame_count'"):
        R.parse_vstar(dict(VSTAR, frame_count=0))


def test_mcq_parse():
    m = R.parse_mcq({"question_id": "q1", "question": "Which?", "answer": "(B)",
                     "options": ["A. red", "B. blue", "C. green"], "duration": "short"})  # fmt: skip
    assert (m.id, m.answer, m.options) == ("q1", "B", ("red", "blue", "green"))
    assert m.options_text() == "A. red\nB. blue\nC. green" and m.extra == {"duration": "short"}
    for raw, field in [
        ({"id": 1, "question": "q", "options": ["x", "y"], "answer": "C"}, "answer"),
        ({"id": 1, "question": "q", "options": ["x"], "answer": "A"}, "options"),
        ({"id": 1, "question": "q", "options": ["B. x", "A. y"], "answer": "A"}, "options"),
        ({"id": 1, "options": ["x", "y"], "answer": "A"}, "question"),
    ]:
        with pytest.raises(R.RecordError) as e:
            R.parse_mcq(raw)
        assert (e.value.record_id, e.value.field) == ("1", field)
