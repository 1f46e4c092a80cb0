r"""Data-budget planner: text tokens and vision patches per example, without decoding pixels.

  python -m o3video_jax.data.plan --config experiments/configs/sft_qwen2_5_vl.py \
      --config.data.train_json=/data/json_data/STGR-SFT.json \
      --config.data.media_root=/data/videos --config.data.tokenizer_dir=/ckpt/Qwen2.5-VL-7B \
      [--limit 2000] [--threads 32]

For every record it does what `examples.ExampleBuilder` does, with the pixels left out: probe
the video's frame size, frame count and frame rate from its container (OpenCV's CAP_PROP_*;
a file whose metadata is unusable is scanned with grab(), as `video.read_video` does, and
counted), sample the frames (`video.sample_indices`, the config's fps / frame limits / Open-o3
index rule), resize them (`vision.smart_resize` at the config's frame pixels), lay out the
frames and key frames (`prompts.frame_layout`), render the prompt and target and tokenise them
(`Tokenizer.tokenize_chat` with the image grids). Images are probed from their headers (PIL,
EXIF orientation applied as cv2.imread does). The example's tokens and patches are therefore
those the pipeline builds (tests/test_plan.py checks equality on OpenCV-written videos).

It prints the distribution of tokens and patches per example (percentiles, per task), the
share that fits the config's budgets (`data.max_seq_len` - `rl.max_new_tokens` for GSPO
prompts, `data.max_patches`), and the smallest budgets that admit 99% and 100% of the
examples. Records that cannot be built are counted by reason (`examples.REASONS`: "record",
"decode" for a missing or unreadable video, "image" for a missing image or key frame); a
frame that fails mid-file is only found by decoding, which the planner does not do.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
from PIL import Image

from o3video_jax.data import prompts, records, video, vision
from o3video_jax.data.examples import ExampleConfig, upstream_dirs
from o3video_jax.data.tokenizer import Tokenizer

PERCENTILES = (50, 90, 99, 99.9, 100)
PATCH_MULTIPLE = 4  # ModelInputs.max_patches is a multiple of the 2x2 merge unit
_EXIF_ORIENTATION = 0x0112


@dataclasses.dataclass(frozen=True)
class ExamplePlan:
    """One record's size, or why it cannot be built (`error` = reason, `detail`)."""

    record_id: str
    task: str = ""
    tokens: int = 0
    patches: int = 0
    images: int = 0  # vision items (frames + key frames, or 1 image)
    key_frames: int = 0  # key-frame images in the prompt (dropped ones excluded)
    frame_size: tuple[int, int] | None = None  # (W, H) fed to the model
    scanned: bool = False  # the container's metadata was unusable: frames were counted
    error: str | None = None
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class VideoProbe:
    width: int
    height: int
    frames: int
    fps: float
    scanned: bool


def probe_video(path: str) -> VideoProbe:
    """Frame size, count and rate from the container, by the reader's own rule (`read_video`:
    metadata, else a grab() scan); VideoDecodeError for missing, empty or unreadable files."""
    cap, total, fps, metadata_ok = video._open(path)
    try:
        w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        cap.release()
    if w <= 0 or h <= 0:
        raise video.VideoDecodeError(path, f"no frame size in the container ({w}x{h})")
    return VideoProbe(w, h, total, fps, not metadata_ok)


def probe_image(path: str) -> tuple[int, int]:
    """(H, W) as cv2.imread returns the image (EXIF orientation applied); OSError if the file
    is missing or not an image."""
    with Image.open(path) as img:
        w, h = img.size
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


class Planner:
    """Callable (index, raw record) -> ExamplePlan for one `ExampleConfig` (the config the
    pipeline's builder uses) and tokenizer. Probes are cached per path (thread-safe enough:
    a race only probes a file twice)."""

    def __init__(self, config: ExampleConfig, tokenizer: Tokenizer, merge_size: int = 2):
        if config.video_mode != "frames":
            raise ValueError("the planner follows video_mode='frames' (Open-o3 training)")
        self.config, self.tokenizer, self.merge_size = config, tokenizer, merge_size
        self._videos: dict[str, Any] = {}
        self._files: dict[str, bool] = {}

    def _video(self, path: str) -> VideoProbe:
        if path not in self._videos:
            try:
                self._videos[path] = probe_video(path)
            except video.VideoDecodeError as e:
                self._videos[path] = e
        got = self._videos[path]
        if isinstance(got, Exception):
            raise got
        return got

    def _paths(self, record) -> tuple[str, str]:
        root = self.config.media_root
        if self.config.layout == "upstream":
            media, kfs = upstream_dirs(record)
            return os.path.join(root, media), os.path.join(root, kfs or media)
        return root, root

    def __call__(self, index: int, raw: Mapping[str, Any]) -> ExamplePlan:
        cfg = self.config
        try:
            record = records.parse_stgr(raw, cfg.kind, index)
            if cfg.prompt_split:
                record = dataclasses.replace(record, split=cfg.prompt_split)
            return self._plan(record)
        except records.RecordError as e:
            return ExamplePlan(str(e.record_id), error="record", detail=str(e))

    def _plan(self, record) -> ExamplePlan:
        cfg = self.config
        media_dir, kf_dir = self._paths(record)
        grids, content, frame_size, key_frames, scanned = [], [], None, 0, False
        fail = lambda reason, detail: ExamplePlan(
            record.id, record.task, error=reason, detail=detail
        )
        if record.image_path is not None and record.task == records.VISUAL_QA:
            path = os.path.join(media_dir, record.image_path)
            try:
                h0, w0 = probe_image(path)
            except OSError as e:
                return fail("image", f"image {path!r} is missing or unreadable ({e})")
            h, w = vision.smart_resize(
                h0, w0, min_pixels=cfg.image_min_pixels, max_pixels=cfg.image_max_pixels
            )
            grids, content, frame_size = [(1, h // 14, w // 14)], [{"type": "image"}], (w, h)
        elif record.video_path is not None:
            path = os.path.join(media_dir, record.video_path)
            try:
                v = self._video(path)
            except video.VideoDecodeError as e:
                return fail("decode", f"{e.reason} ({path})")
            scanned = v.scanned
            n = len(
                video.sample_indices(
                    v.frames, v.fps, cfg.fps, cfg.max_frames, cfg.min_frames, True, cfg.sampling
                )
            )
            sample_fps = n / v.frames * v.fps
            h, w = vision.smart_resize(
                v.height, v.width, min_pixels=cfg.frame_min_pixels, max_pixels=cfg.frame_max_pixels
            )
            kfs = record.key_frames
            layout = prompts.record_frame_layout(record, n, sample_fps, cfg.quirks)
            for slot in layout.slots:
                if slot.kind == "key_frame":
                    key_frames += 1
                    kf_path = os.path.join(kf_dir, kfs[slot.index].path)
                    if not self._isfile(kf_path):
                        return fail("image", f"key frame {kf_path!r} is missing")
            grid = (1, h // vision.PATCH_SIZE, w // vision.PATCH_SIZE)
            grids, content, frame_size = [grid] * len(layout.slots), list(layout.content), (w, h)

        target = None
        if cfg.kind == "sft":
            t = prompts.sft_target(record, frame_size or (1, 1), clip=cfg.quirks != "original")
            target = t.text
            record = dataclasses.replace(record, question=t.question)
        messages = prompts.build_messages(record, content, target, cfg.system_prompt)
        tok = self.tokenizer.tokenize_chat(
            messages,
            image_grids=grids,
            add_generation_prompt=cfg.kind != "sft",
            loss_mask=cfg.loss_mask,
            merge_size=self.merge_size,
        )
        return ExamplePlan(
            record.id,
            record.task,
            tokens=len(tok.input_ids),
            patches=sum(t * gh * gw for t, gh, gw in grids),
            images=len(grids),
            key_frames=key_frames,
            frame_size=frame_size,
            scanned=scanned,
        )

    def _isfile(self, path: str) -> bool:
        if path not in self._files:
            self._files[path] = os.path.isfile(path)
        return self._files[path]


def plan_records(
    raws: Sequence[Mapping[str, Any]],
    planner: Callable[[int, Mapping[str, Any]], ExamplePlan],
    threads: int = 16,
) -> list[ExamplePlan]:
    """Plans of `raws` in order; probing runs in a thread pool (I/O and OpenCV release the GIL)."""
    if threads <= 1:
        return [planner(i, r) for i, r in enumerate(raws)]
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(planner, range(len(raws)), raws))


# ---- summary ---------------------------------------------------------------------------------
def budget_for(values: np.ndarray, share: float, multiple: int = 1) -> int:
    """The smallest budget (a multiple of `multiple`) that admits `share` of the values."""
    if not len(values):
        return 0
    k = max(math.ceil(share * len(values) - 1e-9), 1)  # values that must fit
    v = int(np.sort(values)[k - 1])
    return -(-v // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class Summary:
    total: int
    ok: int
    errors: Mapping[str, int]
    scanned: int
    tokens: np.ndarray  # int64[ok]
    patches: np.ndarray
    key_frames: np.ndarray
    tasks: tuple[str, ...]  # per ok example
    max_tokens: int
    max_patches: int

    @property
    def fits(self) -> dict[str, float]:
        n = max(self.ok, 1)
        t, p = self.tokens <= self.max_tokens, self.patches <= self.max_patches
        return {"tokens": t.sum() / n, "patches": p.sum() / n, "both": (t & p).sum() / n}

    def budgets(self, share: float) -> tuple[int, int]:
        """(tokens, patches) budgets admitting `share` of the buildable examples each."""
        return (
            budget_for(self.tokens, share),
            budget_for(self.patches, share, PATCH_MULTIPLE),
        )


def summarize(plans: Sequence[ExamplePlan], max_tokens: int, max_patches: int) -> Summary:
    good = [p for p in plans if p.error is None]
    return Summary(
        total=len(plans),
        ok=len(good),
        errors=dict(collections.Counter(p.error for p in plans if p.error is not None)),
        scanned=sum(p.scanned for p in good),
        tokens=np.array([p.tokens for p in good], np.int64),
        patches=np.array([p.patches for p in good], np.int64),
        key_frames=np.array([p.key_frames for p in good], np.int64),
        tasks=tuple(p.task for p in good),
        max_tokens=max_tokens,
        max_patches=max_patches,
    )


def _pct(values: np.ndarray) -> str:
    if not len(values):
        return "-"
    return " ".join(f"{int(np.percentile(values, q, method='higher')):>7d}" for q in PERCENTILES)


def report(s: Summary, plans: Sequence[ExamplePlan] = ()) -> str:
    head = " ".join(f"{'p' + format(q, 'g'):>7s}" for q in PERCENTILES)
    lines = [
        f"records {s.total}: {s.ok} buildable, errors {dict(s.errors) or 0}"
        + (f", {s.scanned} videos without usable metadata (scanned)" if s.scanned else ""),
        f"{'':28s}{head}",
        f"{'tokens / example':28s}{_pct(s.tokens)}",
        f"{'patches / example':28s}{_pct(s.patches)}",
        f"{'key frames in the prompt':28s}{_pct(s.key_frames)}",
    ]
    tasks = np.array(s.tasks)
    for task in sorted(set(s.tasks)):
        sel = tasks == task
        lines.append(f"  {task} (n={int(sel.sum())})")
        lines.append(f"    {'tokens':24s}{_pct(s.tokens[sel])}")
        lines.append(f"    {'patches':24s}{_pct(s.patches[sel])}")
    f = s.fits
    lines.append(
        f"fits the budgets (tokens <= {s.max_tokens}, patches <= {s.max_patches}): tokens "
        f"{f['tokens']:.2%}, patches {f['patches']:.2%}, both {f['both']:.2%}"
    )
    for share in (0.99, 1.0):
        t, p = s.budgets(share)
        lines.append(f"smallest budgets admitting {share:.0%}: tokens {t}, patches {p}")
    bad = [p for p in plans if p.error is not None][:8]
    for p in bad:
        lines.append(f"  e.g. {p.record_id}: {p.error}: {p.detail}")
    return "\n".join(lines)
