"""The seven rewards against values derived by hand from the reference definitions (§3)."""

import importlib.util
import math
import pathlib

import jax
import numpy as np
import pytest

from o3video_jax.rewards import REWARD_NAMES, RewardConfig, compute_rewards, scoring, sigma_schedule

# ---------------------------------------------------------------------------------------------
# Examples. Pixel boxes are what the rewards compare against.

# Key frames at 2 s (idx 0) and 5 s (idx 1); frame_size 200x100, so normalised boxes scale
# x by 200 and y by 100:
#   frame 0: man  [0, 0, 0.5, 0.5]                          -> [0, 0, 100, 50]
#   frame 1: door [0.5, 0.5, 1, 1]                          -> [100, 50, 200, 100]
#            man  [0, 0, 0.25, 0.25], [0, 0, 0.5, 0.5]      -> [0, 0, 50, 25], [0, 0, 100, 50]
TS = {
    "task": "temporal-spatial free-form QA",
    "answer": "the man opens the door",
    "key_frames": [
        {"time": 2.0, "idx": 0, "path": "a.jpg"},
        {"time": 5.0, "idx": 1, "path": "b.jpg"},
    ],
    "key_items": {
        "0": {"man": [[0.0, 0.0, 0.5, 0.5]]},
        "1": {
            "door": [[0.5, 0.5, 1.0, 1.0]],
            "man": [[0.0, 0.0, 0.25, 0.25], [0.0, 0.0, 0.5, 0.5]],
        },
    },
    "frame_size": [200, 100],
}
# Original image 400x300, fed at 200x150: GT [100, 50, 300, 250] * 0.5 -> [50, 25, 150, 125].
VQA = {
    "task": "visual QA",
    "answer": "<obj>cat</obj><box>[100, 50, 300, 250]</box>",
    "image_size": [400, 300],
    "frame_size": [200, 150],
}
TQA = {"task": "temporal QA", "answer": "[10.0, 20.0]"}
TGMCQ = {"task": "temporal QA (MCQ)", "answer": "B\n[4, 8]"}
GMCQ = {"task": "General video QA MCQ", "answer": "C"}
GFREE = {"task": "General video QA Free-form", "answer": "A man is riding a bike."}

# (id, example, completion, step_fraction, expected {term: value}; unlisted terms are 0).
CASES = [
    (
        "ts_grounded",
        TS,
        "<think>The <obj>man</obj><box>[0,0,100,50]</box>at<t>2.5</t>s then the "
        "<obj>door</obj><box>[100,50,150,100]</box><box>[0,0,100,50]</box>at<t>5</t>s.</think>\n"
        "<answer>the man opens the door</answer>",
        0.5,
        # ans_acc: answer == GT, ROUGE-1/2/L F = 1 -> 1.
        # point: p = 0.5 < 0.75 -> sigma = 4 (1 - 0.5) = 2. Times [2.5, 5]: d = 0.5 and 0;
        #   exp(-0.25 / 8) = 0.9692332, exp(0) = 1 -> mean 0.9846166.
        # spatial: claim T=2.5 -> |2-2.5| < 1 passes, |5-2.5| does not -> frame 0: IoU(man,
        #   [0,0,100,50]) = 1. Claim T=5 -> frame 1: door vs [100,50,150,100]: 50*50 /
        #   (5000 + 2500 - 2500) = 0.5, vs [0,0,100,50]: 0 -> door 0.5; man box [0,0,50,25]:
        #   best 1250 / (1250 + 5000 - 1250) = 0.25, man box [0,0,100,50]: 1 -> mean 0.625;
        #   claim = max(0.5, 0.625) = 0.625. Reward (1 + 0.625) / 2 = 0.8125.
        # format: obj 2/2, t 2/2, box 3/3 paired, all > 0 -> 1.
        {
            "ans_acc": 1.0,
            "thk_temporal_point": (math.exp(-0.03125) + 1) / 2,
            "thk_spatial": 0.8125,
            "format": 1.0,
        },
    ),
    (
        "ts_gate_intended",
        TS,
        "<think><obj>man</obj><box>[0,0,100,50]</box>at<t>7</t>s</think><answer>a dog</answer>",
        0.9,
        # ans_acc: tokens [a, dog] share nothing with [the, man, open, the, door] -> 0.
        # point: p = 0.9 >= 0.75 -> sigma = 1; d = min(|7-2|, |7-5|) = 2 -> exp(-4/2) = e^-2.
        # spatial (intended |g - T| < 1): |2-7| = 5 and |5-7| = 2 both fail -> the claim
        #   scores 0 but counts: 0 / 1 = 0.
        # format: obj, t, box 1/1 each -> 1.
        {"thk_temporal_point": math.exp(-2.0), "format": 1.0},
    ),
    (
        "ts_gate_reference",
        TS,
        "<think><obj>man</obj><box>[0,0,100,50]</box>at<t>7</t>s</think><answer>a dog</answer>",
        0.9,
        # Same completion, reference gate g - T < 1: 2-7 = -5 and 5-7 = -2 both pass; the
        #   nearest is g = 5 -> frame 1: door 0; man (0.25 + 1) / 2 = 0.625 -> 0.625.
        {"thk_temporal_point": math.exp(-2.0), "thk_spatial": 0.625, "format": 1.0},
    ),
    (
        "ts_skipped_and_unparsable",
        TS,
        "<think><obj>man</obj><box>[0,0,100,50]</box>at<t>2</t>s "
        "<obj>cup</obj><box>[1,2,,3]</box>at<t>2</t>s "
        "<obj>door</obj><box>[100,50,200,100]</box>at<t>nan</t>s "
        "<obj>x</obj><box>[0,0,100,50]</box>at<t>1.5.5</t>s</think><answer></answer>",
        0.5,
        # claims: T=2 -> frame 0 IoU 1; "[1,2,,3]" fails JSON -> skipped; T=nan parses but no
        #   g passes (comparisons with nan are false) -> 0, counted; "1.5.5" fails float ->
        #   skipped. Reward (1 + 0) / 2 = 0.5.
        # point: bare times "2", "2", "1.5.5" ("nan" is not [\d.]+): float("1.5.5") fails, so
        #   the whole list is empty -> 0.
        # ans_acc: empty answer -> ROUGE 0. format: obj/box/t 4/4 each -> 1.
        {"thk_spatial": 0.5, "format": 1.0},
    ),
    (
        "ts_unpaired_tag",
        TS,
        "<think><obj>man</obj><box>[0,0,1,1]</box>at<t>2</t>s <obj></think><answer>x</answer>",
        0.5,
        # format: <obj> 2 vs </obj> 1 in think -> 0.
        # point: sigma 2, time 2 vs g = 2 -> exp(0) = 1.
        # spatial: T=2 -> frame 0; IoU([0,0,100,50], [0,0,1,1]) = 1 / (5000 + 1 - 1) = 0.0002.
        {"thk_temporal_point": 1.0, "thk_spatial": 0.0002},
    ),
    (
        "vqa_grounded",
        VQA,
        "<think>The <obj>cat</obj><box>[50,25,150,125]</box> sits; also <box>[0,0,10,10]</box>."
        "</think>\n<answer><obj>cat</obj><box>[50,25,100,125]</box></answer>",
        0.3,
        # ans_viou: [50,25,100,125] vs GT [50,25,150,125]: 50*100 / (10000 + 5000 - 5000) = 0.5.
        # spatial: think boxes IoU 1 and 0 -> max 1.
        # format: no <t>, but `<obj>cat</obj><box>[..]</box>` (\w+ name) -> 1.
        {"ans_viou": 0.5, "thk_spatial": 1.0, "format": 1.0},
    ),
    (
        "vqa_two_word_name",
        VQA,
        "<think>The <obj>black cat</obj><box>[0,0,50,25]</box></think>"
        "<answer><obj>black cat</obj><box>[50,25,150,125]</box></answer>",
        0.3,
        # ans_viou 1. spatial: [0,0,50,25] touches GT [50,25,..] only at a corner -> 0.
        # format: "black cat" fails \w+ and think has no <t> -> 0.5.
        {"ans_viou": 1.0, "format": 0.5},
    ),
    (
        "tqa_span",
        TQA,
        "<think>The event starts near <t>9.5</t>s, peaks at <t>12</t>s and ends by <t>20</t>s."
        "</think>\n<answer>From <t>12.5</t>s to <t>25</t>s</answer>",
        0.3,
        # ans_tiou: [12.5, 25] vs [10, 20]: (20 - 12.5) / (25 - 10) = 0.5.
        # segment: 9.5 out, 12 in, 20 in (inclusive) -> 2/3. format: 3 <t> >= 2 -> 1.
        {"ans_tiou": 0.5, "thk_temporal_segment": 2 / 3, "format": 1.0},
    ),
    (
        "tqa_reversed_span",
        TQA,
        "<think>Only <t>15</t>s.</think><answer>From <t>30</t>s to <t>12</t>s</answer>",
        0.3,
        # ans_tiou: end < start -> 0. segment: 15 in [10, 20] -> 1. format: 1 <t> < 2 -> 0.5.
        {"thk_temporal_segment": 1.0, "format": 0.5},
    ),
    (
        "tgmcq_correct",
        TGMCQ,
        "<think>Between <t>5</t>s and <t>9.0</t>s.</think>\n"
        "<answer>From <t>4</t>s to <t>6</t>s.\nCorrect Option: (B)</answer>",
        0.3,
        # ans_acc: "(B)" is a variant of B -> 1. ans_tiou: [4,6] vs [4,8]: 2/4 = 0.5.
        # segment: 5 in, 9 out -> 0.5. format: 2 <t> -> 1.
        {"ans_acc": 1.0, "ans_tiou": 0.5, "thk_temporal_segment": 0.5, "format": 1.0},
    ),
    (
        "tgmcq_second_option_cuts",
        TGMCQ,
        "<think>none</think><answer>Correct Option: B. Also Correct Option: B</answer>",
        0.3,
        # choice = text between the two "Correct Option:" = "B. Also" -> not a variant -> 0.
        # no span, no times -> 0. format: 0 <t> < 2 -> 0.5.
        {"format": 0.5},
    ),
    (
        "gmcq_bracket",
        GMCQ,
        "<think>thinking</think><answer> [C] </answer>",
        0.3,
        # "[C]" is a variant of C -> 1; General tasks skip the grounding check -> format 1.
        {"ans_acc": 1.0, "format": 1.0},
    ),
    (
        "gmcq_wrong_form",
        GMCQ,
        "<think>a</think><answer>C) because</answer>",
        0.3,
        {"format": 1.0},  # "C) because" is not in {C, C., (C), [C]} -> 0
    ),
    (
        "gmcq_unbalanced_answer",
        GMCQ,
        "<think>a</think><answer>C</answer><answer>",
        0.3,
        {"ans_acc": 1.0},  # first answer "C" -> 1; <answer> 2 vs </answer> 1 -> format 0
    ),
    (
        "gfree_rouge",
        GFREE,
        "<think>x</think><answer>a man rides a red bike</answer>",
        0.3,
        # Porter: riding, rides -> ride. GT [a, man, is, ride, a, bike], answer
        #   [a, man, ride, a, red, bike]. ROUGE-1: overlap 2+1+1+1 = 5 of 6 and 6 -> F = 5/6.
        #   ROUGE-2: 5 bigrams each, shared (a,man), (ride,a) -> F = 2/5.
        #   ROUGE-L: LCS a man ride a bike = 5 -> F = 5/6. Mean (5/6 + 2/5 + 5/6) / 3.
        {"ans_acc": (5 / 6 + 2 / 5 + 5 / 6) / 3, "format": 1.0},
    ),
    (
        "gfree_no_think",
        GFREE,
        "<answer>a man rides a red bike</answer>",
        0.3,
        {"ans_acc": (5 / 6 + 2 / 5 + 5 / 6) / 3},  # no think block -> format 0
    ),
]


def _expected(case_terms):
    full = {name: case_terms.get(name, 0.0) for name in REWARD_NAMES}
    full["total"] = sum(full.values())
    return full


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hand_derived_rewards(case):
    name, example, completion, p, terms = case
    gate = "reference" if name.endswith("_reference") else "intended"
    got = compute_rewards([completion], [example], p, spatial_gate=gate)
    for term, value in _expected(terms).items():
        np.testing.assert_allclose(got[term], [value], atol=1e-6, err_msg=f"{name}: {term}")


def test_mixed_batch_dispatches_per_sample_and_buckets_agree():
    """All cases in one batch (per-sample task dispatch), fixed and bucketed shapes."""
    cases = [c for c in CASES if not c[0].endswith("_reference")]
    completions, examples = [c[2] for c in cases], [c[1] for c in cases]
    for cfg in (RewardConfig(), RewardConfig(bucket_shapes=True)):
        # One step fraction for the batch: only the temporal-spatial cases depend on it.
        got = compute_rewards(completions, examples, 0.5, config=cfg)
        for i, case in enumerate(cases):
            if case[1] is TS and case[3] != 0.5:
                continue
            for term, value in _expected(case[4]).items():
                np.testing.assert_allclose(got[term][i], value, atol=1e-6, err_msg=case[0])


def test_sigma_schedule_and_weights():
    assert sigma_schedule(0.0) == 4.0 and sigma_schedule(0.5) == 2.0
    assert sigma_schedule(0.7) == pytest.approx(1.2) and sigma_schedule(0.75) == 1.0
    _, example, completion, p, terms = CASES[0]
    weights = {"format": 2.0, "ans_acc": 0.0, "thk_spatial": 0.5}
    got = compute_rewards([completion], [example], p, weights=weights)
    expected = sum(weights.get(k, 1.0) * v for k, v in terms.items())
    np.testing.assert_allclose(got["total"], [expected], atol=1e-6)
    np.testing.assert_allclose(got["format"], [1.0])  # weights only scale the total


def test_float64_gate_matches_python():
    # 1.4 - 0.4 < 1 is True in float64 (0.9999999999999999) but False in float32 (1.0).
    ex = dict(TS, key_frames=[{"time": 1.4, "idx": 0}], key_items={"0": {"m": [[0, 0, 0.5, 0.5]]}})
    text = "<think><obj>m</obj><box>[0,0,100,50]</box>at<t>0.4</t>s</think><answer>a</answer>"
    assert compute_rewards([text], [ex])["thk_spatial"][0] == 1.0


@pytest.mark.parametrize(
    "examples, kwargs, match",
    [
        ([dict(GMCQ, task="video QA")], {}, "unknown task"),
        ([GMCQ, GMCQ], {}, "one example per completion"),
        ([GMCQ], {"spatial_gate": "abs"}, "spatial_gate"),
        ([GMCQ], {"step_fraction": 1.5}, "step_fraction"),
        ([GMCQ], {"weights": {"acc": 1.0}}, "unknown reward weights"),
        ([dict(TQA, answer="from 1 to 2")], {}, "temporal answer"),
        ([dict(TGMCQ, answer="B")], {}, "TG-MCQ answer"),
        ([dict(VQA, answer="a cat")], {}, "no <box>"),
        ([dict(VQA, frame_size=None)], {}, "frame_size"),
        ([dict(TS, key_frames=None)], {}, "key_frames"),
        ([TS], {"config": RewardConfig(max_key_frames=1)}, "max_key_frames"),
        ([TS], {"config": RewardConfig(max_frame_boxes=2)}, "max_frame_boxes"),
    ],
)
def test_bad_inputs_raise(examples, kwargs, match):
    with pytest.raises(ValueError, match=match):
        compute_rewards(["<think>x</think><answer>C</answer>"], examples, **kwargs)


def test_sparse_map_visits_exactly_the_listed_entries():
    # Several chunks, a partial last chunk, and an index length that is no multiple of it.
    rng = np.random.default_rng(0)
    size, count = 1000, 613
    entries = np.sort(rng.choice(size, count, replace=False)).astype(np.int32)
    index = np.zeros(size, np.int32)
    index[:count] = entries
    fn = jax.jit(lambda i, c: scoring.sparse_map(lambda ids: ids * 2.0 + 1.0, i, c, chunk=128))
    want = np.zeros(size)
    want[entries] = entries * 2.0 + 1.0
    np.testing.assert_array_equal(fn(index, np.int32(count)), want)
    np.testing.assert_array_equal(fn(index, np.int32(0)), np.zeros(size))


def test_parity_with_per_sample_oracle():
    """Our path equals the benchmark's per-sample re-implementation of reward_func.py."""
    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "rewards.py"
    spec = importlib.util.spec_from_file_location("rewards_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    completions, examples = bench.make_batch(96, seed=1)
    for gate, p in (("intended", 0.2), ("reference", 0.8)):
        want = bench.oracle_rewards(completions, examples, p, gate)
        got = compute_rewards(completions, examples, p, spatial_gate=gate)
        for term in want:
            np.testing.assert_allclose(got[term], want[term], atol=1e-6, err_msg=f"{gate} {term}")
