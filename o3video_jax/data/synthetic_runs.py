"""Synthetic runs: generate videos, records and a tiny tokenizer into a run directory.

`prepare(directory, ...)` is what `experiments/configs/synthetic.py` runs rely on (the loop
calls it when `config.data.synthetic.videos > 0` and no train_json is given) and what the demo
calls first. It is idempotent: a directory that already holds a finished dataset (a `DONE`
marker) is reused, so a resumed run, or train/eval splits of the same seed, never regenerate.

Layout under `directory`:
  train/  generate_dataset(videos, seed)        -> json_data/STGR-SFT.json, STGR-RL.json, ...
  heldout/ generate_dataset(eval_videos, seed+1) -> the held-out records (never trained on)
  tokenizer/ tokenizer.json + tokenizer_config.json (make_tiny_tokenizer on the corpus)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterable

from o3video_jax import io
from o3video_jax.data import prompts
from o3video_jax.data.synthetic import generate_dataset
from o3video_jax.data.tokenizer import Tokenizer, make_tiny_tokenizer

_DONE = "DONE"


@dataclasses.dataclass(frozen=True)
class SyntheticData:
    """Paths of a prepared synthetic dataset (all absolute, or URIs under a remote root)."""

    root: str
    sft_json: str
    rl_json: str
    heldout_sft_json: str
    heldout_rl_json: str
    heldout_vstar_json: str
    perception_json: str  # dense one-hop SFT records (the demo's perception stage)
    heldout_perception_json: str
    media_root: str
    heldout_media_root: str
    tokenizer_dir: str


def _paths(root: str) -> SyntheticData:
    train, held = os.path.join(root, "train"), os.path.join(root, "heldout")
    return SyntheticData(
        root=root,
        sft_json=os.path.join(train, "json_data", "STGR-SFT.json"),
        rl_json=os.path.join(train, "json_data", "STGR-RL.json"),
        heldout_sft_json=os.path.join(held, "json_data", "STGR-SFT.json"),
        heldout_rl_json=os.path.join(held, "json_data", "STGR-RL.json"),
        heldout_vstar_json=os.path.join(held, "json_data", "vstar.json"),
        perception_json=os.path.join(train, "json_data", "perception.json"),
        heldout_perception_json=os.path.join(held, "json_data", "perception.json"),
        media_root=train,
        heldout_media_root=held,
        tokenizer_dir=os.path.join(root, "tokenizer"),
    )


def corpus(records: Iterable[dict], max_seconds: int = 16) -> list[str]:
    """Texts the tiny BPE is trained on: every prompt the pipeline renders, the records'
    questions/answers/reasoning, frame labels and pixel boxes (so frequent pieces merge).
    The system prompts, which every sequence carries, are repeated so that BPE spends its few
    merges on them: the sequences get ~20% shorter."""
    system = list(prompts.SFT_SYSTEM_PROMPTS.values()) + list(prompts.RL_SYSTEM_PROMPTS.values())
    texts = system * 20
    for r in records:
        texts += [r.get("question", ""), r.get("answer", ""), r.get("reasoning_process", "")]
    for j in range(1, 2 * max_seconds + 2):
        t = (j - 1) / 2
        texts.append(f"Frame {j} at {t}s: \nFrame {j} at {t}: \n")
    texts += [f"The video is in total {s} seconds.\n" for s in range(max_seconds + 1)]
    texts += [f"<box>[{a},{a + 7},{a + 13},{a + 21}]</box>" for a in range(0, 120, 3)]
    texts += [f"From <t>{a / 2}</t>s to <t>{a / 2 + 1.5}</t>s" for a in range(2 * max_seconds)]
    texts += ["<think>", "</think>\n<answer>", "</answer>", "Question: "]
    return texts


def prepare(
    directory: str | os.PathLike,
    *,
    videos: int,
    eval_videos: int = 0,
    seed: int = 0,
    width: int = 112,
    height: int = 84,
    fps: int = 4,
    seconds: tuple[int, int] = (4, 6),
    objects: tuple[int, int] = (2, 3),
    perception: bool = False,
) -> SyntheticData:
    """Generates (once) the training and held-out synthetic datasets and the tiny tokenizer."""
    root = io.abspath(directory)
    paths = _paths(root)
    marker = os.path.join(root, _DONE)
    spec = dict(
        videos=videos,
        eval_videos=eval_videos,
        seed=seed,
        width=width,
        height=height,
        fps=fps,
        seconds=list(seconds),
    )
    # Recorded only when set: markers written before these options stay valid.
    if perception:
        spec["perception"] = True
    if tuple(objects) != (2, 3):
        spec["objects"] = list(objects)
    if io.exists(marker):
        done = json.loads(io.read_text(marker))
        if done != spec:
            raise ValueError(
                f"{root} holds a synthetic dataset made with {done}, not {spec}; "
                "use another directory"
            )
        return paths
    if videos < 1:
        raise ValueError(f"synthetic videos must be >= 1, got {videos}")
    kw = dict(
        width=width, height=height, fps=fps, seconds=tuple(seconds), num_objects=tuple(objects)
    )
    # OpenCV writes local files only: a remote root is generated locally, then uploaded.
    local_root = tempfile.mkdtemp(prefix="o3video-synthetic-") if io.is_remote(root) else root
    local = _paths(local_root)
    train = generate_dataset(local.media_root, videos, seed, perception=perception, **kw)
    held = generate_dataset(local.heldout_media_root, max(eval_videos, 1), seed + 1, **kw)
    make_tiny_tokenizer(local.tokenizer_dir, corpus(train["sft"] + train["rl"] + held["rl"]))
    if local_root != root:
        io.upload_tree(local_root, root)
        shutil.rmtree(local_root)
    io.write_text(marker, json.dumps(spec))  # last: the dataset is complete
    return paths


def load_tokenizer(data: SyntheticData) -> Tokenizer:
    return Tokenizer.from_dir(data.tokenizer_dir)
