"""Synthetic spatio-temporal videos with exact ground truth, and STGR / V-STAR records on them.

A video shows a few named coloured shapes ("red circle", "blue square", ...) on a plain
background. Each object is visible on a contiguous run of frames, moves in a straight line and
stays in its own horizontal lane, so objects never overlap and every box is exact: it is the
bounding box of the object's own rendered pixels, [x1, y1, x2, y2] in pixel edges (x2, y2
exclusive). Appear and disappear times sit on a 0.5 s grid (frame rates are even integers),
so every time prints exactly with one decimal.

`generate_dataset` writes the videos, key-frame jpgs and JSON records in the formats of
docs/open_o3_video.md §1.2 (STGR-SFT / STGR-RL) and §5.2 (V-STAR). Paths in the records are
relative to `out_dir`, which is both the media root and the key-frame root. Sources follow
the upstream naming that selects a media root: "STR_synthetic", "TVG_synthetic",
"videor1_synthetic_mcq".
"""

from __future__ import annotations

import json
import os

import cv2
import numpy as np

from o3video_jax import io
from o3video_jax.data import synthetic_questions as sq
from o3video_jax.data.synthetic_world import (  # re-exported: the world's public names
    BACKGROUND,
    COLORS,
    SHAPES,
    GroundTruth,
    ObjectSpec,
    VideoSpec,
    make_video,
    random_spec,
    render,
)

__all__ = [  # the world's names stay importable from here
    "BACKGROUND",
    "COLORS",
    "SHAPES",
    "GroundTruth",
    "ObjectSpec",
    "VideoSpec",
    "make_video",
    "random_spec",
    "render",
    "blank_media",
    "write_corrupt_files",
    "generate_dataset",
]


def blank_media(src_root: str | os.PathLike, dst_root: str | os.PathLike) -> str:
    """A copy of a dataset's media with every frame replaced by the background colour.

    Every videos/*.mp4 keeps its size, frame count and frame rate, every kfs/*.jpg its size,
    so the same records give the same prompts, without anything to see: the frame-blanking
    ablation. Returns `dst_root` (reused when already written).
    """
    src_root, dst_root = os.fspath(src_root), os.fspath(dst_root)
    done = os.path.join(dst_root, ".complete")
    if os.path.exists(done):
        return dst_root
    for sub in ("videos", "kfs"):
        src = os.path.join(src_root, sub)
        if not os.path.isdir(src):
            continue
        os.makedirs(os.path.join(dst_root, sub), exist_ok=True)
        for name in sorted(os.listdir(src)):
            path, out = os.path.join(src, name), os.path.join(dst_root, sub, name)
            if name.endswith(".jpg"):
                h, w = cv2.imread(path).shape[:2]
                blank = np.empty((h, w, 3), np.uint8)
                blank[:] = BACKGROUND
                cv2.imwrite(out, cv2.cvtColor(blank, cv2.COLOR_RGB2BGR))
            elif name.endswith(".mp4"):
                cap = cv2.VideoCapture(path)
                w, h = (
                    int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                    int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                )
                fps, n = cap.get(cv2.CAP_PROP_FPS), int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
                cap.release()
                if w <= 0 or h <= 0 or n <= 0:
                    raise ValueError(f"blank_media: cannot read the geometry of {path}")
                spec = VideoSpec(w, h, int(round(fps)), n, ())
                make_video(out, spec)
    open(done, "w").close()
    return dst_root


def write_corrupt_files(directory: str | os.PathLike) -> dict[str, str]:
    """Bad videos for tests: {"truncated", "random", "empty"} -> path (all named .mp4)."""
    directory = io.require_local(directory, "write_corrupt_files")
    os.makedirs(directory, exist_ok=True)
    obj = ObjectSpec("red", "square", 20, 0, 9, (20.0, 30.0), (60.0, 30.0))
    good = os.path.join(directory, "good_source.mp4")
    make_video(good, VideoSpec(96, 64, 4, 10, (obj,)))
    with open(good, "rb") as f:
        data = f.read()
    os.remove(good)
    paths = {k: os.path.join(directory, f"{k}.mp4") for k in ("truncated", "random", "empty")}
    with open(paths["truncated"], "wb") as f:
        f.write(data[: len(data) * 6 // 10])  # OpenCV's mp4 keeps its index at the end
    with open(paths["random"], "wb") as f:
        f.write(np.random.default_rng(0).bytes(4096))
    open(paths["empty"], "wb").close()
    return paths


def generate_dataset(
    out_dir: str | os.PathLike, n_videos: int, seed: int, *, perception: bool = False, **spec_kw
) -> dict:
    """Write n_videos synthetic videos and their records under `out_dir`.

    Layout: videos/syn_XXXXX.mp4, kfs/syn_XXXXX_fFFFF.jpg (frame FFFF), json_data/STGR-SFT.json,
    json_data/STGR-RL.json, json_data/vstar.json, json_data/perception.json (dense one-hop SFT
    records of every video: `inventory_record` and `perception_records`, for a perception
    stage before SFT), ground_truth.json (per-frame boxes).
    Deterministic for a seed. `spec_kw` goes to `random_spec`. Returns {"sft", "rl",
    "vstar": record lists, "paths": {name: file}}. `perception` adds to the SFT records the
    dense one-hop `perception_records` of every video.
    """
    out_dir = io.require_local(out_dir, "generate_dataset (data.synthetic_runs.prepare uploads)")
    for sub in ("videos", "kfs", "json_data"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    sft, rl, vstar, gts, dense = [], [], [], {}, []
    for i in range(n_videos):
        rng = np.random.default_rng([seed, i])
        spec = random_spec(rng, **spec_kw)
        vid = f"syn_{i:05d}"
        frames, gt = render(spec)
        make_video(os.path.join(out_dir, "videos", vid + ".mp4"), spec)
        video = sq.SyntheticVideo(vid, f"videos/{vid}.mp4", spec, gt, frames)
        sft += sq.sft_records(video, rng, out_dir)
        spans = sq.perception_records(video)
        dense += [sq.inventory_record(video), *spans]
        if perception:
            sft += spans
        rl += sq.rl_records(video, rng, out_dir)
        vstar.append(sq.vstar_record(video, rng))
        gts[vid] = {
            name: {
                "interval": list(gt.intervals[name]),
                "boxes": [
                    b.tolist() if v else None
                    for b, v in zip(gt.boxes[name], gt.visible[name], strict=True)
                ],
            }
            for name in gt.boxes
        }
    paths = {
        "sft": os.path.join(out_dir, "json_data", "STGR-SFT.json"),
        "rl": os.path.join(out_dir, "json_data", "STGR-RL.json"),
        "vstar": os.path.join(out_dir, "json_data", "vstar.json"),
        "ground_truth": os.path.join(out_dir, "ground_truth.json"),
        "perception": os.path.join(out_dir, "json_data", "perception.json"),
    }
    files = (
        ("sft", sft),
        ("rl", rl),
        ("vstar", vstar),
        ("ground_truth", gts),
        ("perception", dense),
    )
    for key, obj in files:
        with open(paths[key], "w") as f:
            json.dump(obj, f, indent=1, allow_nan=False)
    return {"sft": sft, "rl": rl, "vstar": vstar, "perception": dense, "paths": paths}
