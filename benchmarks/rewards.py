"""Rewards benchmark: `o3video_jax.rewards.compute_rewards` vs a per-sample pure-Python oracle.

The oracle below re-implements the seven reward functions of Open-o3 Video's `reward_func.py`
(docs/open_o3_video.md §3) the way the original computes them: one completion at a time, with the original
regular expressions, `json`, `ast.literal_eval`, numpy IoUs and a fresh `rouge_score` scorer per
free-form answer. Two deliberate differences, shared with our path: the task is read per sample
(the original reads element 0 of the batch), and the spatial gate is selectable.

It generates 4,096 deterministic completions (the six tasks in STGR-RL proportions; correct,
wrong and malformed),
checks that both paths agree to 1e-6 on every term and on the total for both spatial gates,
and prints throughput in completions per CPU-second of this process (all threads; the box may
be shared), for fixed array budgets (one compile per run) and for bucketed ones.

  python benchmarks/rewards.py [--n 4096] [--seed 0] [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import re
import time

import numpy as np
from rouge_score import rouge_scorer

try:
    from benchmarks import stats
except ImportError:  # run as a script: benchmarks/ is on sys.path
    import stats

TS, VQA, TQA, TGMCQ = (
    "temporal-spatial free-form QA",
    "visual QA",
    "temporal QA",
    "temporal QA (MCQ)",
)
GMCQ, GFREE = "General video QA MCQ", "General video QA Free-form"
NAMES = (
    "ans_acc",
    "ans_tiou",
    "ans_viou",
    "thk_temporal_point",
    "thk_temporal_segment",
    "thk_spatial",
    "format",
)

# ----------------------------------------------------------------------------------------------
# Oracle: per-sample, original regexes.

ANSWER_RE = r"<answer>\s*(.*?)\s*</answer>"
SPAN_RE = r"<t>(\d+\.?\d*)</t>s to <t>(\d+\.?\d*)</t>s"
BOX_RE = r"<box>(\[.*?\])</box>"
TIME_RE = r"<t>([\d.]+)</t>s"
CLAIM_RE = r"<obj>(.*?)</obj>((?:<box>\[.*?\]</box>)+)at<t>(.*?)</t>s"


def _answer(text):
    m = re.search(ANSWER_RE, text, re.DOTALL)
    return m.group(1).strip() if m else ""


def _iou(gt, pred):
    try:
        if not (isinstance(pred, list) and len(pred) == 4):
            return 0.0
        a = np.array(gt, dtype=float)
        b = np.array(pred, dtype=float)
    except (ValueError, TypeError, IndexError):
        return 0.0
    xa, ya = max(a[0], b[0]), max(a[1], b[1])
    xb, yb = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, xb - xa) * max(0, yb - ya)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _to_resized(box, size, refined):
    return [
        box[0] * refined[0] / size[0],
        box[1] * refined[1] / size[1],
        box[2] * refined[0] / size[0],
        box[3] * refined[1] / size[1],
    ]


def _letter_ok(pred, gt):
    gt = gt.strip()
    return 1.0 if pred.strip() in (gt, gt + ".", "(" + gt + ")", "[" + gt + "]") else 0.0


def oracle_ans_acc(text, ex):
    out = _answer(text)
    task = ex["task"]
    if task == TGMCQ:
        try:
            return _letter_ok(out.split("Correct Option:")[1], ex["answer"].split("\n")[0])
        except IndexError:
            return 0.0
    if task == GMCQ:
        return _letter_ok(out, _answer(f"<answer>{ex['answer']}</answer>"))
    if task in (TS, GFREE):
        scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
        s = scorer.score(_answer(f"<answer>{ex['answer']}</answer>"), out)
        mean = (s["rouge1"].fmeasure + s["rouge2"].fmeasure + s["rougeL"].fmeasure) / 3
        return max(0.0, min(1.0, mean))
    return 0.0


def _gt_span(ex):
    text = ex["answer"] if ex["task"] == TQA else ex["answer"].split("\n")[1]
    return ast.literal_eval(text)


def oracle_ans_tiou(text, ex):
    if ex["task"] not in (TQA, TGMCQ):
        return 0.0
    gs, ge = _gt_span(ex)
    m = re.search(SPAN_RE, _answer(text))
    if not m:
        return 0.0
    s, e = float(m.group(1)), float(m.group(2))
    if e < s:
        return 0.0
    inter = max(0, min(e, ge) - max(s, gs))
    union = max(e, ge) - min(s, gs)
    return inter / union if union != 0 else 0


def oracle_ans_viou(text, ex):
    if ex["task"] != VQA:
        return 0.0
    try:
        gt = json.loads(re.search(BOX_RE, f"<answer>{ex['answer']}</answer>").group(1))
        m = re.search(BOX_RE, _answer(text))
        if not m:
            return 0.0
        pred = json.loads(m.group(1))
        return _iou(_to_resized(gt, ex["image_size"], ex["frame_size"]), pred)
    except Exception:  # the original's catch-all: any failure scores 0
        return 0.0


def oracle_format(text, ex):
    think = re.search(r"<think>(.*?)</think>", text, re.DOTALL)
    if not (think and re.search(r"<answer>.*?</answer>", text, re.DOTALL)):
        return 0.0
    if text.count("<think>") != text.count("</think>"):
        return 0.0
    if text.count("<answer>") != text.count("</answer>"):
        return 0.0
    inner = think.group(1)
    for tag in ("obj", "t", "box"):
        if inner.count(f"<{tag}>") != inner.count(f"</{tag}>"):
            return 0.0
    st = inner.count("<obj>") > 0 and inner.count("<t>") > 0 and inner.count("<box>") > 0
    if ex["task"] in (TQA, TGMCQ):
        st = inner.count("<t>") >= 2
    if ex["task"] == VQA and re.search(r"<obj>(\w+)</obj><box>(\[.*?\])</box>", text):
        st = True
    return 1.0 if st or "General video QA" in ex["task"] else 0.5


def _think_times(inner):
    try:
        return [float(m) for m in re.findall(TIME_RE, inner)]
    except ValueError:
        return []


def oracle_segment(text, ex):
    think = re.search(r"<think>(.*?)</think>", text, re.DOTALL)
    if not think or ex["task"] not in (TQA, TGMCQ):
        return 0.0
    gs, ge = _gt_span(ex)
    times = _think_times(think.group(1))
    if not times:
        return 0.0
    return sum(1.0 for t in times if gs <= t <= ge) / len(times)


def oracle_point(text, ex, step_fraction):
    think = re.search(r"<think>(.*?)</think>", text, re.DOTALL)
    if not think or ex["task"] != TS:
        return 0.0
    times = _think_times(think.group(1))
    if not times:
        return 0.0
    sigma = 4 * (1 - step_fraction) if step_fraction < 3 / 4 else 1
    gts = [f["time"] for f in ex["key_frames"]]
    total = 0.0
    for t in times:
        d = min(abs(t - g) for g in gts)
        total += np.exp(-(d**2) / (2 * sigma**2))
    return total / len(times)


def _claims(inner):
    claims = []
    for m in re.finditer(CLAIM_RE, inner, re.DOTALL):
        try:
            t = float(m.group(3).strip())
            boxes = [json.loads(b) for b in re.findall(r"\[.*?\]", m.group(2))]
        except (json.JSONDecodeError, ValueError, IndexError):
            continue
        claims.append((t, boxes))
    return claims


def oracle_spatial(text, ex, gate):
    think = re.search(r"<think>(.*?)</think>", text, re.DOTALL)
    if not think or not re.search(r"<answer>(.*?)</answer>", text, re.DOTALL):
        return 0.0
    if ex["task"] == VQA:
        gt = json.loads(re.search(BOX_RE, ex["answer"]).group(1))
        preds = []
        for s in re.findall(BOX_RE, think.group(1)):
            try:
                preds.append(json.loads(s))
            except ValueError:
                pass
        if not preds:
            return 0.0
        gt = _to_resized(gt, ex["image_size"], ex["frame_size"])
        return max([0.0] + [_iou(gt, p) for p in preds])
    if ex["task"] != TS:
        return 0.0
    claims = _claims(think.group(1))
    if not claims:
        return 0.0
    w, h = ex["frame_size"]
    total = 0.0
    for t, boxes in claims:
        best, best_diff = -1, float("inf")
        for frame in ex["key_frames"]:
            g = frame["time"]
            passes = (g - t < 1.0) if gate == "reference" else (abs(g - t) < 1.0)
            if passes and abs(g - t) < best_diff:
                best, best_diff = g, abs(g - t)
        if best == -1:
            continue
        frame = next(f for f in ex["key_frames"] if f["time"] == best)
        score = 0.0
        for gt_boxes in ex["key_items"][str(frame["idx"])].values():
            if not boxes:
                continue  # the original's IndexError on claim_boxes[0]
            per_gt = []
            for b in gt_boxes:
                gt = [b[0] * w, b[1] * h, b[2] * w, b[3] * h]
                per_gt.append(max(_iou(gt, c) for c in boxes))
            if per_gt:
                score = max(score, sum(per_gt) / len(per_gt))
        total += score
    return total / len(claims)


def oracle_rewards(completions, examples, step_fraction, gate):
    rows = []
    for text, ex in zip(completions, examples, strict=True):
        rows.append(
            [
                oracle_ans_acc(text, ex),
                oracle_ans_tiou(text, ex),
                oracle_ans_viou(text, ex),
                oracle_point(text, ex, step_fraction),
                oracle_segment(text, ex),
                oracle_spatial(text, ex, gate),
                oracle_format(text, ex),
            ]
        )
    values = np.array(rows, dtype=np.float64).reshape(-1, len(NAMES))
    out = {name: values[:, i] for i, name in enumerate(NAMES)}
    out["total"] = values.sum(1)
    return out


# ----------------------------------------------------------------------------------------------
# Deterministic synthetic batch.

WORDS = (
    "the a man woman person dog cat ball table chair red blue green small large walks runs "
    "jumps holds picks throws opens closes sits stands near behind under left right kitchen "
    "street park car door window then after before while slowly quickly"
).split()
OBJECTS = ("person", "dog", "ball", "cup", "car", "red shirt", "table", "hand")


def _sentence(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def _box(rng, w, h):
    x1, y1 = rng.randrange(0, w - 20), rng.randrange(0, h - 20)
    return [x1, y1, rng.randrange(x1 + 5, w), rng.randrange(y1 + 5, h)]


def _fmt_t(rng, t):
    return rng.choice([f"{t:.1f}", f"{t:.2f}", f"{int(t)}", f"{t:.1f}"])


def _example(rng, task):
    w, h = rng.choice([(420, 224), (448, 252), (336, 336), (644, 364)])
    ex = {"task": task, "frame_size": [w, h]}
    if task == TS:
        dur = rng.uniform(20, 120)
        times = sorted(
            round(rng.uniform(0, dur), rng.choice([0, 1, 2])) for _ in range(rng.randint(1, 5))
        )
        ex["key_frames"] = [{"time": t, "idx": i, "path": f"{i}.jpg"} for i, t in enumerate(times)]
        ex["key_items"] = {
            str(i): {
                rng.choice(OBJECTS) + str(j): [
                    [round(v, 3) for v in _norm_box(rng)] for _ in range(rng.choice([1, 1, 1, 2]))
                ]
                for j in range(rng.randint(1, 3))
            }
            for i in range(len(times))
        }
        ex["answer"] = _sentence(rng, rng.randint(4, 20))
    elif task == VQA:
        w0, h0 = rng.choice([(640, 480), (500, 375), (1024, 768)])
        ex["image_size"] = [w0, h0]
        ex["answer"] = f"<obj>{rng.choice(OBJECTS)}</obj><box>{_box(rng, w0, h0)}</box>"
    elif task in (TQA, TGMCQ):
        s = round(rng.uniform(0, 60), 1)
        span = f"[{s}, {round(s + rng.uniform(2, 30), 1)}]"
        ex["answer"] = span if task == TQA else f"{rng.choice('ABCD')}\n{span}"
    elif task == GMCQ:
        ex["answer"] = rng.choice("ABCD")
    else:
        ex["answer"] = _sentence(rng, rng.randint(3, 25))
    return ex


def _norm_box(rng):
    x1, y1 = rng.uniform(0, 0.8), rng.uniform(0, 0.8)
    return [x1, y1, rng.uniform(x1 + 0.02, 1.0), rng.uniform(y1 + 0.02, 1.0)]


def _near(rng, t, spread):
    return max(0.0, t + rng.gauss(0, spread))


def _claim(rng, ex, good):
    w, h = ex["frame_size"]
    frame = rng.choice(ex["key_frames"])
    t = _near(rng, frame["time"], 0.5 if good else 4.0)
    objs = list(ex["key_items"][str(frame["idx"])].values())
    boxes = []
    for _ in range(rng.choice([1, 1, 1, 2])):
        if good:
            b = rng.choice(objs)[0]
            jit = lambda v, s: round(v * s + rng.gauss(0, 6))  # noqa: E731
            boxes.append([jit(b[0], w), jit(b[1], h), jit(b[2], w), jit(b[3], h)])
        else:
            boxes.append(_box(rng, w, h))
    box_text = "".join(
        f"<box>{json.dumps(b, separators=(',', rng.choice([',', ', '])))}</box>" for b in boxes
    )
    return f"<obj>{rng.choice(OBJECTS)}</obj>{box_text}at<t>{_fmt_t(rng, t)}</t>s"


def _think(rng, ex, good):
    task, parts = ex["task"], []
    for _ in range(rng.randint(2, 7)):
        parts.append(_sentence(rng, rng.randint(6, 20)))
        if task == TS:
            parts.append(_claim(rng, ex, good or rng.random() < 0.3))
        elif task in (TQA, TGMCQ):
            gs, ge = _gt_span(ex)
            t = rng.uniform(gs, ge) if good else rng.uniform(0, ge + 20)
            parts.append(f"at <t>{_fmt_t(rng, t)}</t>s")
        elif task == VQA:
            w, h = ex["frame_size"]
            gt = json.loads(re.search(BOX_RE, ex["answer"]).group(1))
            b = [round(v) for v in _to_resized(gt, ex["image_size"], ex["frame_size"])]
            if not good:
                b = _box(rng, w, h)
            parts.append(f"the <obj>{rng.choice(OBJECTS)}</obj><box>{b}</box>")
        elif rng.random() < 0.5:  # General tasks sometimes ground their reasoning
            parts.append(
                f"<obj>{rng.choice(OBJECTS)}</obj><box>[1, 2, 30, 40]</box>at<t>{rng.randint(0, 60)}</t>s"
            )
    return " ".join(parts)


def _answer_text(rng, ex, good):
    task = ex["task"]
    if task in (TS, GFREE):
        return ex["answer"] if good and rng.random() < 0.3 else _sentence(rng, rng.randint(2, 20))
    if task == VQA:
        gt = json.loads(re.search(BOX_RE, ex["answer"]).group(1))
        b = [round(v) for v in _to_resized(gt, ex["image_size"], ex["frame_size"])]
        w, h = ex["frame_size"]
        return f"<obj>{rng.choice(OBJECTS)}</obj><box>{b if good else _box(rng, w, h)}</box>"
    letter = ex["answer"].split("\n")[0]
    if not good:
        letter = rng.choice("ABCD")
    letter = rng.choice([letter, letter + ".", f"({letter})", f"[{letter}]", f"{letter}) text"])
    if task == GMCQ:
        return letter
    gs, ge = _gt_span(ex)
    s, e = (
        (gs + rng.gauss(0, 2), ge + rng.gauss(0, 2))
        if good
        else (rng.uniform(0, 50), rng.uniform(0, 80))
    )
    span = f"From <t>{_fmt_t(rng, max(s, 0))}</t>s to <t>{_fmt_t(rng, max(e, 0))}</t>s"
    return span if task == TQA else f"{span}.\nCorrect Option: {letter}"


MALFORMATIONS = (
    lambda t: t.replace("</think>", "", 1),
    lambda t: t.replace("<answer>", "", 1),
    lambda t: t + "\n<answer>again",
    lambda t: t.replace("</obj>", "", 1),
    lambda t: t.replace("</t>s", "</t>", 1),
    lambda t: t.replace("<box>[", "<box>[\n", 1),
    lambda t: t.replace("]</box>", "</box>", 1),
    lambda t: t.replace("<t>", "<t>nan", 1),
    lambda t: t.replace("</think>", " <t>1.2.3</t>s</think>", 1),
    lambda t: t.replace("<answer>", "<answer>\n  ", 1),
    lambda t: t.replace("<think>", "<think><t>", 1),
    lambda t: t.replace("Correct Option:", "Correct Option: B Correct Option:", 1),
    lambda t: t[: len(t) * 2 // 3],
)


# Task mix of STGR-RL (docs/open_o3_video.md §1.2): record counts per task.
TASK_MIX = (TS, VQA, TQA, TGMCQ, GMCQ, GFREE)
TASK_WEIGHTS = (12047, 5000, 2280, 2904, 13000, 2000)


def make_batch(n=4096, seed=0, group=4):
    """n completions and their examples: groups of `group` completions share one record."""
    rng = random.Random(seed)
    completions, examples = [], []
    while len(completions) < n:
        ex = _example(rng, rng.choices(TASK_MIX, weights=TASK_WEIGHTS)[0])
        for _ in range(group):
            good = rng.random() < 0.5
            text = f"<think>{_think(rng, ex, good)}</think>\n<answer>{_answer_text(rng, ex, good)}</answer>"
            if rng.random() < 0.25:
                text = rng.choice(MALFORMATIONS)(text)
            completions.append(text)
            examples.append(ex)
    return completions[:n], examples[:n]


# ----------------------------------------------------------------------------------------------


def _timed(fn):
    """(result, CPU seconds of this process: all threads, robust to other load on the box)."""
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def bench(
    repeats: int = 5, quick: bool = False, n: int = 4096, seed: int = 0, step_fraction: float = 0.3
) -> stats.Result:
    """Each repeat, per spatial gate: the oracle, then ours with fixed and bucketed shapes;
    every run's values are checked against the oracle (SystemExit on a mismatch)."""
    from o3video_jax.rewards import RewardConfig, compute_rewards

    if quick:
        n = min(n, 1024)
    completions, examples = make_batch(n, seed)
    n = len(completions)
    chars = sum(map(len, completions)) / n
    result = stats.Result(
        title="Rewards: batched parser + jitted scoring vs a per-sample Python oracle",
        setup=(
            f"{n} completions in the STGR-RL task mix (mean {chars:.0f} chars, a quarter "
            f"malformed), step_fraction {step_fraction}; completions per CPU-second of this "
            "process; each repeat runs the oracle then ours (compiled beforehand)."
        ),
    )
    cases = [(g, sh) for g in ("intended", "reference") for sh in ("fixed", "bucketed")]
    runs = {}
    for gate, shapes in cases:
        cfg = RewardConfig(bucket_shapes=shapes == "bucketed")
        runs[gate, shapes] = lambda g=gate, c=cfg: compute_rewards(  # noqa: E731
            completions, examples, step_fraction, spatial_gate=g, config=c
        )
        _, first_s = _timed(runs[gate, shapes])  # includes the compile
        result.facts[f"first call incl. compile s ({gate}, {shapes})"] = f"{first_s:.2f}"
    worst_all = 0.0
    for _ in range(repeats):
        for gate in ("intended", "reference"):
            oracle, ref_s = _timed(
                lambda g=gate: oracle_rewards(completions, examples, step_fraction, g)
            )
            result.add(f"oracle completions/s ({gate} gate)", n / ref_s)
            for shapes in ("fixed", "bucketed"):
                ours, ours_s = _timed(runs[gate, shapes])
                worst = max(float(np.max(np.abs(ours[k] - oracle[k]))) for k in oracle)
                if not worst <= 1e-6:
                    bad = {k: int(np.sum(np.abs(ours[k] - oracle[k]) > 1e-6)) for k in ours}
                    raise SystemExit(f"{gate}/{shapes}: mismatch {worst:.3g}; rows: {bad}")
                worst_all = max(worst_all, worst)
                result.add(f"ours completions/s ({gate} gate, {shapes} shapes)", n / ours_s)
                result.add(f"speed-up ({gate} gate, {shapes} shapes) (x)", ref_s / ours_s)
    result.facts["max abs difference to the oracle, all terms"] = f"{worst_all:.1e}"
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step_fraction", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(stats.machine())
    load = stats.load_average()
    result = bench(args.repeats, args.quick, args.n, args.seed, args.step_fraction)
    print(stats.table(result))
    print(f"load average before: {load}; after: {stats.load_average()}")
    completions, examples = make_batch(min(args.n, 1024) if args.quick else args.n, args.seed)
    oracle = {g: oracle_rewards(completions, examples, args.step_fraction, g) for g in
              ("intended", "reference")}  # fmt: skip
    means = ", ".join(f"{k}={v.mean():.3f}" for k, v in oracle["intended"].items())
    print(f"mean rewards (intended gate): {means}")
    differ = int(np.sum(oracle["intended"]["thk_spatial"] != oracle["reference"]["thk_spatial"]))
    print(f"completions whose thk_spatial differs between the gates: {differ}")


if __name__ == "__main__":
    main()
