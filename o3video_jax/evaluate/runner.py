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

The benchmark is named nowhere here: its reader, media, prompts, records and summary are the
fields of its `spec.Benchmark` in `registry` (docs/extending.md).

Processes evaluate their chunks independently (params replicated or sharded over the
process's own devices); process 0 waits for all, then reads every file and writes the summary
(`summary.md`, `summary.json`) and `report.md` with the first `eval.render_items` items drawn.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
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
from o3video_jax.eval import results as results_lib
from o3video_jax.evaluate import benchmarks, media, prompts, registry, summary
from o3video_jax.evaluate.generate import Generator, OverBudget, Request, request_key
from o3video_jax.evaluate.judge import make_judge
from o3video_jax.evaluate.spec import BatchScorer, Prepared
from o3video_jax.rl import rollouts
from o3video_jax.train.sharding import make_mesh

__all__ = ["evaluate", "items_path", "read_log", "tokenize_prompt", "write_summary"]


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
def tokenize_prompt(tokenizer: Tokenizer, msgs, vision_items) -> tuple[Segment, str]:
    """(the model's prompt segment with expanded vision pads, the rendered chat text)."""
    images = [v.grid_thw for v in vision_items if v.kind == "image"]
    videos = [v.grid_thw for v in vision_items if v.kind == "video"]
    chat = tokenizer.tokenize_chat(msgs, images, videos, add_generation_prompt=True)
    return Segment(chat.input_ids, tuple(vision_items)), chat.text


def _prepare(name, item, ev, think, tokenizer, gen: Generator, seed: int) -> Prepared:
    """Media, prompts and tokenized requests of one item of benchmark `name`."""
    bench = registry.get(name)
    m = bench.media(item, ev)
    ps = bench.prompts(item, m, think)
    texts, reqs = [], []
    for i, p in enumerate(ps):
        n_images = len(m.items) if p.mode == "frames" else 0
        seg, text = tokenize_prompt(tokenizer, prompts.render_messages(p, n_images), m.items)
        gen.check(seg)
        texts.append(text)
        reqs.append(Request(seg, request_key(seed, item["key"], i)))
    return Prepared(item, m, ps, texts, reqs)


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


def _records(name, preps, outputs, ev, think, scorer: BatchScorer | None, judge) -> list[dict]:
    """Records of one chunk's prepared items from their generations (list of G texts each)."""
    return registry.get(name).records(preps, outputs, ev, think, scorer, judge)


# ---- the driver ----------------------------------------------------------------------------
def _sampling(ev, tokenizer: Tokenizer, group: int, max_new: int, greedy: bool = False):
    """The sampler settings of `config.eval` (`rollouts.sampling_config`)."""
    eos = (tokenizer.eos_id, tokenizer.pad_id)
    return rollouts.sampling_config(
        ev, eos, tokenizer.pad_id, greedy=greedy, group_size=group, max_new_tokens=max_new
    )


def _check(config) -> None:
    ev = config.eval
    if ev.benchmark not in registry.names():
        raise ValueError(f"eval.benchmark {ev.benchmark!r} is not one of {registry.names()}")
    if ev.samples < 1:
        raise ValueError(f"eval.samples must be >= 1, got {ev.samples}")
    if ev.samples > 1 and registry.get(ev.benchmark).mcq is None:
        raise ValueError(
            "eval.samples > 1 (test-time scaling) applies to "
            + " / ".join(registry.multiple_choice_names())
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
    bench = registry.get(name)
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
    if scorer is None and ev.vote == "confidence" and ev.think and bench.mcq is not None:
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
    judge = _judge(bench, ev)

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
                recs_bad[str(key)] = bench.failed(entry, e.reason, str(e))
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
                _render(bench, p, recs[p.item["key"]], report_dir)
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


def _judge(bench, ev):
    """The V-STaR "What" judge (`eval.judge_url`) for a judged benchmark, else None."""
    if not bench.judged:
        return None
    return make_judge(ev.judge_url, ev.judge_model, ev.judge_api_key_env)


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
    bench = registry.get(name)
    recs = all_records(workdir, processes)
    ev = config.eval
    # With a judge configured, items finished before it was (no `vqa_score`) are judged here.
    judge = _judge(bench, ev)
    s = summary.summarize(name, recs, judge)
    title = f"{name}{' (think)' if config.eval.think else ''}"
    columns = bench.columns(s)
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


def _render(bench, p: Prepared, rec: dict, out_dir: str) -> None:
    from o3video_jax.eval import animate, visualize

    os.makedirs(out_dir, exist_ok=True)
    text = bench.report_text(rec)
    key = p.item["key"]
    visualize.render_example(
        p.media.frames, p.media.times, text, os.path.join(out_dir, f"{key}.png")
    )
    animate.write_gif(p.media.frames, p.media.times, text, os.path.join(out_dir, f"{key}.gif"))
