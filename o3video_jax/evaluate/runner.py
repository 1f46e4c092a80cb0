"""`evaluate(config, workdir)`: a checkpoint on a benchmark -> per-item JSONL + summary.

Items (file order, after `eval.limit`) are cut into fixed chunks of `eval.chunk_items`; chunk
c belongs to process c % P. A chunk's requests (V-STaR: five per item; the others: one, with
`eval.samples` samples) go through the sampler in fixed-size batches, then (confidence
voting) the relevance requests of all its paths in one more batched pass; then its items'
records are appended to the process's JSONL (`items.jsonl`, or `items.PPP-of-NNN.jsonl` with
several processes) and flushed. That file is the resume log: on restart, a truncated last
line is cut off, finished items are skipped, and a chunk with any unfinished item is
recomputed whole, so its batches (hence greedy outputs, and sampled ones: keys depend on
(seed, item, call) only) are exactly those of an uninterrupted run, and only its missing items
are appended. Every item appears once.

Processes evaluate their chunks independently (params replicated or sharded over the
process's own devices); process 0 waits for all, then reads every file and writes the summary
(`summary.md`, `summary.json`) and `report.md` with the first `eval.render_items` items drawn.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from o3video_jax import io
from o3video_jax.checkpoints import hf
from o3video_jax.data import vision
from o3video_jax.data.model_inputs import Segment, VisionItem
from o3video_jax.data.tokenizer import Tokenizer
from o3video_jax.drivers import experiment
from o3video_jax.eval import letter_parsers, tts
from o3video_jax.eval import results as results_lib
from o3video_jax.evaluate import benchmarks, media, prompts, summary
from o3video_jax.evaluate.generate import Generator, OverBudget, Request, request_key
from o3video_jax.evaluate.judge import make_judge
from o3video_jax.rl import rollouts
from o3video_jax.train.sharding import make_mesh

__all__ = ["evaluate", "items_path", "read_log", "tokenize_prompt", "write_summary"]

# scorer(list of (crops, question)) -> one reply (text or 0/1/2) per entry, batched.
BatchScorer = Callable[[list[tuple[list[np.ndarray], str]]], list[Any]]


# ---- the resume log ------------------------------------------------------------------------
def items_path(workdir: str, process: int = 0, processes: int = 1) -> str:
    name = "items.jsonl" if processes == 1 else f"items.{process:03d}-of-{processes:03d}.jsonl"
    return os.path.join(workdir, name)


def read_log(path: str, repair: bool = False) -> list[dict]:
    """The complete records of a per-item JSONL. A last line without its newline (a kill
    mid-write) is ignored, and with `repair` cut from the file; any other bad line raises."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    end = data.rfind(b"\n") + 1
    if end < len(data) and repair:
        with open(path, "r+b") as f:
            f.truncate(end)
    out = []
    for lineno, line in enumerate(data[:end].decode("utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return out


def _append(path: str, records: Sequence[dict]) -> None:
    lines = "".join(
        json.dumps(results_lib.to_jsonable(r), ensure_ascii=False, allow_nan=False) + "\n"
        for r in records
    )
    with open(path, "a", encoding="utf-8") as f:
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())


# ---- one item's inputs ---------------------------------------------------------------------
@dataclasses.dataclass
class _Prepared:
    item: dict
    media: media.Media
    prompts: list[prompts.Prompt]
    texts: list[str]  # the rendered chats, one per prompt
    requests: list[Request]


# VideoMMMU's image cap if `eval.videommmu_image="capped"`: the max_pixels upstream gives the
# processor it uses only for the chat template (eval/models/model_vllm.py).
CAPPED_IMAGE_PIXELS = 854 * 480


def _second_per_grid(ev) -> float | None:
    """None: 2 / sample fps ("sampled"); 1.0: what upstream's vLLM used ("upstream": frames
    handed over without fps, so the processor's default fps 2.0 set 1.0 s per grid)."""
    mode = ev.get("second_per_grid", "upstream")
    if mode not in ("upstream", "sampled"):
        raise ValueError(f"eval.second_per_grid must be 'upstream' or 'sampled', got {mode!r}")
    return 1.0 if mode == "upstream" else None


def _videommmu_image_max_pixels(ev) -> int:
    mode = ev.get("videommmu_image", "upstream")
    if mode not in ("upstream", "capped"):
        raise ValueError(f"eval.videommmu_image must be 'upstream' or 'capped', got {mode!r}")
    return ev.image_max_pixels if mode == "upstream" else CAPPED_IMAGE_PIXELS


def _load_media(name: str, item: dict, ev) -> media.Media:
    if name == "vstar":
        return media.vstar_frames(
            item["video"],
            max_frames=ev.max_frames,
            min_pixels=ev.image_min_pixels,
            max_pixels=ev.image_max_pixels,
        )
    if name == "tvg":
        return media.frames_media(
            item["video"],
            max_frames=ev.max_frames,
            min_pixels=ev.video_min_pixels,
            max_pixels=ev.video_max_pixels,
        )
    m = media.native_video(
        item["video"],
        max_frames=ev.max_frames,
        min_pixels=ev.video_min_pixels,
        max_pixels=ev.video_max_pixels,
        second_per_grid=_second_per_grid(ev),
    )
    if item.get("image_bytes") is not None:  # VideoMMMU Adaptation: the video, then the image
        img = media.decode_image(
            item["image_bytes"],
            min_pixels=ev.image_min_pixels,
            max_pixels=_videommmu_image_max_pixels(ev),
        )
        m = dataclasses.replace(m, items=m.items + (img,))
    return m


def _prompts(name: str, item: dict, m: media.Media, think: bool) -> list[prompts.Prompt]:
    if name == "vstar":
        return prompts.vstar_prompts(item, m.times, think)
    if name == "tvg":
        return [prompts.tvg_prompt(item, m.times, m.sample_fps, len(m.frames))]
    build = {
        "videomme": prompts.videomme_prompt,
        "worldsense": prompts.worldsense_prompt,
        "videommmu": prompts.videommmu_prompt,
    }[name]
    return [build(item, think)]


def tokenize_prompt(tokenizer: Tokenizer, msgs, vision_items) -> tuple[Segment, str]:
    """(the model's prompt segment with expanded vision pads, the rendered chat text)."""
    images = [v.grid_thw for v in vision_items if v.kind == "image"]
    videos = [v.grid_thw for v in vision_items if v.kind == "video"]
    chat = tokenizer.tokenize_chat(msgs, images, videos, add_generation_prompt=True)
    return Segment(chat.input_ids, tuple(vision_items)), chat.text


def _prepare(name, item, ev, think, tokenizer, gen: Generator, seed: int) -> _Prepared:
    m = _load_media(name, item, ev)
    ps = _prompts(name, item, m, think)
    texts, reqs = [], []
    for i, p in enumerate(ps):
        n_images = len(m.items) if p.mode == "frames" else 0
        seg, text = tokenize_prompt(tokenizer, prompts.render_messages(p, n_images), m.items)
        gen.check(seg)
        texts.append(text)
        reqs.append(Request(seg, request_key(seed, item["key"], i)))
    return _Prepared(item, m, ps, texts, reqs)


# ---- relevance scoring (confidence voting, §5.4) --------------------------------------------
def model_scorer(tokenizer: Tokenizer, gen: Generator) -> BatchScorer:
    """The policy model rates each path's crops 0/1/2, all paths of a chunk in one batched
    pass; a request over the budgets gets an empty reply (relevance -1 -> weight 0.2)."""

    def score(entries: list[tuple[list[np.ndarray], str]]) -> list[Any]:
        reqs, where = [], []
        for j, (crops, question) in enumerate(entries):
            items = []
            for c in crops:
                h, w = c.shape[:2]
                pv, grid = vision.preprocess_image(c, h * w, h * w)
                items.append(VisionItem(pv, tuple(int(x) for x in grid), "image"))
            msgs = prompts.relevance_messages(question, len(crops))
            seg, _ = tokenize_prompt(tokenizer, msgs, items)
            try:
                gen.check(seg)
            except OverBudget:
                continue
            reqs.append(Request(seg, np.zeros((2,), np.uint32)))
            where.append(j)
        replies: list[Any] = [""] * len(entries)
        for j, texts in zip(where, gen(reqs) if reqs else [], strict=True):
            replies[j] = texts[0]
        return replies

    return score


class _Collect:
    """A per-path scorer for `tts.vote`: records the crops (first pass) or replays replies."""

    def __init__(self, replies: Sequence[Any] | None = None):
        self.calls: list[list[np.ndarray]] = []
        self.replies = replies

    def __call__(self, crops, question):
        self.calls.append(crops)
        return 0 if self.replies is None else self.replies[len(self.calls) - 1]


def _letter_parser(name: str, item: dict, letters: str, ev):
    """The non-think letter parser: upstream's per-benchmark substring search ("upstream",
    default) or `mcq.extract_letter` ("ours": word-bounded, no letter inside a word)."""
    mode = ev.get("letter_parser", "upstream")
    if mode not in letter_parsers.LETTER_PARSERS:
        raise ValueError(f"eval.letter_parser must be one of {letter_parsers.LETTER_PARSERS}")
    if mode == "ours":
        return None
    options = item.get("candidates" if name == "worldsense" else "options") or ()
    return functools.partial(
        letter_parsers.upstream_letter, benchmark=name, options=list(options), letters=letters
    )


def _scorer_question(name: str, item: dict) -> str:
    """The question the relevance scorer sees, per upstream's test scripts: WorldSense wraps it
    as "Question: ...\n" (so the rubric reads "Question: Question: ..."), VideoMMMU letters
    the options, VideoMME joins them as given."""
    if name == "worldsense":
        return "Question: {}\n".format(item["question"] + "\n" + "\n".join(item["candidates"]))
    if name == "videommmu":
        return item["question"] + "\n" + prompts._lettered(item["options"])
    return item["question"] + "\n" + "\n".join(item["options"])


def _records(name, preps, outputs, ev, think, scorer: BatchScorer | None, judge) -> list[dict]:
    """Records of one chunk's prepared items from their generations (list of G texts each)."""
    recs: list[dict] = []
    if name == "vstar":
        for p, outs in zip(preps, outputs, strict=True):
            by_call = {pr.call: o[0] for pr, o in zip(p.prompts, outs, strict=True)}
            texts = {pr.call: t for pr, t in zip(p.prompts, p.texts, strict=True)}
            recs.append(
                summary.vstar_record(
                    p.item, by_call, texts, p.media.times, p.media.size, think, judge
                )
            )
        return recs
    if name == "tvg":
        return [
            summary.tvg_record(p.item, p.texts[0], o[0][0])
            for p, o in zip(preps, outputs, strict=True)
        ]
    mode = ev.vote
    votes, firsts = [], []
    for p, outs in zip(preps, outputs, strict=True):
        completions = outs[0]
        if p.item.get("question_type", "multiple-choice") != "multiple-choice":
            votes.append(None)
            firsts.append(None)
            continue
        letters = summary.mcq_letters(name, p.item)
        col = _Collect()
        kw = dict(mode=mode, letters=letters, think_mode=think, frames=p.media.frames,
                  fps=p.media.sample_fps, question=_scorer_question(name, p.item),
                  parse_letter=_letter_parser(name, p.item, letters, ev))  # fmt: skip
        tts.vote(completions, scorer=col, **kw)
        votes.append((completions, kw))
        firsts.append(col.calls)
    entries = [
        (crops, v[1]["question"])
        for v, calls in zip(votes, firsts, strict=True)
        if v is not None
        for crops in calls
    ]
    replies = scorer(entries) if entries and scorer is not None else []
    pos = 0
    for p, outs, v, calls in zip(preps, outputs, votes, firsts, strict=True):
        if v is None:
            recs.append(summary.mcq_record(p.item, name, p.texts[0], outs[0], None))
            continue
        mine = list(replies[pos : pos + len(calls)])
        pos += len(calls)
        result = tts.vote(v[0], scorer=_Collect(mine), **v[1])
        recs.append(summary.mcq_record(p.item, name, p.texts[0], v[0], result, mine))
    return recs


# ---- the driver ----------------------------------------------------------------------------
def _sampling(ev, tokenizer: Tokenizer, group: int, max_new: int, greedy: bool = False):
    """The sampler settings of `config.eval` (`rollouts.sampling_config`)."""
    eos = (tokenizer.eos_id, tokenizer.pad_id)
    return rollouts.sampling_config(
        ev, eos, tokenizer.pad_id, greedy=greedy, group_size=group, max_new_tokens=max_new
    )


def _check(config) -> None:
    ev = config.eval
    if ev.benchmark not in benchmarks.BENCHMARKS:
        raise ValueError(f"eval.benchmark {ev.benchmark!r} is not one of {benchmarks.BENCHMARKS}")
    if ev.samples < 1:
        raise ValueError(f"eval.samples must be >= 1, got {ev.samples}")
    if ev.samples > 1 and ev.benchmark not in summary.CATEGORIES:
        raise ValueError(
            "eval.samples > 1 (test-time scaling) applies to videomme / worldsense / videommmu"
        )
    if ev.samples > 1 and ev.temperature == 0:
        raise ValueError(
            "eval.samples > 1 with eval.temperature 0 gives N identical greedy paths (the "
            "reference yaml's setting); set --config.eval.temperature (e.g. 1.0)"
        )
    if ev.vote not in ("majority", "confidence"):
        raise ValueError(f"eval.vote must be 'majority' or 'confidence', got {ev.vote!r}")
    if not config.model.hf_checkpoint:
        raise ValueError("--config.model.hf_checkpoint is required (an HF Qwen2.5-VL directory)")


def evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    relevance_scorer: BatchScorer | None = None,
    stop_after_chunks: int | None = None,
) -> dict | None:
    """Runs (or resumes) the evaluation; returns the summary on process 0 (None elsewhere).

    relevance_scorer: replaces the model's own relevance ratings (tests, external raters).
    stop_after_chunks: return after this many computed chunks (tests of resume).
    """
    _check(config)
    ev, name = config.eval, config.eval.benchmark
    # The per-item log is appended line by line (the resume log), which object stores cannot
    # do: evaluate into a local or mounted folder and copy it to the bucket afterwards.
    io.require_local(workdir, "the evaluation workdir (its items.jsonl is an append log)")
    os.makedirs(workdir, exist_ok=True)
    pid, nproc = jax.process_index(), jax.process_count()
    loaded = benchmarks.read_benchmark(name, ev.data, ev.media_root, ev.limit)
    entries = sorted(
        [(int(it["key"]), it) for it in loaded.items] + [(int(b.key), b) for b in loaded.bad],
        key=lambda e: e[0],
    )
    k = ev.chunk_items or ev.batch_size
    chunks = [entries[i : i + k] for i in range(0, len(entries), k)]
    mine = [c for i, c in enumerate(chunks) if i % nproc == pid]

    log = items_path(workdir, pid, nproc)
    done = {r["key"] for r in read_log(log, repair=True)}

    tok_dir = config.data.tokenizer_dir or config.model.hf_checkpoint
    tokenizer = Tokenizer.from_dir(tok_dir)
    devices = jax.local_devices() if nproc > 1 else None
    mesh = make_mesh(dict(config.mesh), devices, allow_fallback=config.sharding.mesh_fallback)
    rules = [tuple(r) for r in config.sharding.rules]
    _, params = hf.load(
        config.model.hf_checkpoint, jnp.dtype(config.model.param_dtype), mesh=mesh, rules=rules,
        progress=False, scan_layers=bool(config.model.get("scan_layers", False)),
    )  # fmt: skip
    mc = experiment.model_config(config)  # the checkpoint's config with model.dtype/remat/attention
    sampler_mesh = mesh if nproc == 1 else None  # processes run independently (module doc)
    max_new = ev.max_new_tokens
    gen = Generator(
        mc, params, tokenizer, _sampling(ev, tokenizer, ev.samples, max_new),
        batch_size=ev.batch_size, buckets=ev.prompt_buckets, max_patches=ev.max_patches,
        patch_buckets=list(ev.get("patch_buckets", [])), mesh=sampler_mesh, rules=rules,
    )  # fmt: skip
    scorer = relevance_scorer
    if scorer is None and ev.vote == "confidence" and ev.think and name in summary.CATEGORIES:
        # "greedy" (default) or "generation": upstream rates with the generation's sampling
        # parameters (the yaml's temperature 0.0, i.e. greedy, unless changed for TTS)
        mode = ev.get("relevance_sampling", "greedy")
        if mode not in ("greedy", "generation"):
            raise ValueError(f"eval.relevance_sampling must be greedy|generation, got {mode!r}")
        rel = Generator(
            mc, params, tokenizer,
            _sampling(ev, tokenizer, 1, ev.relevance_max_new_tokens, greedy=mode == "greedy"),
            batch_size=ev.batch_size, buckets=ev.prompt_buckets, max_patches=ev.max_patches,
            patch_buckets=list(ev.get("patch_buckets", [])), mesh=sampler_mesh, rules=rules,
        )  # fmt: skip
        scorer = model_scorer(tokenizer, rel)
    judge = (
        make_judge(ev.judge_url, ev.judge_model, ev.judge_api_key_env) if name == "vstar" else None
    )

    total = sum(len(c) for c in mine)
    bar = tqdm.tqdm(
        total=total,
        initial=sum(1 for c in mine for key, _ in c if str(key) in done),
        unit="item",
        desc=f"{name}",
        disable=not config.log.progress or pid != 0,
        dynamic_ncols=True,
    )
    computed = 0
    report_dir = os.path.join(workdir, "report")
    for chunk in mine:
        todo = [str(key) for key, _ in chunk if str(key) not in done]
        if not todo:
            continue
        preps, recs_bad = [], {}
        for key, entry in chunk:
            if isinstance(entry, benchmarks.BadItem):
                recs_bad[str(key)] = _bad_record(entry)
                continue
            try:
                preps.append(_prepare(name, entry, ev, ev.think, tokenizer, gen, config.seed))
            except OverBudget as e:  # scored as a failure inside n (upstream scores every item)
                recs_bad[str(key)] = summary.failed_record(name, entry, e.reason, str(e))
            except media.MediaError as e:
                recs_bad[str(key)] = _bad_record(
                    benchmarks.BadItem(entry["key"], entry["id"], e.reason, str(e))
                )
        flat = [r for p in preps for r in p.requests]
        texts = gen(flat) if flat else []
        outputs, pos = [], 0
        for p in preps:
            outputs.append(texts[pos : pos + len(p.requests)])
            pos += len(p.requests)
        recs = {r["key"]: r for r in _records(name, preps, outputs, ev, ev.think, scorer, judge)}
        recs.update(recs_bad)
        new = [recs[key] for key in (str(k2) for k2, _ in chunk) if key in todo]
        _append(log, new)
        for p in preps:
            if int(p.item["key"]) < ev.render_items:
                _render(name, p, recs[p.item["key"]], report_dir)
        done.update(todo)
        bar.update(len(todo))
        computed += 1
        if stop_after_chunks is not None and computed >= stop_after_chunks:
            bar.close()
            return None
    bar.close()
    if nproc > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("o3video_jax.evaluate: items written")
    if pid != 0:
        return None
    return write_summary(config, workdir, nproc)


def _bad_record(b: benchmarks.BadItem) -> dict:
    return {"key": b.key, "id": b.id, "status": "bad", "reason": b.reason, "detail": b.detail}


def all_records(workdir: str, processes: int) -> list[dict]:
    recs = []
    for p in range(processes):
        recs += read_log(items_path(workdir, p, processes))
    return sorted(recs, key=lambda r: int(r["key"]))


def write_summary(config, workdir: str, processes: int = 1) -> dict:
    """Summary of every process's records -> summary.md / summary.json / report.md."""
    name = config.eval.benchmark
    recs = all_records(workdir, processes)
    ev = config.eval
    # With a judge configured, items finished before it was (no `vqa_score`) are judged here.
    judge = (
        make_judge(ev.judge_url, ev.judge_model, ev.judge_api_key_env) if name == "vstar" else None
    )
    s = summary.summarize(name, recs, judge)
    title = f"{name}{' (think)' if config.eval.think else ''}"
    columns = summary.table_columns(
        "vstar_exact_match" if s.get("what_scoring") in ("exact_match", "mixed") else name
    )
    results_lib.write_summary(workdir, "summary", s, columns, echo=True)
    bad, failed = s["bad"], s.get("failed", [])
    if bad:
        print(
            f"{len(bad)} bad item(s): " + ", ".join(f"{b['key']} ({b['reason']})" for b in bad[:20])
        )
    if failed:
        print(
            f"{len(failed)} item(s) scored as failures (inside n): "
            + ", ".join(f"{b['key']} ({b['reason']})" for b in failed[:20])
        )
    if s.get("what_note"):
        print(s["what_note"])
    report = [f"# {title}: {len(recs) - len(bad)} items, {len(bad)} bad", ""]
    if s.get("what_note"):
        report += [s["what_note"], ""]
    report.append(results_lib.summary_table(s, columns))
    pngs = sorted(
        (f for f in os.listdir(os.path.join(workdir, "report")) if f.endswith(".png")),
        key=lambda f: int(f.split(".")[0]),
    ) if os.path.isdir(os.path.join(workdir, "report")) else []  # fmt: skip
    for f in pngs:
        report += ["", f"## item {f.split('.')[0]}", "", f"![item {f}](report/{f})"]
    with open(os.path.join(workdir, "report.md"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(report) + "\n")
    return s


def _render(name: str, p: _Prepared, rec: dict, out_dir: str) -> None:
    from o3video_jax.eval import animate, visualize

    os.makedirs(out_dir, exist_ok=True)
    if name == "vstar":
        text = rec["answer_vqa_raw_output"]
    elif name == "tvg":
        text = rec["output"]
    else:
        letters = rec.get("path_letters") or []
        pick = letters.index(rec["pred"]) if rec.get("pred") in letters else 0
        text = rec["outputs"][pick]
    key = p.item["key"]
    visualize.render_example(
        p.media.frames, p.media.times, text, os.path.join(out_dir, f"{key}.png")
    )
    animate.write_gif(p.media.frames, p.media.times, text, os.path.join(out_dir, f"{key}.gif"))
