"""MCQ letter extraction and accuracy, temporal grounding, test-time voting, evidence crops."""

import cv2
import numpy as np
import pytest

from o3video_jax.eval import grounding, mcq, tts, visualize


# ------------------------------------------------------------------------- letter extraction
@pytest.mark.parametrize(
    "text, letters, expected",
    [
        ("B", "ABCD", "B"),
        ("  (C) \n", "ABCD", "C"),
        ("**D**", "ABCD", "D"),
        ("The answer is D.", "ABCD", "D"),
        ("The best option: {A}", "ABCD", "A"),
        ("<think>A. is wrong, B: maybe</think><answer>C</answer>", "ABCD", "C"),
        ("I first thought (A) but (B) is right", "ABCD", "B"),  # last occurrence wins
        ("A. seems off; after checking the clip, C.", "ABCD", "C"),
        ("Option A fits, so the answer: B.", "ABCD", "B"),  # marked form beats bare letter
        ("From <t>1.0</t>s to <t>3.0</t>s.\nCorrect Option: B", "ABCD", "B"),
        ("<answer>From <t>1</t>s to <t>3</t>s.\nCorrect Option: (C)</answer>", "ABCD", "C"),
        ("E.", "ABCD", None),
        ("E.", mcq.LETTERS_A_TO_J, "E"),
        ("The answer is J", mcq.LETTERS_A_TO_J, "J"),
        ("Made in the USA.", "ABCD", None),  # letters inside words never count
        ("Code A1 applies", "ABCD", None),
        ("", "ABCD", None),
        (None, "ABCD", None),
    ],
)
def test_extract_letter(text, letters, expected):
    assert mcq.extract_letter(text, letters) == expected


def test_extract_letter_content_match():
    options = ["A. blue car", "B. red umbrella", "C. green bike"]
    long_reply = "I believe the person is holding a red umbrella in the rain"
    assert mcq.extract_letter(long_reply, options=options) == "B"
    # Last occurrence wins among option texts; dict options work the same way.
    reply = "at first a green bike passes, then a blue car stops there"
    assert mcq.extract_letter(reply, options={"A": "blue car", "C": "green bike"}) == "A"
    assert mcq.extract_letter("red umbrella", options=options) is None  # <= 5 words
    with pytest.raises(ValueError, match="letters"):
        mcq.extract_letter("A", letters="abc")


def test_accuracy_with_category_breakdown():
    records = [
        {"pred": "A", "answer": "A", "duration": "short", "domain": "Sports"},
        {"pred": "b", "answer": "B", "duration": "short", "domain": "Film"},
        {"pred": None, "answer": "C", "duration": "long", "domain": "Sports"},
        {"pred": "D", "answer": "C", "duration": "long"},  # no domain -> "unknown"
    ]
    out = mcq.accuracy(records)
    assert (out["n"], out["correct"], out["acc"]) == (4, 2, 0.5)
    assert out["by_duration"] == {
        "long": {"n": 2, "correct": 0, "acc": 0.0},
        "short": {"n": 2, "correct": 2, "acc": 1.0},
    }
    assert out["by_domain"]["Sports"] == {"n": 2, "correct": 1, "acc": 0.5}
    assert out["by_domain"]["unknown"] == {"n": 1, "correct": 0, "acc": 0.0}
    assert "by_task_type" not in out
    with pytest.raises(ValueError, match="answer"):
        mcq.accuracy([{"pred": "A"}])


# ------------------------------------------------------------------------------ grounding
def test_grounding_metrics_by_hand():
    gts = [[0, 10], [5, 15], [0, 4], [2, 6], [10, 20], [0, 10]]
    preds = [[5, 10], [0, 5], [0, 4], [], [12, 16], [10, 5]]
    # IoUs: 5/10, 0 (touching), 1, 0 (missing), 4/10, 0 (reversed span scored as written)
    out = grounding.metrics(gts, preds)
    assert out["n"] == 6
    assert out["miou"] == pytest.approx(1.9 / 6)
    assert out["r1@0.3"] == pytest.approx(3 / 6)
    assert out["r1@0.5"] == pytest.approx(2 / 6)
    assert out["r1@0.7"] == pytest.approx(1 / 6)
    assert grounding.temporal_iou([0, 10], ["a", 3]) == 0.0
    with pytest.raises(ValueError, match="length"):
        grounding.metrics(gts, preds[:2])
    with pytest.raises(ValueError, match="ground-truth"):
        grounding.temporal_iou([1], [0, 1])


# -------------------------------------------------------------------------------- voting
def _path(letter=None, think="ok", claims=()):
    text = ""
    if think is not None:
        text += "<think>" + think + "".join(claims) + "</think>"
    if letter is not None:
        text += f"<answer>{letter}</answer>"
    return text


def _claim(t, box=(0, 0, 10, 10), name="cup"):
    return f"<obj>{name}</obj><box>[{', '.join(map(str, box))}]</box>at<t>{t}</t>s"


def test_majority_vote_table():
    paths = [
        _path("B"),
        _path("B"),
        _path("C"),
        _path("C", think=None),  # no <think>: its letter counts with weight 0
        _path("E"),  # not an allowed letter -> NA
        "no tags at all",  # NA
    ]
    out = tts.vote(paths, mode="majority")
    assert out.pred == "B"
    assert out.letter_weights == {"A": 0.0, "B": 2.0, "C": 1.0, "D": 0.0}
    assert [p.letter for p in out.paths] == ["B", "B", "C", "C", None, None]
    assert tts.vote([_path("C"), _path("B")]).pred == "B"  # tie -> earliest letter
    # Zero-weight letters tie with the letters nobody chose: A wins, as in the original.
    assert tts.vote([_path("C", think=None), _path("D", think=None)]).pred == "A"
    assert tts.vote(["x", _path("Z")]).pred == "A"  # all NA
    assert tts.vote([_path("J")], letters=mcq.LETTERS_A_TO_J).pred == "J"


def test_non_think_vote_uses_letter_parser():
    out = tts.vote(["The answer is C.", "(B)", "nothing"], think_mode=False)
    assert out.letter_weights["B"] == out.letter_weights["C"] == 1.0 and out.pred == "B"


def _frames():
    """3 frames of 20x30: frame k is 10(k+1) left of x=15 and 10(k+1)+100 from x=15 on."""
    frames = np.zeros((3, 20, 30, 3), np.uint8)
    for k in range(3):
        frames[k, :, :15] = 10 * (k + 1)
        frames[k, :, 15:] = 10 * (k + 1) + 100
    return frames


def test_confidence_vote_table():
    replies = iter([2, "1", "banana"])
    calls = []

    def scorer(crops, question):
        calls.append((len(crops), question))
        return next(replies)

    paths = [
        _path("C", claims=[_claim(0.5)]),  # scorer 2 -> 1.0
        _path("B", claims=[_claim(0.5)]),  # "1" -> 0.6
        _path("B", claims=[_claim(1.0)]),  # unparseable reply -> 0.2
        _path("D"),  # no claims -> 0.2, scorer not called
        _path("D", claims=[_claim(0.5)] * 11),  # 11 crops -> all discarded -> 0.2
        _path("A", claims=[_claim(9.0)]),  # claim past the last frame -> no crop -> 0.2
    ]
    out = tts.vote(paths, mode="confidence", frames=_frames(), fps=2.0, scorer=scorer, question="Q")
    assert calls == [(1, "Q")] * 3
    assert out.letter_weights == pytest.approx({"A": 0.2, "B": 0.8, "C": 1.0, "D": 0.4})
    assert out.pred == "C"
    with pytest.raises(ValueError, match="scorer"):
        tts.vote(paths, mode="confidence")
    with pytest.raises(ValueError, match="mode"):
        tts.vote(paths, mode="best")


@pytest.mark.parametrize(
    "score, weight",
    [(2, 1.0), (1, 0.6), (0, 0.2), ("2", 1.0), (" 1\n", 0.2), ("3", 0.2), (-1, 0.2), ("2.", 0.2)],
)
def test_relevance_weight(score, weight):
    assert tts.relevance_weight(score) == weight


def test_parse_claims():
    text = (
        _claim("1.234", (10, 20, 30, 40), "red cup")
        + _claim(2, (30, 20, 10, 40))  # x2 < x1
        + "<obj>a</obj><box>[1, 2, 3]</box>at<t>1</t>s"  # 3 numbers
        + _claim("soon")
        + _claim("nan")
    )
    assert tts.parse_claims(text) == [tts.Claim("red cup", (10.0, 20.0, 30.0, 40.0), 1.23)]
    two_boxes = "<obj>a</obj><box>[1, 2, 3, 4]</box><box>[1, 2, 3, 4]</box>at<t>1</t>s"
    assert tts.parse_claims(two_boxes) == []  # single-box claims only


def test_crop_evidence_on_synthetic_frames():
    frames = _frames()
    claims = [
        tts.Claim("in", (0, 0, 10, 10), 0.5),  # frame 1, left half -> 20
        tts.Claim("clamped", (-50, -50, 5, 5), 0.25),  # round(0.5) = 0 (half to even): 10
        tts.Claim("right", (25, 0, 100, 10), 1.25),  # round(2.5) = 2; x clamped to 30: 130
        tts.Claim("outside", (-20, 0, -5, 10), 0.5),  # entirely left of the frame: skipped
        tts.Claim("thin", (3.2, 3.7, 3.9, 9), 0.5),  # int-cast width 0: skipped
        tts.Claim("late", (0, 0, 10, 10), 1.5),  # index 3 >= 3 frames: skipped
        tts.Claim("early", (0, 0, 10, 10), -1.0),  # negative time: skipped
        tts.Claim("edge", (14, 0, 16, 20), 0.0),  # straddles x = 15 -> 10 | 110
    ]
    crops = tts.crop_evidence(frames, 2.0, claims)
    assert len(crops) == 4
    assert all(c.shape == (20, 30, 3) and c.dtype == np.uint8 for c in crops)
    assert [int(np.unique(c)[0]) for c in crops[:3]] == [20, 10, 130]
    assert all(np.unique(c).size == 1 for c in crops[:3])
    edge = crops[3][:, :, 0].astype(int)
    assert edge[0, 0] == 10 and edge[0, -1] == 110
    assert np.all(np.diff(edge, axis=1) >= 0)  # bilinear ramp between the two columns

    ten = [tts.Claim("c", (0, 0, 10, 10), 0.0)] * 10
    assert len(tts.crop_evidence(frames, 2.0, ten)) == 10
    assert tts.crop_evidence(frames, 2.0, ten + ten[:1]) == []  # > MAX_CROPS: all discarded
    with pytest.raises(ValueError, match="frames"):
        tts.crop_evidence(frames[0], 2.0, ten)


# ---------------------------------------------------------------------------- visualisation
def test_render_example_draws_claim_on_nearest_frame(tmp_path):
    frames = np.full((4, 40, 60, 3), 200, np.uint8)
    completion = (
        "<think>" + _claim(0.9, (5, 5, 30, 30), "dog") + "</think><answer>B</answer>"
    )  # nearest timestamp to 0.9 s is 1.0 s (frame 2)
    out = tmp_path / "strip.png"
    image = visualize.render_example(frames, [0.0, 0.5, 1.0, 1.5], completion, out)
    assert image.shape == (40 + 32, 4 * 60, 3)
    np.testing.assert_array_equal(cv2.imread(str(out))[..., ::-1], image)
    box_color = np.array(visualize.COLORS[0])
    has_color = [
        np.any(np.all(image[:40, 60 * i : 60 * (i + 1)] == box_color, -1)) for i in range(4)
    ]
    assert has_color == [False, False, True, False]
    with pytest.raises(ValueError, match="timestamps"):
        visualize.render_example(frames, [0.0], completion, out)
