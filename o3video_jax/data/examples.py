"""Host-side transform of one record into a model-ready example.

raw dict -> typed record (records.py) -> decoded media (video.read_video / cv2 images) ->
preprocessed pixels (vision.py) -> prompt (prompts.py) -> tokens + loss mask (tokenizer.py)
-> `Example` (a `Segment` of model_inputs.py plus what the trainer and the rewards need).

Every failure raises `ExampleError` with a `reason` from REASONS so a pipeline can skip and
count it: "record" (malformed record), "decode" (video missing/empty/corrupt or a sampled
frame undecodable), "image" (image or key frame missing/unreadable), "over_budget" (tokens or
patches above the row budgets).

Videos are fed as in Open-o3 training by default (`video_mode="frames"`): frames resized
once to the frame pixel budget and passed as separate images in the `Frame j at t s` layout
(docs/open_o3_video.md §1.5). `video_mode="video"` feeds one native video item with
`second_per_grid` = 2 / sample_fps (the VideoMME-style evaluation path, §5.1/§5.3).
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from o3video_jax import io
from o3video_jax.data import prompts, records, vision
from o3video_jax.data.model_inputs import Segment, VisionItem
from o3video_jax.data.tokenizer import Tokenizer
from o3video_jax.data.video import VideoDecodeError, read_video

REASONS = ("record", "decode", "image", "over_budget")
KEY_FRAME_DROPPED = "key_frame_dropped"
KINDS = ("sft", "rl", "mcq")


class ExampleError(Exception):
    """An example that cannot be built; `reason` is one of REASONS."""

    def __init__(self, record_id: str, reason: str, detail: str):
        self.record_id, self.reason, self.detail = record_id, reason, detail
        super().__init__(f"example {record_id!r} skipped ({reason}): {detail}")


@dataclasses.dataclass(frozen=True)
class ExampleConfig:
    """How records become examples. kind: "sft" | "rl" (STGR records) | "mcq" (benchmark).

    layout: "flat" (every path relative to media_root) or "upstream" (media_root is
    DATA_ROOT/videos with the folder table of docs/open_o3_video.md §1.1).
    Pixel budgets default to Open-o3's: images <= 256 tokens, frames ~128 tokens (§1.4).
    """

    kind: str = "sft"
    media_root: str = "."
    layout: str = "flat"
    video_mode: str = "frames"
    quirks: str = "original"
    loss_mask: str = "assistant"
    think: bool = False  # mcq prompts: ask for <think>/<answer>
    fps: float = 2.0
    max_frames: int = 16
    min_frames: int = 4
    sampling: str = "o3"
    image_min_pixels: int = vision.IMAGE_MIN_PIXELS
    image_max_pixels: int = vision.O3_IMAGE_MAX_PIXELS
    frame_min_pixels: int = 128 * 28 * 28
    frame_max_pixels: int = vision.O3_FRAME_MAX_PIXELS
    resample: str = "pil"
    max_seq_len: int = 16384
    max_patches: int = 65536
    # "" renders each record under its own split's prompt template; "rl" renders SFT records
    # (reasoning targets) under the RL template (system prompt, user text, frame labels):
    # upstream SFT and RL prompts differ, a large model bridges that, a tiny one does not.
    prompt_split: str = ""
    # None: the Open-o3 per-task system prompts; a string replaces them for every task (a
    # model trained from scratch gains nothing from ~350 tokens of instructions per row).
    system_prompt: str | None = None

    def __post_init__(self):
        for name, allowed in (
            ("kind", KINDS),
            ("prompt_split", ("", "sft", "rl")),
            ("layout", ("flat", "upstream")),
            ("video_mode", ("frames", "video")),
            ("quirks", prompts.QUIRKS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"ExampleConfig.{name}={getattr(self, name)!r} not in {allowed}")


@dataclasses.dataclass(frozen=True)
class Example:
    """segment: tokens + vision items; loss_mask: float32[n] per token (SFT; zeros for prompts);
    frame_size: (W, H) of the images/frames fed to the model (None for text-only);
    reward_record: the record as a dict plus "frame_size" (what rewards read);
    flags: counts of records.BOX_CLIPPED / TIME_BEYOND_VIDEO / KEY_FRAME_DROPPED."""

    record_id: str
    segment: Segment
    loss_mask: np.ndarray
    frame_size: tuple[int, int] | None
    duration: float | None
    reward_record: Mapping[str, Any]
    flags: Mapping[str, int]

    @property
    def num_tokens(self) -> int:
        return len(self.segment.input_ids)

    @property
    def num_patches(self) -> int:
        return sum(v.num_patches for v in self.segment.vision)


def upstream_dirs(record: records.STGRRecord) -> tuple[str, str | None]:
    """(media folder, key-frame folder) under DATA_ROOT/videos, as upstream picks them (§1.1)."""
    src, task = record.source, record.task
    stgr = "stgr/plm" if "STR_plm" in src else "stgr/temporal_grounding"
    if record.split == "sft":
        if task == records.TEMPORAL_SPATIAL:
            stgr = "stgr/plm" if src == "STR_plm_rdcap" else "stgr/temporal_grounding"
            return f"{stgr}/videos", f"{stgr}/kfs"
        return {
            records.VISUAL_QA: "treevgr",
            records.TEMPORAL_QA: "tvg_r1",
            records.GENERAL_MCQ: "videor1",
            records.GENERAL_FREE_FORM: "videor1",
        }[task], None
    if src == "videoespresso_train_video":
        return "videoespresso/videos", "videoespresso/kfs"
    if src == "timerft":
        return "timerft", None
    if src == "gqa":
        return "gqa", None
    if "STR" in src:
        return f"{stgr}/videos", f"{stgr}/kfs"
    if "TVG" in src:
        return "tvg_r1", None
    if "videor1" in src:
        return "videor1", None
    raise records.RecordError(record.id, "source", f"no media folder for source {src!r}")


def _read_rgb(path: str, rid: str, what: str) -> np.ndarray:
    try:
        local = io.local_file(path)  # OpenCV reads local files only: gs:// via a cached copy
    except OSError:
        local = None
    bgr = cv2.imread(local, cv2.IMREAD_COLOR) if local and os.path.isfile(local) else None
    if bgr is None:
        raise ExampleError(rid, "image", f"{what} {path!r} is missing or unreadable")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class ExampleBuilder:
    """Callable raw record dict -> Example (picklable: safe in grain worker processes)."""

    def __init__(self, config: ExampleConfig, tokenizer: Tokenizer, merge_size: int = 2):
        self.config, self.tokenizer, self.merge_size = config, tokenizer, merge_size

    def __call__(self, raw: Mapping[str, Any], index: int | None = None) -> Example:
        cfg = self.config
        try:
            if cfg.kind == "mcq":
                record = records.parse_mcq(raw, index)
            else:
                record = records.parse_stgr(raw, cfg.kind, index)
                if cfg.prompt_split:
                    record = dataclasses.replace(record, split=cfg.prompt_split)
        except records.RecordError as e:
            raise ExampleError(str(e.record_id), "record", str(e)) from e
        try:
            return self._build(record)
        except records.RecordError as e:
            raise ExampleError(record.id, "record", str(e)) from e

    # ---- media -----------------------------------------------------------------------------
    def _paths(self, record) -> tuple[str, str]:
        root = self.config.media_root
        if self.config.layout == "upstream" and isinstance(record, records.STGRRecord):
            media, kfs = upstream_dirs(record)
            return os.path.join(root, media), os.path.join(root, kfs or media)
        return root, root

    def _image(self, path: str, rid: str) -> tuple[VisionItem, tuple[int, int]]:
        rgb = _read_rgb(path, rid, "image")
        cfg = self.config
        pv, grid = vision.preprocess_image(
            rgb, cfg.image_min_pixels, cfg.image_max_pixels, cfg.resample
        )
        size = (int(grid[2]) * vision.PATCH_SIZE, int(grid[1]) * vision.PATCH_SIZE)
        return VisionItem(pv, tuple(grid), "image"), size

    def _video(self, record, media_dir: str, kf_dir: str, flags: Counter):
        """-> (vision items, user vision content, frame size (W, H), duration)."""
        cfg = self.config
        path = os.path.join(media_dir, record.video_path)
        try:
            clip = read_video(path, cfg.fps, cfg.max_frames, cfg.min_frames, sampling=cfg.sampling)
        except VideoDecodeError as e:
            raise ExampleError(record.id, "decode", e.reason + f" ({path})") from e
        if clip.skipped:
            raise ExampleError(record.id, "decode", f"{clip.skipped} sampled frames undecodable")
        h, w = vision.smart_resize(
            *clip.frames.shape[1:3],
            min_pixels=cfg.frame_min_pixels,
            max_pixels=cfg.frame_max_pixels,
        )
        frames = [vision.resize(f, h, w, cfg.resample) for f in clip.frames]
        if cfg.video_mode == "video":
            pv, grid = vision.preprocess_video(np.stack(frames), h * w, h * w, cfg.resample)
            spg = vision.second_per_grid(clip.sample_fps)
            return (
                [VisionItem(pv, tuple(grid), "video", spg)],
                [{"type": "video"}],
                (w, h),
                clip.duration,
            )
        key_frames = getattr(record, "key_frames", ())
        layout = prompts.record_frame_layout(record, len(frames), clip.sample_fps, cfg.quirks)
        flags[KEY_FRAME_DROPPED] += len(layout.dropped_key_frames)
        items = []
        for slot in layout.slots:
            if slot.kind == "frame":
                img = frames[slot.index]
            else:
                kf_path = os.path.join(kf_dir, key_frames[slot.index].path)
                img = vision.resize(_read_rgb(kf_path, record.id, "key frame"), h, w, cfg.resample)
            pv, grid = vision.preprocess_image(img, h * w, h * w, cfg.resample)
            items.append(VisionItem(pv, tuple(grid), "image"))
        return items, list(layout.content), (w, h), clip.duration

    # ---- assembly --------------------------------------------------------------------------
    def _build(self, record) -> Example:
        cfg = self.config
        flags: Counter = Counter()
        media_dir, kf_dir = self._paths(record)
        duration = None
        is_image = record.image_path is not None and (
            cfg.kind == "mcq" or record.task == records.VISUAL_QA
        )
        if is_image:
            item, frame_size = self._image(os.path.join(media_dir, record.image_path), record.id)
            items, content = [item], [{"type": "image"}]
        elif record.video_path is not None:
            items, content, frame_size, duration = self._video(record, media_dir, kf_dir, flags)
        else:
            items, content, frame_size = [], [], None

        if cfg.kind == "mcq":
            messages = prompts.mcq_messages(record, content, think=cfg.think)
            reward_record = dataclasses.asdict(record)
        else:
            target = None
            if cfg.kind == "sft":
                t = prompts.sft_target(record, frame_size or (1, 1), clip=cfg.quirks != "original")
                flags[records.BOX_CLIPPED] += t.num_clipped
                target = t.text
                # upstream rewrites boxes in the whole rendered chat, the question included
                record = dataclasses.replace(record, question=t.question)
            messages = prompts.build_messages(record, content, target, cfg.system_prompt)
            gt = records.ground_truth(record, frame_size or (1, 1), duration)
            flags.update(gt.flags)
            reward_record = dict(record.to_dict(), frame_size=list(frame_size or (0, 0)))

        tok = self.tokenizer.tokenize_chat(
            messages,
            image_grids=[v.grid_thw for v in items if v.kind == "image"],
            video_grids=[v.grid_thw for v in items if v.kind == "video"],
            add_generation_prompt=cfg.kind != "sft",
            loss_mask=cfg.loss_mask,
            merge_size=self.merge_size,
        )
        loss_mask = tok.loss_mask if cfg.kind == "sft" else np.zeros_like(tok.loss_mask)
        example = Example(
            record_id=record.id,
            segment=Segment(tok.input_ids, tuple(items)),
            loss_mask=loss_mask,
            frame_size=frame_size,
            duration=duration,
            reward_record=reward_record,
            flags=dict(+flags),
        )
        if example.num_tokens > cfg.max_seq_len or example.num_patches > cfg.max_patches:
            raise ExampleError(
                record.id,
                "over_budget",
                f"{example.num_tokens} tokens / {example.num_patches} patches exceed "
                f"{cfg.max_seq_len} / {cfg.max_patches}",
            )
        return example
