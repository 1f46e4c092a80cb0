"""Completion parser: hand-made cases, equality with the original regexes, totality, linearity."""

import dataclasses
import importlib.util
import json
import math
import pathlib
import random
import re
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from o3video_jax.rewards import RewardConfig, compute_rewards, parse_batch, parse_completion
from o3video_jax.rewards.batch import pack
from o3video_jax.rewards.config import TASKS
from o3video_jax.rewards.decimals import decimal_text, parse_decimals
from o3video_jax.rewards.parse import as_box, extract_answer
from o3video_jax.rewards.rouge import lcs_length, rouge_mean_f, rouge_mean_f_batch

# ---------------------------------------------------------------------------------------------
# The original regexes (docs/open_o3_video.md §2/§3), used as the oracle on short inputs where their
# backtracking is harmless.
ANSWER_RE = r"<answer>\s*(.*?)\s*</answer>"
CLAIM_RE = r"<obj>(.*?)</obj>((?:<box>\[.*?\]</box>)+)at<t>(.*?)</t>s"
TIME_RE = r"<t>([\d.]+)</t>s"
SPAN_RE = r"<t>(\d+\.?\d*)</t>s to <t>(\d+\.?\d*)</t>s"
BOX_RE = r"<box>(\[.*?\])</box>"
VQA_RE = r"<obj>(\w+)</obj><box>(\[.*?\])</box>"


def _key(x):
    """Comparable form: nan -> 'nan' (nan != nan), tuples/lists recursively."""
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if isinstance(x, tuple | list):
        return tuple(_key(v) for v in x)
    return x


def _benchmark_module():
    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "rewards.py"
    spec = importlib.util.spec_from_file_location("rewards_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def oracle(text):
    think = re.search(r"<think>(.*?)</think>", text, re.DOTALL)
    inner = think.group(1) if think else ""
    m = re.search(ANSWER_RE, text, re.DOTALL)
    answer = m.group(1).strip() if m else ""
    claims = []
    for m in re.finditer(CLAIM_RE, inner, re.DOTALL):
        try:
            t = float(m.group(3).strip())
            boxes = [json.loads(b) for b in re.findall(r"\[.*?\]", m.group(2))]
        except (ValueError, RecursionError):
            continue
        claims.append((m.group(1).strip(), tuple(as_box(b) for b in boxes), t))
    try:
        times = tuple(float(v) for v in re.findall(TIME_RE, inner))
    except ValueError:
        times = ()
    think_boxes = []
    for s in re.findall(BOX_RE, inner):
        try:
            think_boxes.append(as_box(json.loads(s)))
        except (ValueError, RecursionError):
            pass
    m = re.search(SPAN_RE, answer)
    span = (float(m.group(1)), float(m.group(2))) if m else None
    m = re.search(BOX_RE, answer)
    try:
        answer_box = as_box(json.loads(m.group(1))) if m else None
    except (ValueError, RecursionError):
        answer_box = None
    parts = answer.split("Correct Option:")
    return {
        "think": think.group(1) if think else None,
        "has_answer": bool(re.search(r"<answer>.*?</answer>", text, re.DOTALL)),
        "answer": answer,
        "claims": tuple(claims),
        "times": times,
        "think_boxes": tuple(think_boxes),
        "span": span,
        "answer_box": answer_box,
        "choice": parts[1].strip() if len(parts) > 1 else None,
        "vqa_pair": bool(re.search(VQA_RE, text)),
    }


def ours(text):
    c = parse_completion(text)
    return {
        "think": c.think,
        "has_answer": c.has_answer,
        "answer": c.answer,
        "claims": tuple((cl.name, cl.boxes, cl.time) for cl in c.claims),
        "times": c.times,
        "think_boxes": c.think_boxes,
        "span": c.span,
        "answer_box": c.answer_box,
        "choice": c.choice,
        "vqa_pair": c.vqa_pair,
    }


FRAGMENTS = [
    "<think>", "</think>", "<answer>", "</answer>", "<obj>", "</obj>", "<box>", "</box>",
    "<t>", "</t>", "</t>s", "s", "at", " to ", "</t>s to <t>", "]</box>at<t>", "</obj><box>[",
    "[", "]", "[1,2,3,4]", "[10, 20, 30, 40]", "[1,2,,3]", "[[1,2]", "[NaN,1,2,3]", "[1e999,0,1,1]",
    "1", "2.5", "12.", ".", "1.2.3", "nan", "-3", " ", "\n", "\t", ",", "person", "big dog",
    "Correct Option:", "A", "(B)", "\u0663", "x_1",
]  # fmt: skip
_fragment = st.sampled_from(FRAGMENTS)
_name = st.sampled_from(["man", "big dog", "", "a</obj>b", "x_1", "<t>"])
_box = st.sampled_from(
    ["[1,2,3,4]", "[0, 0, 5.5, 9]", "[1,2,,3]", "[1,\n2,3,4]", "[[1]", "[]", "[1]x]"]
)
_time = st.sampled_from(["2", "2.5", " 3 ", "nan", "1.2.3", "-inf", "", "12.", "\u0663"])
_piece = st.one_of(
    _fragment,
    st.tuples(_name, st.lists(_box, min_size=1, max_size=3), _time).map(
        lambda x: (
            f"<obj>{x[0]}</obj>" + "".join(f"<box>{b}</box>" for b in x[1]) + f"at<t>{x[2]}</t>s"
        )
    ),
    _time.map(lambda t: f"<t>{t}</t>s"),
    st.tuples(_time, _time).map(lambda x: f"<t>{x[0]}</t>s to <t>{x[1]}</t>s"),
    st.tuples(_time, _time).map(lambda x: f"{x[0]}</t>s to <t>{x[1]}</t>s"),
    _box.map(lambda b: f"<box>{b}</box>"),
    st.tuples(_name, _box).map(lambda x: f"<obj>{x[0]}</obj><box>{x[1]}</box>"),
)
_body = st.lists(_piece, max_size=8).map("".join)
# Mostly think/answer-shaped text with pieces of the grammar, sometimes unclosed.
soup = st.one_of(
    st.lists(_fragment, max_size=30).map("".join),
    st.tuples(_body, _body, _body, st.booleans(), st.booleans()).map(
        lambda x: f"{x[0]}<think>{x[1]}{'</think>' * x[3]}<answer>{x[2]}{'</answer>' * x[4]}"
    ),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(soup)
@example("<think><obj>a</obj><box>[1,\n2,3,4]</box>at<t>2</t>s</think>")  # claim, no boxes
@example("<answer>x1</t>s to <t>2</t>s <t>3</t>s to <t>4</t>s</answer>")  # needs the <t>
@example("<think><obj>a<obj>b</obj><box>[1]</box> <box>[2]</box>at<t>1</t>s</t>s</think>")
def test_parser_equals_original_regexes_on_tag_soup(text):
    assert _key(list(ours(text).values())) == _key(list(oracle(text).values()))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.text(max_size=80))
def test_parser_equals_original_regexes_on_arbitrary_text(text):
    assert _key(list(ours(text).values())) == _key(list(oracle(text).values()))


# ---------------------------------------------------------------------------------------------
# Hand-made cases.


def test_answer_is_first_block_stripped():
    assert extract_answer("x<answer> \n A. \t</answer><answer>B</answer>") == "A."
    assert extract_answer("<answer>A") == ""
    assert extract_answer("</answer><answer>B</answer>") == "B"


def test_claims_multi_box_and_skips():
    think = (
        "<think>a <obj>man</obj><box>[1,2,3,4]</box><box>[5, 6, 7, 8]</box>at<t> 2.5 </t>s, "
        "<obj>cup</obj><box>[1,2,,3]</box>at<t>3</t>s, "  # box JSON fails: skipped
        "<obj>dog</obj><box>[0,0,1,1]</box>at<t>1.2.3</t>s, "  # time fails: skipped
        "<obj>cat</obj><box>[1,2,3]</box>at<t>nan</t>s</think>"  # parsed: 3-list, nan time
    )
    claims = parse_completion(think).claims
    assert [c.name for c in claims] == ["man", "cat"]
    assert claims[0].boxes == ((1.0, 2.0, 3.0, 4.0), (5.0, 6.0, 7.0, 8.0))
    assert claims[0].time == 2.5
    assert claims[1].boxes == (None,) and math.isnan(claims[1].time)


def test_claim_name_swallows_like_the_lazy_regex():
    # The lazy name extends past an `</obj>` not followed by a box run, as in the original.
    think = "<think><obj>a</obj> and <obj>b</obj><box>[1,2,3,4]</box>at<t>1</t>s</think>"
    (claim,) = parse_completion(think).claims
    assert claim.name == "a</obj> and <obj>b"


def test_times_all_or_nothing_and_span_forms():
    c = parse_completion("<think><t>1</t>s <t>2.50</t>s <t>3</t> <t>x</t>s</think>")
    assert c.times == (1.0, 2.5)
    assert parse_completion("<think><t>1</t>s <t>1.2.3</t>s</think>").times == ()
    c = parse_completion("<answer>From <t>0.</t>s to <t>1.5</t>s</answer>")
    assert c.span == (0.0, 1.5)
    c = parse_completion("<answer><t>.5</t>s to <t>1</t>s; <t>2</t>s to <t>3</t>s</answer>")
    assert c.span == (2.0, 3.0)  # '.5' does not match \d+\.?\d*, the next candidate does


def test_choice_answer_box_counts_and_vqa_pair():
    c = parse_completion(
        "<think><obj>red cat</obj><box>[1,2,3,4]</box></think>"
        "<answer>From <t>1</t>s to <t>2</t>s.\nCorrect Option: (B) Correct Option: C</answer>"
    )
    assert c.choice == "(B)"
    assert c.tag_counts == (1, 1, 1, 1, 1, 1, 0, 0, 1, 1)
    assert not c.vqa_pair  # `\w+` rejects the space in "red cat"
    c = parse_completion("<answer><obj>cat</obj><box>[1, 2, 3, 4.5]</box></answer>")
    assert c.vqa_pair and c.answer_box == (1.0, 2.0, 3.0, 4.5)
    assert parse_completion("<answer><box>[1,\n2,3,4]</box></answer>").answer_box is None


def test_as_box_rules():
    assert as_box([1, True, "2.5", 3]) == (1.0, 1.0, 2.5, 3.0)  # numpy float conversion
    for bad in ([1, 2, 3], [1, None, 2, 3], [1, [2], 3, 4], [float("inf"), 0, 1, 1], "x"):
        assert as_box(bad) is None


def test_parse_batch_budgets_and_overflow():
    claim = "<obj>a</obj><box>[0,0,1,1]</box><box>[0,0,2,2]</box><box>[0,0,3,3]</box>at<t>1</t>s"
    text = "<think>" + claim * 5 + "<t>9</t>s" * 3 + "</think><answer>x</answer>"
    cfg = RewardConfig(max_claims=2, max_claim_boxes=2, max_times=4)
    b = parse_batch([text, "no tags"], cfg)
    # Over the budgets the arrays grow to the next power of two: nothing is dropped.
    assert b.claim_boxes.shape == (2, 8, 4, 4) and b.times.shape == (2, 8)
    assert b.num_claims.tolist() == [5, 0] and b.claim_mask.sum() == 5
    assert b.claim_box_ok.sum() == 15 and b.times_ok.sum() == 8
    assert b.num_times.tolist() == [8, 0]
    assert not b.claim_box_ok[1].any()
    within = parse_batch([text], RewardConfig(max_claims=8, max_claim_boxes=4, max_times=16))
    assert within.claim_boxes.shape == (1, 8, 4, 4) and within.times.shape == (1, 16)
    bucketed = parse_batch([text], RewardConfig(bucket_shapes=True))
    assert bucketed.claim_boxes.shape == (1, 8, 4, 4) and bucketed.times.shape == (1, 8)


# ---------------------------------------------------------------------------------------------
# The batch parser (tag scan in numpy, canonical-form regexes, bulk number conversion) against
# packing the per-completion parser's results, field by field.

_CONFIGS = (
    RewardConfig(),
    RewardConfig(bucket_shapes=True),
    RewardConfig(max_claims=2, max_claim_boxes=1, max_times=3, max_think_boxes=2),
)


def _assert_same_batch(texts, tasks, config):
    got = parse_batch(texts, config, tasks)
    per_text = tasks if tasks is not None else [None] * len(texts)
    want = pack([parse_completion(t, k) for t, k in zip(texts, per_text, strict=True)], config)
    for field in dataclasses.fields(got):
        a, b = getattr(got, field.name), getattr(want, field.name)
        if isinstance(a, list):
            assert a == b, field.name
        else:
            assert a.dtype == b.dtype and a.shape == b.shape, field.name
            np.testing.assert_array_equal(a, b, err_msg=field.name)


_json_number = st.from_regex(r"-?(0|[1-9][0-9]{0,3})(\.[0-9]{1,3})?", fullmatch=True)
_plain_box = st.tuples(st.lists(_json_number, min_size=4, max_size=4), st.sampled_from([",", ", "]))
_plain_box = _plain_box.map(lambda x: "[" + x[1].join(x[0]) + "]")
_plain_time = st.from_regex(r"[0-9]{1,3}(\.[0-9]{0,2})?|\.[0-9]{1,2}", fullmatch=True)
# Canonical claims and boxes (the batch parser's fast forms) among the grammar's other pieces.
_canonical = st.one_of(
    st.tuples(st.sampled_from(["man", "red cup", ""]), st.lists(_plain_box, min_size=1, max_size=3))
    .map(lambda x: f"<obj>{x[0]}</obj>" + "".join(f"<box>{b}</box>" for b in x[1]))
    .flatmap(lambda c: _plain_time.map(lambda t: f"{c}at<t>{t}</t>s ")),
    _plain_box.map(lambda b: f"the <obj>cat</obj><box>{b}</box> "),
)
_mostly_canonical = st.tuples(
    st.lists(st.one_of(_canonical, _canonical, _piece), max_size=6).map("".join),
    st.one_of(_plain_box.map(lambda b: f"<obj>x</obj><box>{b}</box>"), _body),
).map(lambda x: f"<think>{x[0]}</think><answer>{x[1]}</answer>")


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    st.lists(st.one_of(soup, _mostly_canonical, st.text(max_size=40)), min_size=1, max_size=8),
    st.sampled_from([None, *TASKS]),
    st.sampled_from(range(len(_CONFIGS))),
)
def test_batch_parser_equals_per_completion_parser(texts, task, config):
    tasks = None if task is None else [task] * len(texts)
    _assert_same_batch(texts, tasks, _CONFIGS[config])


def test_batch_parser_equals_per_completion_parser_on_benchmark_batch():
    bench = _benchmark_module()
    texts, examples = bench.make_batch(384, seed=2)
    texts[0] = "\u00e9" + texts[0]  # one non-ASCII completion (tag scan with str methods)
    tasks = [ex["task"] for ex in examples]
    for config in _CONFIGS:
        _assert_same_batch(texts, tasks, config)
    _assert_same_batch(texts[:64], None, _CONFIGS[0])


_PLAIN = st.from_regex(r"-?([0-9]{1,25}(\.[0-9]{0,25})?|\.[0-9]{1,25})", fullmatch=True)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.lists(_PLAIN, max_size=12),
    st.lists(st.one_of(st.none(), st.floats(), st.integers(-(10**30), 10**30).map(float))),
)
def test_decimals_equal_float(numbers, floats):
    values, piece = parse_decimals([" , ".join(numbers), "[]", *map(decimal_text, floats)])
    want = [float(x) for x in numbers] + [
        math.nan if x is None or not math.isfinite(x) else x for x in floats
    ]
    assert len(values) == len(want)
    for got, expected in zip(values.tolist(), want, strict=True):
        assert _key(got) == _key(expected) and math.copysign(1, got) == math.copysign(1, expected)
    assert piece.tolist() == [0] * len(numbers) + list(range(2, 2 + len(floats)))


# ---------------------------------------------------------------------------------------------
# Totality, ranges and linear time on adversarial input.

WEIGHTS = {"ans_acc": 1.0, "format": 2.0, "thk_spatial": 0.5}
EXAMPLES = {
    "temporal-spatial free-form QA": {
        "answer": "a man opens a door",
        "key_frames": [{"time": 1.0, "idx": 0}, {"time": 3.5, "idx": 1}],
        "key_items": {"0": {"man": [[0.1, 0.1, 0.5, 0.9]]}, "1": {"door": [[0, 0, 1, 1]]}},
        "frame_size": [100, 50],
    },
    "visual QA": {
        "answer": "<obj>cat</obj><box>[1, 2, 30, 40]</box>",
        "image_size": [64, 48],
        "frame_size": [28, 28],
    },
    "temporal QA": {"answer": "[1.5, 4]"},
    "temporal QA (MCQ)": {"answer": "A\n[0, 2.5]"},
    "General video QA MCQ": {"answer": "B"},
    "General video QA Free-form": {"answer": "The dog runs."},
}


def _check_ranges(texts):
    texts = list(texts) + [""] * (-len(texts) % 6)  # few batch sizes: few compiles
    for task in TASKS:
        ex = dict(EXAMPLES[task], task=task)
        r = compute_rewards(texts, [ex] * len(texts), 0.2, weights=WEIGHTS)
        for name, values in r.items():
            assert values.dtype == np.float32 and values.shape == (len(texts),)
            assert np.all(np.isfinite(values)), (task, name)
            hi = sum(WEIGHTS.get(k, 1.0) for k in r if k != "total") if name == "total" else 1
            assert np.all((values >= 0) & (values <= hi + 1e-6)), (task, name, values)


@settings(
    max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.lists(st.one_of(soup, st.text(max_size=60)), min_size=1, max_size=6))
def test_rewards_total_finite_and_in_range(texts):
    _check_ranges(texts)


def _adversarial(n, seed=0):
    rng = random.Random(seed)
    pieces = [
        "<think>", "<obj>", "</obj><box>[", "<box>[", "]</box>", "]</box>at<t>", "<t>", "</t>s",
        "</t>s to <t>", "[", "]", "\n", "9" * 50, "nan", "1e999", "<answer>", "  ",
    ]  # fmt: skip
    out = []
    while sum(map(len, out)) < n:
        out.append(rng.choice(pieces))
    return "".join(out)[:n]


ADVERSARIAL = {
    "unclosed_obj": lambda n: "<think>" + "<obj>" * (n // 5),
    "box_runs": lambda n: "<think>" + "<obj>a</obj><box>[1]</box>" * (n // 25),
    "nested_brackets": lambda n: "<think><obj>a</obj><box>" + "[" * n + "]</box>at<t>1</t>s",
    "digit_run": lambda n: "<think><t>" + "1" * n + "</think><answer><t>" + "1" * n,
    "spaces": lambda n: "<answer>" + " " * n + "x",
    "spans": lambda n: "<answer>" + "<t>1</t>s to <t>" * (n // 16),
    "vqa": lambda n: "<obj>a</obj><box>[" * (n // 18),
    "soup": _adversarial,
}


def _cpu_seconds(fn, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_inputs_parse_in_linear_time(name):
    make = ADVERSARIAL[name]
    small, large = make(10_000), make(100_000)
    # The batch parser has a fixed numpy cost of about a millisecond per call.
    for parser, fixed in ((parse_completion, 2e-4), (lambda text: parse_batch([text]), 2e-3)):
        t_small = _cpu_seconds(lambda p=parser: p(small))
        t_large = _cpu_seconds(lambda p=parser: p(large))
        assert t_large < 1.0, f"{name}: {t_large:.3f}s for 100k chars"
        # Linear growth would be 10x; allow noise and a fixed per-call cost.
        assert t_large < 30 * max(t_small, fixed), (name, t_small, t_large)


def test_adversarial_inputs_score_in_range():
    _check_ranges([make(20_000) for make in ADVERSARIAL.values()])


# ---------------------------------------------------------------------------------------------
# In-house ROUGE == rouge_score (tokenizer, Porter stemmer, F-measures).

WORDS = (
    "the a man men running runs ran jumped dog dogs is are café don't x2 3.5 Ride RIDING".split()
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.lists(st.sampled_from(WORDS), max_size=20).map(" ".join),
    st.one_of(st.lists(st.sampled_from(WORDS), max_size=20).map(" ".join), st.text(max_size=30)),
)
def test_rouge_is_bit_identical_to_rouge_score(reference, hypothesis):
    from rouge_score import rouge_scorer

    s = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True).score(
        reference, hypothesis
    )
    expected = (s["rouge1"].fmeasure + s["rouge2"].fmeasure + s["rougeL"].fmeasure) / 3
    assert rouge_mean_f(reference, hypothesis) == expected


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    st.lists(
        st.tuples(
            st.lists(st.sampled_from(WORDS), max_size=20).map(" ".join),
            st.one_of(
                st.lists(st.sampled_from(WORDS), max_size=20).map(" ".join), st.text(max_size=30)
            ),
        ),
        max_size=12,
    )
)
def test_batch_rouge_equals_per_pair_rouge(pairs):
    got = rouge_mean_f_batch([r for r, _ in pairs], [h for _, h in pairs])
    assert got.tolist() == [rouge_mean_f(r, h) for r, h in pairs]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    st.lists(st.sampled_from("abcd"), max_size=70), st.lists(st.sampled_from("abcde"), max_size=70)
)
def test_bit_parallel_lcs_equals_dynamic_programming(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            same = a[i - 1] == b[j - 1]
            table[i][j] = table[i - 1][j - 1] + 1 if same else max(table[i - 1][j], table[i][j - 1])
    masks = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    assert lcs_length(masks, len(a), b) == table[-1][-1]
