"""Small benchmark files in each benchmark's real format, tiny videos, and a tiny random
checkpoint in HF layout (with its tokenizer), for the evaluate / infer tests."""

from __future__ import annotations

import csv
import json
import os

import cv2
import jax
import numpy as np

from o3video_jax.checkpoints import hf
from o3video_jax.data import prompts
from o3video_jax.data.tokenizer import make_tiny_tokenizer
from o3video_jax.models.qwen2_5_vl import Qwen25VL, Qwen25VLConfig
from o3video_jax.models.qwen2_5_vl.inputs import init_inputs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_video(path: str, seconds: float = 3.0, fps: int = 4, size=(64, 48), seed: int = 0):
    """A small mp4 of moving coloured squares (decodable by cv2)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    w, h = size
    out = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (3,))
    for i in range(int(seconds * fps)):
        img = np.full((h, w, 3), base, np.uint8)
        x = (4 * i) % (w - 12)
        img[10:22, x : x + 12] = (255 - base).astype(np.uint8)
        out.write(img)
    out.release()
    return path


def tiny_checkpoint(directory: str, seed: int = 0) -> str:
    """A random tiny Qwen2.5-VL saved in HF layout with a tiny tokenizer next to it."""
    if os.path.exists(os.path.join(directory, "config.json")):
        return directory
    corpus = [prompts.R1_PREAMBLE, "You are a helpful assistant.", "Frame 1 at 0.0s: "] * 5
    corpus += ["Answer the question about the video:", "<think>", "</think>", "<answer>"]
    make_tiny_tokenizer(directory, corpus)
    config = Qwen25VLConfig.preset("tiny")
    init = jax.jit(Qwen25VL(config).init)
    params = init(jax.random.PRNGKey(seed), init_inputs(config))["params"]
    import flax.linen as nn

    params = jax.tree.map(np.asarray, nn.unbox(params))
    hf.save(directory, config, params, progress=False)
    return directory


def vstar_item(vid: str, domain: str = "Everyday Life", seconds: float = 3.0) -> dict:
    return {
        "vid": vid,
        "domain": domain,
        "fps": 4.0,
        "frame_count": int(seconds * 4),
        "width": 64,
        "height": 48,
        "question": "What moves across the video?",
        "answer": "a square",
        "temporal_question": "When does the square move?",
        "spatial_question": "Where is the square?",
        "spatial_question_2": "Where is the moving square?",
        "timestamps": [0.6, 2.4],
        "bboxes": [
            {"timestamp": 1, "xmin": 4, "ymin": 10, "xmax": 16, "ymax": 22},
            {"timestamp": 2, "xmin": 8, "ymin": 10, "xmax": 20, "ymax": 22},
        ],
    }


def write_vstar(root: str, n: int = 3, missing: int = 0) -> tuple[str, str]:
    """V_STaR_test.json with n items (videos under root/videos/sub/), plus `missing` items
    whose video does not exist."""
    items = []
    for i in range(n):
        write_video(os.path.join(root, "videos", "sub", f"v{i}.mp4"), seed=i)
        items.append(vstar_item(f"v{i}", domain=["Everyday Life", "Sports"][i % 2]))
    items += [vstar_item(f"gone{i}") for i in range(missing)]
    path = os.path.join(root, "V_STaR_test.json")
    with open(path, "w") as f:
        json.dump(items, f)
    return path, os.path.join(root, "videos")


def _write_parquet(path: str, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def write_videomme(root: str, n: int = 2) -> tuple[str, str]:
    rows = []
    for i in range(n):
        write_video(os.path.join(root, "data", f"vid{i}.mp4"), seed=10 + i)
        rows.append(
            {
                "video_id": f"{i:03d}",
                "duration": "short",
                "domain": "Knowledge",
                "sub_category": "Humanity & History",
                "url": "https://example.com",
                "videoID": f"vid{i}",
                "question_id": f"{i:03d}-1",
                "task_type": "Counting Problem",
                "question": "How many squares are there?",
                "options": ["A. One.", "B. Two.", "C. Three.", "D. Four."],
                "answer": "A",
            }
        )
    path = os.path.join(root, "videomme", "test-00000-of-00001.parquet")
    _write_parquet(path, rows)
    return path, root


def write_worldsense(root: str, n: int = 2) -> tuple[str, str]:
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, "WorldSense.tsv")
    fields = ["index", "video", "question", "candidates", "answer", "duration", "domain",
              "sub_category", "task_domain", "task_type", "audio_class"]  # fmt: skip
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, delimiter="\t")
        w.writeheader()
        for i in range(n):
            write_video(os.path.join(root, f"ws{i}.mp4"), seed=20 + i)
            w.writerow(
                {
                    "index": i, "video": f"ws{i}", "question": "What colour is the square?",
                    "candidates": str(["A. Red.", "B. Green.", "C. Blue.", "D. White."]),
                    "answer": "B", "duration": "<1min", "domain": "Daily Life",
                    "sub_category": "Cooking", "task_domain": "Recognition",
                    "task_type": "Attribute Recognition", "audio_class": "['Speech']",
                }
            )  # fmt: skip
    return path, root


def write_videommmu(root: str) -> tuple[str, str]:
    """Perception (MCQ, 2 items) and Adaptation (one open question with an image)."""
    write_video(os.path.join(root, "videos", "Science", "validation_Physics_1.mp4"), seed=30)
    write_video(os.path.join(root, "videos", "Art", "validation_Music_2.mp4"), seed=31)
    ok, png = cv2.imencode(".png", np.full((40, 40, 3), 200, np.uint8))
    assert ok
    _write_parquet(
        os.path.join(root, "data", "Perception", "test-00000-of-00001.parquet"),
        [
            {
                "id": "validation_Physics_1",
                "question": "Which law is shown?",
                "options": ["Newton", "Ohm", "Hooke", "Snell", "Boyle"],
                "answer": "B",
                "question_type": "multiple-choice",
            }
        ],
    )
    _write_parquet(
        os.path.join(root, "data", "Adaptation", "test-00000-of-00001.parquet"),
        [
            {
                "id": "validation_Music_2",
                "question": "How many beats per bar? <image 1>",
                "options": [],
                "answer": "4",
                "question_type": "open",
                "image": {"bytes": png.tobytes(), "path": "x.png"},
            }
        ],
    )
    return os.path.join(root, "data"), os.path.join(root, "videos")


def write_tvg(root: str, n: int = 2) -> tuple[str, str]:
    rows = []
    for i in range(n):
        write_video(os.path.join(root, "videos", f"c{i}.mp4"), seed=40 + i)
        rows.append({"video": f"c{i}", "query": "the square moves right", "span": [0.5, 2.0]})
    path = os.path.join(root, "tvg.json")
    with open(path, "w") as f:
        json.dump(rows, f)
    return path, os.path.join(root, "videos")


def eval_config(benchmark: str, checkpoint: str, data: str, media: str, **eval_overrides):
    """experiments/configs/eval.py:runlocal for `benchmark`, pointed at test files; batch 8
    (the conftest's 8 fake devices are the data-parallel shards)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "eval_config", os.path.join(REPO, "experiments", "configs", "eval.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(f"benchmark={benchmark},runlocal")
    with c.unlocked():
        c.model.hf_checkpoint = checkpoint
        c.eval.data, c.eval.media_root = data, media
        c.eval.batch_size = 8
        c.log.progress = False
        for k, v in eval_overrides.items():
            c.eval[k] = v
    return c


def shared_checkpoint(tmp_path_factory) -> str:
    """One tiny checkpoint for the whole session (built once, reused by every module)."""
    return tiny_checkpoint(str(tmp_path_factory.getbasetemp() / "evaluate_tiny_ckpt"))
