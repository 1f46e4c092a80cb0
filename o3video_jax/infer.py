r"""Grounded inference on one video: the answer plus a picture of its evidence.

  python -m o3video_jax.infer --checkpoint DIR --video X.mp4 --question "..." [--out DIR]

The video is fed as Open-o3 Video trains (§1.5a, RL prompts): up to 16 frames sampled at
2 fps, each ~128 visual tokens, as `Frame j at t s` image lines with the
`The video is in total N seconds.` line, under the temporal-spatial free-form QA system prompt,
so the model answers with `<obj>name</obj><box>[x1,y1,x2,y2]</box>at<t>T</t>s` claims in the
pixels of those frames. Prints the completion, the answer and the claims; writes
OUT/evidence.png (the cited frames with their boxes, names and times, as a strip) and
OUT/evidence.gif (the frames in time order, the cited ones held with their evidence).
"""

from __future__ import annotations

import dataclasses
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from o3video_jax.checkpoints import hf
from o3video_jax.data import prompts as train_prompts
from o3video_jax.data.tokenizer import Tokenizer
from o3video_jax.eval import animate, tts, visualize
from o3video_jax.evaluate import media as media_lib
from o3video_jax.evaluate import prompts
from o3video_jax.evaluate.generate import Generator, Request
from o3video_jax.evaluate.runner import tokenize_prompt
from o3video_jax.rewards.config import TEMPORAL_SPATIAL
from o3video_jax.rl import rollouts

__all__ = ["InferResult", "grounded_prompt", "infer"]

_ANSWER_RE = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class InferResult:
    completion: str
    answer: str
    claims: list[tts.Claim]
    png: str
    gif: str
    frames: np.ndarray
    times: tuple[float, ...]


def grounded_prompt(
    question: str, num_frames: int, sample_fps: float, system: str | None = None
) -> prompts.Prompt:
    """The RL prompt of a temporal-spatial free-form question over `num_frames` frames
    (`system`: None = Open-o3's system prompt for the task, else this text)."""
    block = "".join(
        f"Frame {i + 1} at {round(i / sample_fps, 1)}s: {prompts.VISION_TAG}\n"
        for i in range(num_frames)
    )
    text = block + f"The video is in total {int(num_frames / sample_fps)} seconds.\n" + question
    return prompts.Prompt(
        "answer", text, "frames", train_prompts.system_prompt(TEMPORAL_SPATIAL, "rl")
    )


def infer(
    checkpoint: str,
    video: str,
    question: str,
    out_dir: str,
    *,
    max_new_tokens: int = 512,
    fps: float = 2.0,
    max_frames: int = 16,
    frame_max_pixels: int = 105369,
    temperature: float = 0.0,
    repetition_penalty: float = 1.05,
    dtype: str = "float32",
    seed: int = 0,
    system: str | None = None,
) -> InferResult:
    """Answers `question` about `video` with the checkpoint and draws the evidence."""
    if not os.path.isfile(video):
        raise FileNotFoundError(f"no video at {video!r}")
    tokenizer = Tokenizer.from_dir(checkpoint)
    config, params = hf.load(checkpoint, jnp.dtype(dtype), progress=False)
    m = media_lib.frames_media(
        video,
        fps=fps,
        max_frames=max_frames,
        min_pixels=frame_max_pixels,
        max_pixels=frame_max_pixels,
    )
    prompt = grounded_prompt(question, len(m.frames), m.sample_fps, system)
    segment, _ = tokenize_prompt(tokenizer, prompts.render_messages(prompt, len(m.items)), m.items)
    n_tokens = len(segment.input_ids)
    patches = sum(v.num_patches for v in segment.vision)
    bucket = max(256, 1 << (n_tokens - 1).bit_length())
    sampling = rollouts.sampling_config(
        {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "repetition_penalty": repetition_penalty,
        },
        (tokenizer.eos_id, tokenizer.pad_id),
        tokenizer.pad_id,
    )
    gen = Generator(
        config, params, tokenizer, sampling, batch_size=1, buckets=[bucket],
        max_patches=-(-patches // 4) * 4,
    )  # fmt: skip
    key = np.asarray(jax.random.PRNGKey(seed))
    completion = gen([Request(segment, key)])[0][0]
    answer = _ANSWER_RE.search(completion)
    os.makedirs(out_dir, exist_ok=True)
    png, gif = os.path.join(out_dir, "evidence.png"), os.path.join(out_dir, "evidence.gif")
    visualize.render_example(m.frames, m.times, completion, png)
    animate.write_gif(m.frames, m.times, completion, gif)
    return InferResult(
        completion, answer.group(1) if answer else "", tts.parse_claims(completion), png, gif,
        m.frames, m.times,
    )  # fmt: skip


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m o3video_jax.infer", description=__doc__.split("\n")[0]
    )
    p.add_argument("--checkpoint", required=True, help="HF Qwen2.5-VL directory (with tokenizer)")
    p.add_argument("--video", required=True)
    p.add_argument("--question", required=True)
    p.add_argument("--out", default="infer_out", help="directory for evidence.png / .gif")
    p.add_argument("--max_new_tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--repetition_penalty", type=float, default=1.05)
    p.add_argument("--max_frames", type=int, default=16)
    p.add_argument("--frame_max_pixels", type=int, default=105369, help="pixels per frame")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--system", default=None, help="system prompt (default: Open-o3's)")
    a = p.parse_args(argv)
    r = infer(
        a.checkpoint, a.video, a.question, a.out, max_new_tokens=a.max_new_tokens,
        temperature=a.temperature, repetition_penalty=a.repetition_penalty,
        max_frames=a.max_frames, frame_max_pixels=a.frame_max_pixels, dtype=a.dtype, system=a.system,
    )  # fmt: skip
    print(r.completion)
    print(f"\nAnswer: {r.answer or '(no <answer>)'}")
    for c in r.claims:
        print(f"  evidence: {c.name} {list(c.box)} at {c.t:g}s")
    if not r.claims:
        print("  (no grounded claims in the completion)")
    print(f"wrote {r.png} and {r.gif}")


if __name__ == "__main__":
    main()
