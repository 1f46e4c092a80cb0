"""Questions, answers and grounded reasoning on synthetic videos (see `synthetic`).

Record formats (docs/open_o3_video.md §1.2, §1.3, §5.2):
  temporal-spatial free-form QA: answer plain text; key_frames [{time, path, idx}] with jpgs;
      key_items {str(idx): {name: [[x1, y1, x2, y2]]}} normalised to [0, 1]; SFT
      reasoning_process mentions objects as
      `<obj>red circle</obj><box>[0.10, 0.20, 0.30, 0.40]</box>at<t>2.5</t>s` (STR style).
  temporal QA: SFT answer "From <t>a</t>s to <t>b</t>s"; RL answer "[a, b]".
  General video QA MCQ: question holds "A. ..." option lines; answer is the letter.
  V-STAR: vid, domain, fps, frame_count, width, height, question, answer, temporal_question,
      spatial_question, spatial_question_2, timestamps [s, e], bboxes (whole seconds, pixels).
"""

from __future__ import annotations

import dataclasses
import math
import os

import cv2
import numpy as np

from o3video_jax.data import synthetic_world as synthetic

ST_TASK = "temporal-spatial free-form QA"
TEMPORAL_TASK = "temporal QA"
MCQ_TASK = "General video QA MCQ"
FREE_TASK = "General video QA Free-form"
LETTERS = "ABCD"


@dataclasses.dataclass(frozen=True)
class SyntheticVideo:
    vid: str
    video_path: str  # relative to the dataset root
    spec: synthetic.VideoSpec
    gt: synthetic.GroundTruth
    frames: np.ndarray  # uint8[F, H, W, 3] RGB as rendered (key frames are cut from these)

    def by_appearance(self) -> list[str]:
        return sorted(self.gt.intervals, key=lambda n: self.gt.intervals[n][0])


def fmt_time(t: float) -> str:
    return f"{t:.1f}"  # every time is on the 0.5 s grid


def norm_box(video: SyntheticVideo, name: str, frame: int, digits: int) -> list[float]:
    x1, y1, x2, y2 = video.gt.boxes[name][frame]
    w, h = video.spec.width, video.spec.height
    return [round(float(v), digits) for v in (x1 / w, y1 / h, x2 / w, y2 / h)]


def grounded(video: SyntheticVideo, name: str, frame: int) -> str:
    box = ", ".join(f"{v:.2f}" for v in norm_box(video, name, frame, 2))
    return f"<obj>{name}</obj><box>[{box}]</box>at<t>{fmt_time(frame / video.spec.fps)}</t>s"


def _key_frames(video: SyntheticVideo, picks: list[tuple[str, int]], root: str) -> dict:
    """key_frames / key_items for (object, frame) picks; writes kfs/<vid>_f<frame>.jpg."""
    key_frames, key_items = [], {}
    for frame in sorted({f for _, f in picks}):
        idx = len(key_frames)
        rel = f"kfs/{video.vid}_f{frame:04d}.jpg"
        cv2.imwrite(os.path.join(root, rel), cv2.cvtColor(video.frames[frame], cv2.COLOR_RGB2BGR))
        key_frames.append({"time": frame / video.spec.fps, "path": rel, "idx": idx})
        key_items[str(idx)] = {n: [norm_box(video, n, f, 4)] for n, f in picks if f == frame}
    return {"key_frames": key_frames, "key_items": key_items}


def _direction(video: SyntheticVideo, name: str) -> tuple[str, int, int]:
    """'left to right' or 'right to left', and the first/last visible frames on the grid."""
    vis = np.nonzero(video.gt.visible[name])[0]
    first, last = int(vis[0]), int(vis[-1]) + 1 - video.spec.fps // 2
    b = video.gt.boxes[name]
    way = "left to right" if b[last, 0] > b[first, 0] else "right to left"
    return way, first, last


def _spatial_temporal(video: SyntheticVideo, rng: np.random.Generator, root: str) -> dict:
    """A free-form question whose evidence is a few boxed key frames."""
    if rng.random() < 0.5:
        order = video.by_appearance()
        first = order[0]
        picks = [(n, int(round(video.gt.intervals[n][0] * video.spec.fps))) for n in order[:2]]
        question = "Which object appears first in the video?"
        answer = f"The {first}."
        reasoning = (
            f"The first object to appear is the {grounded(video, *picks[0])}. "
            f"The {grounded(video, *picks[1])} only appears later. "
            f"So the {first} appears first."
        )
    else:
        name = str(rng.choice(sorted(video.gt.intervals)))
        way, f0, f1 = _direction(video, name)
        picks = [(name, f0), (name, f1)]
        side0, side1 = way.split(" to ")
        question = f"In which direction does the {name} move?"
        answer = f"From {way}."
        reasoning = (
            f"The {grounded(video, name, f0)} starts on the {side0}; later the "
            f"{grounded(video, name, f1)} is on the {side1}. It moves from {way}."
        )
    return {
        "question": question,
        "answer": answer,
        "reasoning": reasoning,
        **_key_frames(video, picks, root),
    }


def _temporal(video: SyntheticVideo, rng: np.random.Generator) -> dict:
    name = str(rng.choice(sorted(video.gt.intervals)))
    a, b = video.gt.intervals[name]
    return {
        "question": f"During which time span is the {name} visible in the video?",
        "span": (a, b),
        "answer_sft": f"From <t>{fmt_time(a)}</t>s to <t>{fmt_time(b)}</t>s",
        "answer_rl": f"[{fmt_time(a)}, {fmt_time(b)}]",
        "reasoning": (
            f"The <obj>{name}</obj> comes into view at <t>{fmt_time(a)}</t>s and is gone "
            f"from <t>{fmt_time(b)}</t>s on."
        ),
    }


def _mcq(video: SyntheticVideo, rng: np.random.Generator) -> dict:
    present = video.by_appearance()
    absent_colors = [c for c in synthetic.COLORS if c not in {n.split()[0] for n in present}]
    absent = f"{rng.choice(absent_colors)} {rng.choice(synthetic.SHAPES)}"
    if rng.random() < 0.5:
        stem, correct = "Which object appears first in the video?", present[0]
        reasoning = f"The {present[0]} is the first to appear, before the {present[1]}."
    else:
        stem, correct = "Which of these objects never appears in the video?", absent
        reasoning = f"The video shows the {', the '.join(present)}; there is no {absent}."
    options = list(rng.permutation(present + [absent]))
    letter = LETTERS[options.index(correct)]
    lines = "\n".join(f"{LETTERS[j]}. {o}" for j, o in enumerate(options))
    return {"question": f"{stem}\n{lines}", "answer": letter, "reasoning": reasoning}


def _base(video: SyntheticVideo, kind: str, task: str, source: str) -> dict:
    return {"id": f"{video.vid}-{kind}", "task": task, "source": source}


def sft_records(video: SyntheticVideo, rng: np.random.Generator, root: str) -> list[dict]:
    st, tq, mcq = _spatial_temporal(video, rng, root), _temporal(video, rng), _mcq(video, rng)
    return [
        {
            **_base(video, "sft-st", ST_TASK, "STR_synthetic"),
            "question": st["question"],
            "answer": st["answer"],
            "reasoning_process": st["reasoning"],
            "video_path": video.video_path,
            "key_frames": st["key_frames"],
            "key_items": st["key_items"],
        },
        {
            **_base(video, "sft-tq", TEMPORAL_TASK, "TVG_synthetic"),
            "question": tq["question"],
            "answer": tq["answer_sft"],
            "reasoning_process": tq["reasoning"],
            "video_path": video.video_path,
        },
        {
            **_base(video, "sft-mcq", MCQ_TASK, "videor1_synthetic_mcq"),
            "question": mcq["question"],
            "answer": mcq["answer"],
            "reasoning_process": mcq["reasoning"],
            "video_path": video.video_path,
        },
    ]


def perception_records(video: SyntheticVideo) -> list[dict]:
    """Dense one-hop SFT records: the visible time span of every object of the video (the
    held-out When question, asked about each object instead of one drawn at random)."""
    out = []
    for j, name in enumerate(video.by_appearance()):
        a, b = video.gt.intervals[name]
        out.append(
            {
                **_base(video, f"sft-pc{j}", TEMPORAL_TASK, "TVG_synthetic"),
                "question": f"During which time span is the {name} visible in the video?",
                "answer": f"From <t>{fmt_time(a)}</t>s to <t>{fmt_time(b)}</t>s",
                "reasoning_process": (
                    f"The <obj>{name}</obj> comes into view at <t>{fmt_time(a)}</t>s and is "
                    f"gone from <t>{fmt_time(b)}</t>s on."
                ),
                "video_path": video.video_path,
            }
        )
    return out


def inventory_record(video: SyntheticVideo) -> dict:
    """A dense one-hop SFT record: every object of the video in order of appearance, with its
    visible span (the colours and shapes to read, and when)."""
    order = video.by_appearance()
    spans = "; ".join(
        f"<obj>{n}</obj> from <t>{fmt_time(video.gt.intervals[n][0])}</t>s to "
        f"<t>{fmt_time(video.gt.intervals[n][1])}</t>s"
        for n in order
    )
    return {
        **_base(video, "sft-inv", FREE_TASK, "videor1_synthetic_free"),
        "question": "Which objects appear in the video, in order?",
        "answer": ", then ".join(f"the {n}" for n in order).capitalize() + ".",
        "reasoning_process": spans + ".",
        "video_path": video.video_path,
    }


def rl_records(video: SyntheticVideo, rng: np.random.Generator, root: str) -> list[dict]:
    st, tq, mcq = _spatial_temporal(video, rng, root), _temporal(video, rng), _mcq(video, rng)
    return [
        {
            **_base(video, "rl-st", ST_TASK, "STR_synthetic"),
            "question": st["question"],
            "answer": st["answer"],
            "video_path": video.video_path,
            "key_frames": st["key_frames"],
            "key_items": st["key_items"],
        },
        {
            **_base(video, "rl-tq", TEMPORAL_TASK, "TVG_synthetic"),
            "question": tq["question"],
            "answer": tq["answer_rl"],
            "video_path": video.video_path,
        },
        {
            **_base(video, "rl-mcq", MCQ_TASK, "videor1_synthetic_mcq"),
            "question": mcq["question"],
            "answer": mcq["answer"],
            "video_path": video.video_path,
        },
    ]


def vstar_record(video: SyntheticVideo, rng: np.random.Generator) -> dict:
    """One V-STAR item about a random object; boxes at the whole seconds it is visible."""
    name = str(rng.choice(sorted(video.gt.intervals)))
    a, b = video.gt.intervals[name]
    way, _, _ = _direction(video, name)
    fps = video.spec.fps
    bboxes = []
    for sec in range(math.ceil(a), math.floor(b) + 1):
        frame = sec * fps
        if frame < video.spec.num_frames and video.gt.visible[name][frame]:
            x1, y1, x2, y2 = (float(v) for v in video.gt.boxes[name][frame])
            bboxes.append({"timestamp": sec, "xmin": x1, "ymin": y1, "xmax": x2, "ymax": y2})
    return {
        "vid": video.vid,
        "domain": "synthetic",
        "fps": float(fps),
        "frame_count": video.spec.num_frames,
        "width": video.spec.width,
        "height": video.spec.height,
        "question": f"What does the {name} do in the video?",
        "answer": f"The {name} moves from {way}.",
        "temporal_question": f"When is the {name} visible in the video?",
        "spatial_question": f"Where is the {name} in the video?",
        "spatial_question_2": f"Where is the {name}?",
        "timestamps": [a, b],
        "bboxes": bboxes,
    }
