"""V-STaR metrics, parsers and result files: paper aggregates and hand-derived item values."""

import json
import math

import numpy as np
import pytest

from o3video_jax.eval import results, vstar


# ------------------------------------------------------------------ paper aggregates (Table 1)
@pytest.mark.parametrize(
    "dims, expected",
    [
        # Open-o3 Video: AM1 = (61.0+24.5+25.4)/3 = 36.967, AM2 = (61.0+24.0+6.0)/3 = 30.333,
        # mAM = 33.65; LGM1 = -(ln .39 + ln .755 + ln .746)/3 = .5052, LGM2 = .4260, mLGM 46.56.
        ((61.0, 24.5, 24.0, 25.4, 6.0), (33.65, 46.56)),
        ((33.5, 15.4, 13.8, 17.0, 2.5), (19.28, 22.39)),  # Qwen2.5-VL-7B
        ((60.8, 16.7, 12.8, 6.5, 3.0), (26.77, 38.17)),  # GPT-4o
    ],
)
def test_aggregate_from_dims_reproduces_paper(dims, expected):
    out = vstar.aggregate_from_dims(*(d / 100 for d in dims))
    assert round(100 * out["mAM"], 2) == expected[0]
    assert round(100 * out["mLGM"], 2) == expected[1]
    assert list(out) == ["AM1", "AM2", "mAM", "LGM1", "LGM2", "mLGM"]


def test_aggregate_from_dims_open_o3_chain_values():
    out = vstar.aggregate_from_dims(0.61, 0.245, 0.24, 0.254, 0.06)
    assert out["AM1"] == pytest.approx((0.61 + 0.245 + 0.254) / 3)
    assert out["LGM1"] == pytest.approx(-(math.log(0.39) + math.log(0.755) + math.log(0.746)) / 3)
    assert out["LGM2"] == pytest.approx(-(math.log(0.39) + math.log(0.76) + math.log(0.94)) / 3)


def test_lgm_perfect_dimension_is_clipped_not_infinite():
    out = vstar.aggregate_from_dims(1.0, 0.0, 0.0, 0.0, 0.0)
    # -ln(1 - 1) is clipped to -ln(LGM_EPS); the other terms are -ln(1) = 0.
    assert out["LGM1"] == pytest.approx(-math.log(vstar.LGM_EPS) / 3)
    assert math.isfinite(out["mLGM"])


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_aggregate_from_dims_rejects_non_fractions(bad):
    with pytest.raises(ValueError, match="viou_2"):
        vstar.aggregate_from_dims(0.5, 0.2, 0.2, 0.1, bad)


# ------------------------------------------------------------------------------ parsers
@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>at 1 2 3</think><answer>From 1:05 to 1:30</answer>", [65.0, 90.0]),
        ("From <t>2.5</t>s to <t>7.0</t>s", [2.5, 7.0]),
        ("between 1, 2 and 3 seconds", []),  # three numbers
        ("<think>frame 3 at 4s</think> From 5 to 9", []),  # no <answer>: think numbers leak in
        ("From 2.5s to 7.5s", [2.0, 7.0]),  # faithful: `\b` splits "2.5s" after "2"
        ("no numbers here", []),
        (None, []),
    ],
)
def test_parse_temporal_answer(text, expected):
    assert vstar.parse_temporal_answer(text) == expected


BOX_A, BOX_B = [0, 0, 5, 5], [1, 1, 4, 4]


@pytest.mark.parametrize(
    "text, expected",
    [
        ('<answer>```json\n{"3": [0, 0, 5, 5]}\n```</answer>', {"3": BOX_A}),
        ("Boxes: {'3': [0, 0, 5, 5], '4': [1, 1, 4, 4]} done", {"3": BOX_A, "4": BOX_B}),
        ('[{"1": [0, 0, 5, 5]}, {"2": [1, 1, 4, 4]}]', {"1": BOX_A, "2": BOX_B}),
        ("[[1, [0, 0, 5, 5]], [2, [1, 1, 4, 4]]]", {"1": BOX_A, "2": BOX_B}),
        # Truncated list of pairs: balanced by appending "]", then (faithful) returned as a list.
        ("[[1, [0, 0, 5, 5]], [2, [1, 1, 4, 4]]", [[1, BOX_A], [2, BOX_B]]),
        # Truncated dict: the missing "}" is appended.
        ('{"a": {"1": [0, 0, 5, 5]}', {"a": {"1": BOX_A}}),
        ("no json at all", None),
        ("{not: json}", None),
    ],
)
def test_parse_spatial_answer(text, expected):
    assert vstar.parse_spatial_answer(text) == expected


def test_balance_brackets():
    assert vstar.balance_brackets('{"1": [0, 0') == '{"1": [0, 0]}'
    assert vstar.balance_brackets("0, 1]}") == "{[0, 1]}"


# upstream's int(reply): out-of-range integers are kept, anything else is -1
@pytest.mark.parametrize(
    "reply, score",
    [("2", 2), (" 3\n", 3), ("0", 0), ("5", 5), ("-2", -2), ("two", -1), ("2.0", -1)],
)
def test_parse_judge_reply(reply, score):
    assert vstar.parse_judge_reply(reply) == score


def test_out_of_range_judge_scores_and_failed_items_count_as_upstream():
    """Scores 5 (correct: >= 2) and -2 count as written; -1 is 0 in avg_score and out of the
    valid mean (eval_vstar.py). A failed (not run) item is rated 0 with zero IoUs: inside n."""
    a, b, _, d = _items()
    items = [dict(a, vqa_score=5), dict(b, vqa_score=-2), dict(d, vqa_score=-1)]  # fmt: skip
    failed = dict(a, status="failed", answer_vqa="", vqa_score=None)
    m = vstar.metrics(items + [failed])
    assert m["n"] == 4 and m["n_rated"] == 4
    assert m["acc"] == pytest.approx(1 / 4)
    assert m["avg_score"] == pytest.approx((5 - 2 + 0 + 0) / 4)
    assert m["avg_valid_score"] == pytest.approx((5 - 2 + 0) / 3)
    three = vstar.metrics(items)
    assert m["tiou_1"] == pytest.approx(three["tiou_1"] * 3 / 4)
    assert m["viou_2"] == pytest.approx(three["viou_2"] * 3 / 4)


# ------------------------------------------------------------------------- item formulas
def test_spatial_scores_by_hand():
    gt = [
        {"timestamp": 2, "xmin": 0, "ymin": 0, "xmax": 10, "ymax": 10},
        {"timestamp": 3, "xmin": 0, "ymin": 0, "xmax": 10, "ymax": 10},
    ]
    # second 2: two boxes, best IoU 1; second 3: inter 50, union 150 -> 1/3.
    pred = {"2": [[20, 20, 30, 30], [0, 0, 10, 10]], "3": [5, 0, 15, 10]}
    miou, aps = vstar.spatial_scores(gt, pred)
    assert miou == pytest.approx(2 / 3)
    assert aps == pytest.approx((1.0, 1.0, 0.5, 0.5, 0.5))
    assert vstar.spatial_scores(gt, [[2, [0, 0, 10, 10]]]) == (0.0, (0.0,) * 5)  # list: no lookup
    assert vstar.spatial_scores(gt, {"2": ["a", 0, 10, 10]})[0] == 0.0  # malformed box
    assert vstar.spatial_scores([], {"2": [0, 0, 10, 10]}) == (0.0, (0.0,) * 5)


def test_duration_bucket_edges():
    assert [vstar.duration_bucket(s) for s in (59.99, 60, 179.9, 180)] == [
        "Short",
        "Medium",
        "Medium",
        "Long",
    ]


def _box(t, x1, y1, x2, y2):
    return {"timestamp": t, "xmin": x1, "ymin": y1, "xmax": x2, "ymax": y2}


def _items():
    return [
        {  # A: Sports, 300/10 = 30 s (Short); exact match "a red car" == "A red car." -> 3.
            "vid": "a",
            "domain": "Sports",
            "frame_count": 300,
            "fps": 10,
            "question": "what?",
            "answer": "a red car",
            "answer_vqa": "A red car.",
            "timestamps": [2, 6],
            "answer_temporal": [4, 8],  # overlap 2, hull 6 -> 1/3
            "answer_temporal_2": [],  # parsed from the raw output: [2, 6] -> 1
            "answer_temporal_pre_2": "<think>x</think><answer>From <t>2</t>s to <t>6</t>s</answer>",
            "bboxes": [_box(2, 0, 0, 10, 10), _box(3, 0, 0, 10, 10)],
            # chain 1: second 2 IoU 50/100 = 0.5, second 3 missing -> mIoU 0.25,
            #   AP@.1/.3/.5 = 0.5, AP@.7/.9 = 0
            "answer_spatial": {"2": [0, 0, 10, 5], "4": [0, 0, 10, 10]},
            # chain 2: 1 and 1/3 -> mIoU 2/3, AP = 1, 1, .5, .5, .5
            "answer_spatial_2": {"2": [[20, 20, 30, 30], [0, 0, 10, 10]], "3": [5, 0, 15, 10]},
        },
        {  # B: Sports, 120 s (Medium); judge score 1 (not correct).
            "vid": "b",
            "domain": "Sports",
            "duration": 120,
            "question": "what?",
            "answer": "a dog",
            "answer_vqa": "something",
            "vqa_score": 1,
            "timestamps": [10, 20],
            "answer_temporal": [],
            "answer_temporal_pre": "From 0:12 to 0:18",  # [12, 18] -> 6/10 = 0.6
            "answer_temporal_2": [15, 30],  # overlap 5, hull 20 -> 0.25
            "bboxes": [_box(10, 0, 0, 4, 4)],
            "answer_spatial": "```json\n{'10': [0, 0, 4, 4]}\n```",  # raw text, parsed: IoU 1
            "answer_spatial_2": None,  # -> 0
        },
        {  # C: Cooking, 6000/25 = 240 s (Long); empty answer -> not rated, still counts in n.
            "vid": "c",
            "domain": "Cooking",
            "frame_count": 6000,
            "fps": 25,
            "question": "what?",
            "answer": "soup",
            "answer_vqa": "",
            "timestamps": [0, 5],
            "answer_temporal": [0, 5],
            "answer_temporal_2": [0, 5],
            "bboxes": [_box(1, 0, 0, 4, 4)],
            "answer_spatial": {"1": [0, 0, 4, 4]},
            "answer_spatial_2": {"1": [0, 0, 4, 4]},
        },
        {  # D: Cooking, 59.99 s (Short); judge reply was unparseable (-1).
            "vid": "d",
            "domain": "Cooking",
            "duration": 59.99,
            "question": "what?",
            "answer": "salt",
            "answer_vqa": "x",
            "vqa_score": -1,
            "timestamps": [0, 10],
            "answer_temporal": [0, 10],  # 1
            "answer_temporal_2": [20, 30],  # 0
            "bboxes": [_box(5, 0, 0, 10, 10)],
            "answer_spatial": {"5": [0, 0, 10, 10]},  # 1
            "answer_spatial_2": [[5, [0, 0, 10, 10]]],  # a list (parser retry quirk) -> 0
        },
    ]


def test_metrics_by_hand():
    m = vstar.metrics(_items())
    expected = {
        "n": 4,
        "n_rated": 3,
        "acc": 1 / 4,  # only A correct; N counts the unrated C
        "avg_score": (3 + 1 + 0) / 3,  # -1 counts as 0
        "avg_valid_score": (3 + 1) / 2,
        "tiou_1": (1 / 3 + 0.6 + 1.0) / 3,
        "r1@0.3_1": 1.0,
        "r1@0.5_1": 2 / 3,
        "r1@0.7_1": 1 / 3,
        "tiou_2": (1.0 + 0.25 + 0.0) / 3,
        "r1@0.3_2": 1 / 3,
        "r1@0.5_2": 1 / 3,
        "r1@0.7_2": 1 / 3,
        "viou_1": (0.25 + 1 + 1) / 3,
        "ap@0.1_1": 2.5 / 3,
        "ap@0.3_1": 2.5 / 3,
        "ap@0.5_1": 2.5 / 3,
        "ap@0.7_1": 2 / 3,
        "ap@0.9_1": 2 / 3,
        "viou_2": (2 / 3) / 3,
        "ap@0.1_2": 1 / 3,
        "ap@0.3_2": 1 / 3,
        "ap@0.5_2": 0.5 / 3,
        "ap@0.7_2": 0.5 / 3,
        "ap@0.9_2": 0.5 / 3,
        # joint rates over n = 4: only A is correct; A's (tIoU, vIoU) are (1/3, .25) / (1, 2/3);
        # B (0.6, 1) and D (1, 1) pass Temp&Spat in chain 1; in chain 2 only A does.
        "vqa&temp_1": 1 / 4,
        "vqa&spat_1": 1 / 4,
        "temp&spat_1": 3 / 4,
        "vqa&temp&spat_1": 1 / 4,
        "vqa&temp_2": 1 / 4,
        "vqa&spat_2": 1 / 4,
        "temp&spat_2": 1 / 4,
        "vqa&temp&spat_2": 1 / 4,
        "AM1": (0.25 + (1 / 3 + 1.6) / 3 + 0.75) / 3,
    }
    for key, value in expected.items():
        assert m[key] == pytest.approx(value), key
    lgm1 = -(math.log(0.75) + math.log(1 - (1 / 3 + 1.6) / 3) + math.log(0.25)) / 3
    assert m["LGM1"] == pytest.approx(lgm1)
    assert m["mAM"] == pytest.approx((m["AM1"] + m["AM2"]) / 2)

    # Per-group denominators are the group's rated items; Long (only C, unrated) is omitted.
    assert set(m["by_duration"]) == {"Short", "Medium"}
    short, medium = m["by_duration"]["Short"], m["by_duration"]["Medium"]
    assert (short["n"], short["acc"], short["tiou_1"]) == (2, 0.5, pytest.approx((1 / 3 + 1) / 2))
    assert (medium["n"], medium["acc"], medium["viou_1"]) == (1, 0.0, 1.0)
    sports, cooking = m["by_domain"]["Sports"], m["by_domain"]["Cooking"]
    assert (sports["n"], sports["acc"]) == (2, 0.5)
    assert sports["tiou_2"] == pytest.approx((1.0 + 0.25) / 2)
    assert (cooking["n"], cooking["acc"], cooking["tiou_1"], cooking["viou_2"]) == (
        1,
        0.0,
        1.0,
        0.0,
    )


def test_judge_callable_and_score_sources():
    calls = []

    def judge(question, gt, candidate):
        calls.append(candidate)
        return " 2\n"

    scored = [vstar.score_item(item, judge) for item in _items()]
    assert calls == ["A red car."]  # B and D carry vqa_score; C is not rated
    assert [(s.get("score"), s.get("score_source")) for s in scored] == [
        (2, "judge"),
        (1, "judge"),
        (None, None),
        (-1, "judge"),
    ]
    m = vstar.metrics(_items(), scored=scored)
    assert m["acc"] == 0.25 and m["avg_valid_score"] == pytest.approx(1.5)
    assert vstar.score_item(_items()[0])["score_source"] == "exact"


def test_metrics_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        vstar.metrics([])
    item = _items()[0]
    del item["timestamps"]
    with pytest.raises(ValueError, match="timestamps"):
        vstar.metrics([item])
    item = _items()[1]
    item["vqa_score"] = "7"  # a stored score must be an int (7 itself counts, as upstream)
    with pytest.raises(ValueError, match="judge score"):
        vstar.metrics([item])
    item = _items()[0]
    del item["fps"]
    with pytest.raises(ValueError, match="duration"):
        vstar.metrics([item])


# -------------------------------------------------------------------------------- results
def test_results_files_roundtrip(tmp_path, capsys):
    items = _items()
    scored = [vstar.score_item(item) for item in items]
    summary = vstar.metrics(items, scored=scored)
    path = tmp_path / "out" / "items.jsonl"
    assert results.write_jsonl(path, scored) == 4
    back = results.read_jsonl(path)
    assert back[0]["aps_1"] == [0.5, 0.5, 0.5, 0.0, 0.0] and back[2] == scored[2]

    md_path, json_path = results.write_summary(tmp_path, "vstar", summary, ["n", "acc", "mAM"])
    table = open(md_path).read()
    assert table in capsys.readouterr().out
    lines = table.splitlines()
    assert lines[2] == "| group | n | acc | mAM |"
    assert lines[4] == f"| overall | 4 | 0.2500 | {summary['mAM']:.4f} |"
    assert "| domain=Cooking | 1 | 0.0000 |" in table and "| duration=Medium | 1 |" in table
    assert json.load(open(json_path)) == results.to_jsonable(summary)


def test_results_json_edge_cases(tmp_path):
    assert results.to_jsonable({"a": np.float32(0.5), "b": (np.int64(2), float("nan"))}) == {
        "a": 0.5,
        "b": [2, None],
    }
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:3"):
        results.read_jsonl(bad)
