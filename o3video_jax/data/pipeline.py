"""grain input pipelines for SFT, RL and evaluation.

  raw records -> ExampleBuilder (decode, preprocess, prompt, tokenize; per element, in grain
  reader threads or worker processes) -> per-process shard -> seeded shuffle -> repeat ->
  [mp_prefetch workers] -> pack into rows + batch (this module's iterator, main process).

The batching iterator reads the example stream in windows of `pack_window` examples, packs
each window into rows (packing.pack, deterministic) and emits `batch_size` rows per batch.
Its state is (grain state at the start of the current window, rows of that window already
emitted, counters as of the window start): `set_state` rewinds the parent to the window
start, re-reads and re-packs the window and drops the emitted rows, so the following batches
are exactly those an uninterrupted run would produce. The state is JSON (orbax-compatible).

Bad examples (`ExampleError`) are skipped and counted by reason; flags (clipped boxes, times
past the video, dropped key frames) are counted. When skipped / seen exceeds
`max_error_fraction` (after `min_examples` examples) the iterator raises `DataErrorBudget`
naming the worst reasons and record ids.

Batches:
  SFTBatch: inputs ModelInputs [B rows, right padded, packed], targets int32[B, L] (next
    token within the same segment, pad elsewhere), loss_mask float32[B, L] (1 where
    targets[b, i] is trained on: the tokenizer's mask of token i + 1).
  RLBatch: P prompts, left padded (last prompt token at L - 1 for `prefill`), with the
    group layout of their P * G completions and the reward records.
  EvalBatch: like RLBatch without groups.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from o3video_jax.data import packing
from o3video_jax.data.examples import Example, ExampleBuilder, ExampleError
from o3video_jax.data.model_inputs import Segment, build_model_inputs
from o3video_jax.models.qwen2_5_vl.config import Qwen25VLConfig
from o3video_jax.models.qwen2_5_vl.inputs import ModelInputs

MODES = ("sft", "rl", "eval")
_MAX_OFFENDERS = 64  # kept in the state for the error message


class DataErrorBudget(RuntimeError):
    """Too many bad examples; the message names the worst reasons and record ids."""


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """batch_size: rows (SFT) or prompts (RL / eval). shard_index / shard_count default to
    jax.process_index() / jax.process_count(). num_workers > 0 adds grain `mp_prefetch`."""

    batch_size: int
    max_seq_len: int
    max_patches: int
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = 1  # None: repeat forever
    shard_index: int | None = None
    shard_count: int | None = None
    read_threads: int = 2
    prefetch: int = 8
    num_workers: int = 0
    worker_buffer_size: int = 2
    pack: bool = True  # SFT only
    pack_strategy: str = "first_fit"
    pack_window: int = 32
    max_segments: int | None = None
    group_size: int = 4  # RL
    drop_remainder: bool = False
    max_error_fraction: float = 0.05
    min_examples: int = 20
    rope_rule: str = "qwen"


@dataclasses.dataclass(frozen=True)
class SFTBatch:
    inputs: ModelInputs
    targets: np.ndarray  # int32[B, L]
    loss_mask: np.ndarray  # float32[B, L]
    record_ids: tuple[tuple[str, ...], ...]  # per row


@dataclasses.dataclass(frozen=True)
class RLBatch:
    inputs: ModelInputs  # [P, L], left padded
    prompt_lengths: np.ndarray  # int32[P]
    valid: np.ndarray  # bool[P]; False for padding prompts of a final partial batch
    group_size: int
    group_index: np.ndarray  # int32[P * G]: prompt of each completion row (jnp.repeat order)
    records: tuple[Mapping[str, Any] | None, ...]  # reward records ("frame_size" included)
    record_ids: tuple[str | None, ...]


@dataclasses.dataclass(frozen=True)
class EvalBatch:
    inputs: ModelInputs
    prompt_lengths: np.ndarray
    valid: np.ndarray
    records: tuple[Mapping[str, Any] | None, ...]
    record_ids: tuple[str | None, ...]


@dataclasses.dataclass(frozen=True)
class _Skipped:
    record_id: str
    reason: str
    detail: str


class _SafeBuild:
    """map_with_index fn: an Example, or a _Skipped marker (never raises ExampleError)."""

    def __init__(self, builder: ExampleBuilder):
        self.builder = builder

    def __call__(self, index: int, raw: Mapping[str, Any]):
        try:
            return self.builder(raw, index)
        except ExampleError as e:
            return _Skipped(e.record_id, e.reason, e.detail)


# ---- counters ------------------------------------------------------------------------------


class DataStats:
    """Counters of the example stream (JSON round-trip via to_state / from_state)."""

    def __init__(self):
        self.seen = 0
        self.skipped: Counter = Counter()
        self.flags: Counter = Counter()
        self.offenders: list[list[str]] = []  # [record_id, reason, detail]
        self.rows = self.tokens = self.patches = 0

    def to_state(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "skipped": dict(self.skipped),
            "flags": dict(self.flags),
            "offenders": [list(o) for o in self.offenders],
            "rows": self.rows,
            "tokens": self.tokens,
            "patches": self.patches,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> DataStats:
        s = cls()
        s.seen, s.rows, s.tokens, s.patches = (
            int(state[k]) for k in ("seen", "rows", "tokens", "patches")
        )
        s.skipped, s.flags = Counter(state["skipped"]), Counter(state["flags"])
        s.offenders = [list(o) for o in state["offenders"]]
        return s

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def efficiency(self, max_seq_len: int, max_patches: int) -> tuple[float, float]:
        """(token, patch) fill of the emitted rows."""
        if not self.rows:
            return 0.0, 0.0
        pe = self.patches / (self.rows * max_patches) if max_patches else 0.0
        return self.tokens / (self.rows * max_seq_len), pe

    def worst_offenders(self) -> str:
        lines = []
        for reason, n in self.skipped.most_common():
            ids = [o[0] for o in self.offenders if o[1] == reason][:8]
            detail = next((o[2] for o in self.offenders if o[1] == reason), "")
            lines.append(f"  {reason}: {n} (e.g. ids {ids}; {detail})")
        return "\n".join(lines)


# ---- batching iterator -------------------------------------------------------------------


class _BatchDataset(grain.IterDataset):
    def __init__(self, parent: grain.IterDataset, batcher: _Batcher):
        super().__init__(parent)
        self._batcher = batcher

    def __iter__(self) -> _BatchIterator:
        return _BatchIterator(self._parent.__iter__(), self._batcher)


class _BatchIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, batcher: _Batcher):
        super().__init__(parent)
        self._b = batcher
        self.stats = DataStats()
        self._window_state = parent.get_state()
        self._window_stats = self.stats.to_state()
        self._rows: list[list[Example]] | None = []
        self._pos = 0

    # state -----------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        # Stream counters as of the window start (re-reading the window re-counts them);
        # emitted-row counters as of now (the skipped rows are not emitted again).
        s = self.stats
        emitted = {"rows": s.rows, "tokens": s.tokens, "patches": s.patches}
        return {
            "parent": self._window_state,
            "pos": self._pos,
            "stats": self._window_stats,
            "emitted": emitted,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._window_state = state["parent"]
        self._window_stats = state["stats"]
        self.stats = DataStats.from_state({**state["stats"], **state["emitted"]})
        self._rows, self._pos = None, int(state["pos"])  # re-read the window lazily

    # rows ------------------------------------------------------------------------------
    def _load_window(self) -> None:
        cfg = self._b.cfg
        self._window_state = self._parent.get_state()
        self._window_stats = self.stats.to_state()
        examples, got_any = [], False
        for _ in range(self._b.window):
            try:
                item = next(self._parent)
            except StopIteration:
                break
            got_any = True
            if isinstance(item, Example) and (
                item.num_tokens > cfg.max_seq_len or item.num_patches > cfg.max_patches
            ):  # the builder's budgets may be looser than the rows'
                item = _Skipped(
                    item.record_id,
                    "over_budget",
                    f"{item.num_tokens} tokens / {item.num_patches} patches exceed the row "
                    f"budget {cfg.max_seq_len} / {cfg.max_patches}",
                )
            self._count(item)
            if isinstance(item, Example):
                examples.append(item)
        if not got_any:
            raise StopIteration
        if self._b.packed:
            sizes = [(e.num_tokens, e.num_patches) for e in examples]
            rows = packing.pack(
                sizes,
                cfg.max_seq_len,
                cfg.max_patches,
                strategy=cfg.pack_strategy,
                max_segments=cfg.max_segments,
            )
            self._rows = [[examples[i] for i in row] for row in rows]
        else:
            self._rows = [[e] for e in examples]
        self._pos = 0

    def _count(self, item) -> None:
        s, cfg = self.stats, self._b.cfg
        s.seen += 1
        if isinstance(item, _Skipped):
            s.skipped[item.reason] += 1
            if len(s.offenders) < _MAX_OFFENDERS:
                s.offenders.append([item.record_id, item.reason, item.detail])
            if s.seen >= cfg.min_examples and s.num_skipped / s.seen > cfg.max_error_fraction:
                raise DataErrorBudget(
                    f"{s.num_skipped} of {s.seen} examples were bad "
                    f"(> max_error_fraction {cfg.max_error_fraction}); worst offenders:\n"
                    + s.worst_offenders()
                )
        else:
            s.flags.update(item.flags)

    def _next_row(self) -> list[Example]:
        if self._rows is None:
            skip = self._pos
            self._load_window()
            self._pos = skip
        while self._pos >= len(self._rows):
            self._load_window()
        row = self._rows[self._pos]
        self._pos += 1
        return row

    def __next__(self):
        rows = []
        while len(rows) < self._b.cfg.batch_size:
            try:
                rows.append(self._next_row())
            except StopIteration:
                break
        if not rows or (len(rows) < self._b.cfg.batch_size and self._b.cfg.drop_remainder):
            raise StopIteration
        self.stats.rows += len(rows)
        self.stats.tokens += sum(e.num_tokens for row in rows for e in row)
        self.stats.patches += sum(e.num_patches for row in rows for e in row)
        return self._b.make_batch(rows)


class _Batcher:
    def __init__(self, mode: str, cfg: PipelineConfig, model_config: Qwen25VLConfig):
        self.mode, self.cfg, self.model_config = mode, cfg, model_config
        self.packed = mode == "sft" and cfg.pack
        self.window = cfg.pack_window if self.packed else cfg.batch_size

    def _inputs(self, rows: list[list[Example]], pad_side: str) -> ModelInputs:
        segs = [[e.segment for e in row] for row in rows]
        segs += [[]] * (self.cfg.batch_size - len(rows))
        return build_model_inputs(
            segs,
            self.model_config,
            max_seq_len=self.cfg.max_seq_len,
            max_patches=self.cfg.max_patches,
            pad_side=pad_side,
            rule=self.cfg.rope_rule,
        )

    def make_batch(self, rows: list[list[Example]]):
        if self.mode == "sft":
            return self._sft(rows)
        b = self.cfg.batch_size
        inputs = self._inputs(rows, "left")
        lengths = np.zeros((b,), np.int32)
        lengths[: len(rows)] = [row[0].num_tokens for row in rows]
        valid = np.arange(b) < len(rows)
        recs = tuple(row[0].reward_record for row in rows) + (None,) * (b - len(rows))
        ids = tuple(row[0].record_id for row in rows) + (None,) * (b - len(rows))
        if self.mode == "eval":
            return EvalBatch(inputs, lengths, valid, recs, ids)
        g = self.cfg.group_size
        return RLBatch(
            inputs, lengths, valid, g, np.repeat(np.arange(b, dtype=np.int32), g), recs, ids
        )

    def _sft(self, rows: list[list[Example]]) -> SFTBatch:
        b, length = self.cfg.batch_size, self.cfg.max_seq_len
        inputs = self._inputs(rows, "right")
        targets = np.full((b, length), self.model_config.padding_id, np.int32)
        mask = np.zeros((b, length), np.float32)
        for r, row in enumerate(rows):
            t, m = sft_targets(
                [e.segment for e in row], [e.loss_mask for e in row], self.model_config.padding_id
            )
            targets[r, : len(t)] = t
            mask[r, : len(m)] = m
        ids = tuple(tuple(e.record_id for e in row) for row in rows)
        return SFTBatch(inputs, targets, mask, ids + ((),) * (b - len(rows)))


def sft_targets(
    segments: Sequence[Segment], token_masks: Sequence[np.ndarray], pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Next-token targets of a packed row: (int32[n], float32[n]) over the concatenated
    segments; position i predicts token i + 1 of the same segment. The last token of every
    segment gets target `pad_id` and mask 0, so no loss crosses a segment boundary."""
    ts, ms = [], []
    for seg, tm in zip(segments, token_masks, strict=True):
        ids = np.asarray(seg.input_ids, np.int32)
        ts.append(np.concatenate([ids[1:], [pad_id]]).astype(np.int32))
        ms.append(np.concatenate([np.asarray(tm, np.float32)[1:], [0.0]]).astype(np.float32))
    if not ts:
        return np.zeros((0,), np.int32), np.zeros((0,), np.float32)
    return np.concatenate(ts), np.concatenate(ms)


def worker_init(worker_index: int, num_workers: int) -> None:
    """Runs first in each grain worker process: stop and preemption belong to the parent.

    `stop.sh` and a VM shutdown signal the run's whole process group. A worker killed by that
    SIGTERM dies mid-write of a queue message: the parent then raises "Worker process was
    terminated unexpectedly" before the agreed save step, or hangs for ever in grain's close
    (reading the half-written message). Ignoring SIGTERM and SIGINT here leaves the parent to
    finish the agreed step, save, and shut the workers down through grain's stop event; the
    worker exits when its parent is gone (so a SIGKILLed run leaves no orphans).
    """
    del worker_index, num_workers
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()

    def exit_with_parent():  # a SIGKILLed parent never sets grain's stop event
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=exit_with_parent, daemon=True, name="exit-with-parent").start()


def _worker_queues(it: grain.DatasetIterator) -> list:
    """The result queues of the grain worker processes under `it` (grain internals; [] if
    this grain version has none by that name)."""
    try:
        from grain._src.python.dataset.transformations.process_prefetch import (
            ProcessPrefetchDatasetIterator,
        )
    except ImportError:
        return []
    out, seen, stack = [], set(), [it]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, ProcessPrefetchDatasetIterator):
            buffer = getattr(o, "_buffer", None)
            if buffer is not None:
                out.append(buffer)
        elif isinstance(o, grain.DatasetIterator):
            stack += [
                v for v in vars(o).values() if isinstance(v, grain.DatasetIterator | list | tuple)
            ]
        elif isinstance(o, list | tuple):
            stack += [v for v in o if isinstance(v, grain.DatasetIterator | list | tuple)]
    return out


def _drain(queues: list, closing: threading.Event) -> None:
    """Reads the workers' queues while grain closes them. grain clears each queue once, then
    waits for the worker; an example the worker finishes after that clearing (examples are
    slow to make, and pickled through a pipe whole: grain moves only bare arrays to shared
    memory) blocks in the full pipe, the worker cannot exit, and grain kills it after 25 s.
    Measured on the tiny CLI run with 2 workers: 27-31 s from SIGTERM to exit without this,
    about 3 s with it (tests/test_preemption.py, the process-group test)."""
    from grain._src.python.dataset.transformations import process_prefetch

    unlink = process_prefetch.shared_memory_array.unlink_shm  # as grain's own queue clearing
    while not closing.is_set():
        for q in queues:
            try:
                unlink(q.get(timeout=0.05))
            except queue.Empty:
                pass
            except Exception:  # noqa: BLE001  closing: nothing left to keep
                pass


def close(it: grain.DatasetIterator, timeout_s: float = 30.0) -> None:
    """Closes a pipeline iterator and its worker processes, in bounded time.

    grain's close reads what its workers left in the queue; a worker that died mid-write (the
    OOM killer, a signal sent to it alone) leaves a half message that blocks that read for
    ever. So the close runs in a thread that is given `timeout_s`, while another one keeps
    reading the workers' queues (see `_drain`; blocked on a half message it holds the queue's
    read lock, so that grain's own non-blocking reads move on), and any grain worker still
    alive after it is killed: a stopping run must never hang here.
    """
    t0 = time.monotonic()
    closing = threading.Event()
    queues = _worker_queues(it)
    if queues:
        threading.Thread(target=_drain, args=(queues, closing), daemon=True).start()
    closer = threading.Thread(target=it.close, daemon=True, name="close-data-iterator")
    closer.start()
    closer.join(timeout_s)
    closing.set()
    if closer.is_alive():
        print(f"data: the iterator did not close within {timeout_s:.0f} s", flush=True)
        # grain also closes its iterators from a multiprocessing exit finalizer, which would
        # block the interpreter's exit on the same half-written message: drop those.
        from multiprocessing import util

        for finalizer in list(util._finalizer_registry.values()):
            callback = getattr(finalizer, "_callback", None)
            if getattr(callback, "__module__", "").startswith("grain."):
                finalizer.cancel()
    for p in multiprocessing.active_children():
        if p.name.startswith("grain-"):
            p.kill()
            p.join(5.0)
    if queues:
        print(f"data: {len(queues)} worker(s) closed in {time.monotonic() - t0:.1f} s", flush=True)


# ---- public constructors ---------------------------------------------------------------------


def make_dataset(
    raw_records: Sequence[Mapping[str, Any]],
    builder: ExampleBuilder,
    model_config: Qwen25VLConfig,
    cfg: PipelineConfig,
    mode: str | None = None,
) -> grain.IterDataset:
    """The grain dataset of batches. `mode` defaults from the builder: sft -> "sft",
    rl -> "rl", mcq -> "eval". `iter(ds)` supports get_state() / set_state()."""
    mode = mode or {"sft": "sft", "rl": "rl", "mcq": "eval"}[builder.config.kind]
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {cfg.batch_size}")
    index, count = cfg.shard_index, cfg.shard_count
    if index is None or count is None:
        import jax

        index, count = jax.process_index(), jax.process_count()
    if not 0 <= index < count:
        raise ValueError(f"shard_index {index} is outside [0, {count})")

    ds = grain.MapDataset.source(list(raw_records)).map_with_index(_SafeBuild(builder))
    ds = ds[index::count]  # before shuffling: each process owns a fixed, disjoint slice
    if cfg.shuffle:
        ds = ds.shuffle(seed=cfg.seed)
    if cfg.num_epochs != 1:
        ds = ds.repeat(cfg.num_epochs)
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.prefetch)
    )
    if cfg.num_workers > 0:
        from absl import flags

        # grain's worker start reads absl flags; outside an absl app (pytest, notebooks)
        # they are unparsed, so take their defaults rather than fail.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=cfg.num_workers, per_worker_buffer_size=cfg.worker_buffer_size
            ),
            worker_init_fn=worker_init,
        )
    return _BatchDataset(it, _Batcher(mode, cfg, model_config))


def sft_dataset(raw_records, builder, model_config, cfg) -> grain.IterDataset:
    return make_dataset(raw_records, builder, model_config, cfg, "sft")


def rl_dataset(raw_records, builder, model_config, cfg) -> grain.IterDataset:
    return make_dataset(raw_records, builder, model_config, cfg, "rl")


def eval_dataset(raw_records, builder, model_config, cfg) -> grain.IterDataset:
    return make_dataset(raw_records, builder, model_config, cfg, "eval")
