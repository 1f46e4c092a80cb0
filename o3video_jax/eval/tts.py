"""Test-time scaling: majority and confidence-aware voting over N sampled answers.

Confidence-aware voting (Open-o3 Video `eval/tts.py`) weights each sampled path by how
relevant its cited evidence is: the grounded claims `<obj>n</obj><box>[x1,y1,x2,y2]</box>at
<t>T</t>s` in its `<think>` are cropped out of the frames fed to the model, and a relevance
scorer (the policy model itself in the paper; any callable here) rates the crops 0/1/2.

Per path (think mode): no `<answer>` or an answer that is not exactly one allowed letter ->
letter NA, weight 0; no `<think>` -> its letter counts with weight 0; majority voting ->
weight 1; confidence voting -> relevance 2/1/0 -> 1.0/0.6/0.2 (anything else 0.2), and 0.2
without a scorable crop (none, or more than MAX_CROPS). Non-think mode: the letter read by
`parse_letter` (default `mcq.extract_letter`; the evaluation passes upstream's parser from
`eval.letter_parsers`), weight 1. The vote is the letter with the largest weight sum; ties go
to the earliest letter (A first), and all-NA gives the first letter.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from o3video_jax.eval.mcq import LETTERS_ABCD, extract_letter

__all__ = [
    "Claim",
    "PathVote",
    "VoteResult",
    "crop_evidence",
    "parse_claims",
    "parse_relevance_reply",
    "relevance_weight",
    "vote",
]

MAX_CROPS = 10
NO_EVIDENCE_WEIGHT = 0.2
_RELEVANCE_WEIGHTS = {2: 1.0, 1: 0.6, 0: 0.2}

_CLAIM_RE = re.compile(r"<obj>(.*?)</obj><box>(\[.*?\])</box>at<t>(.*?)</t>s", re.DOTALL)
_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)

# scorer(crops uint8[H, W, 3] list, question) -> 0/1/2 rating or the raw reply text.
RelevanceScorer = Callable[[list[np.ndarray], str], "int | str"]


@dataclasses.dataclass(frozen=True)
class Claim:
    """One grounded claim: object name, box [x1, y1, x2, y2] in frame pixels, time in s."""

    name: str
    box: tuple[float, float, float, float]
    t: float


@dataclasses.dataclass(frozen=True)
class PathVote:
    letter: str | None  # None = NA
    weight: float
    num_crops: int = 0


@dataclasses.dataclass(frozen=True)
class VoteResult:
    pred: str
    letter_weights: dict[str, float]
    paths: tuple[PathVote, ...]


def _parse_box(raw: str) -> tuple[float, float, float, float] | None:
    try:
        vals = [float(p) for p in raw.replace(" ", "").replace("[", "").replace("]", "").split(",")]
    except ValueError:
        return None
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        return None
    x1, y1, x2, y2 = vals
    return (x1, y1, x2, y2) if x2 >= x1 and y2 >= y1 else None


def parse_claims(think: str) -> list[Claim]:
    """Single-box grounded claims with a parseable box and time (others are skipped)."""
    claims = []
    for match in _CLAIM_RE.finditer(think):
        box = _parse_box(match.group(2))
        try:
            t = round(float(match.group(3).strip()), 2)
        except ValueError:
            continue
        if box is not None and math.isfinite(t):
            claims.append(Claim(match.group(1).strip(), box, t))
    return claims


def crop_evidence(frames: np.ndarray, fps: float, claims: Sequence[Claim]) -> list[np.ndarray]:
    """Crops of the claimed boxes, each resized back to the full frame size.

    Args:
      frames: uint8[T, H, W, 3], the frames fed to the model (RGB; channel order is kept).
      fps: their sample rate; claim time T maps to frame round(T * fps).
      claims: from `parse_claims`.

    Returns:
      uint8[H, W, 3] crops. Claims past the last frame (or before the first) and boxes that are
      empty after int-casting and clamping to the frame are skipped. More than MAX_CROPS crops
      are discarded altogether (the path then counts as having no evidence).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got shape {frames.shape}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    num_frames, height, width, _ = frames.shape
    crops = []
    for claim in claims:
        idx = round(claim.t * fps)  # Python round: half to even, as the original
        # The original indexed negative times from the end; a negative time has no frame.
        if not 0 <= idx < num_frames:
            continue
        x1, y1, x2, y2 = (int(v) for v in claim.box)
        # Clamp both ends into [0, size]: the original clamped x2/y2 only from above, so a box
        # left of / above the frame became a negative slice end and a bogus non-empty crop.
        x1, x2 = min(max(x1, 0), width), min(max(x2, 0), width)
        y1, y2 = min(max(y1, 0), height), min(max(y2, 0), height)
        crop = frames[idx, y1:y2, x1:x2]
        if crop.size == 0:
            continue
        resized = cv2.resize(
            crop.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR
        )
        crops.append(resized.astype(np.uint8))  # truncation, as the original's astype
    return [] if len(crops) > MAX_CROPS else crops


def parse_relevance_reply(reply) -> int:
    """0, 1 or 2 for a reply that is exactly that digit, else -1 (upstream's
    `text in ["0", "1", "2"]`: a reply with whitespace around the digit is -1 too)."""
    if isinstance(reply, (int, np.integer)) and not isinstance(reply, bool):
        return int(reply) if reply in (0, 1, 2) else -1
    text = str(reply)
    return int(text) if text in ("0", "1", "2") else -1


def relevance_weight(score) -> float:
    """2 -> 1.0, 1 -> 0.6, 0 -> 0.2, anything else -> 0.2."""
    return _RELEVANCE_WEIGHTS.get(parse_relevance_reply(score), NO_EVIDENCE_WEIGHT)


def _path_vote(
    completion, mode, letters, think_mode, frames, fps, scorer, question, parse_letter
) -> PathVote:
    if not think_mode:
        letter = parse_letter(completion) if parse_letter else extract_letter(completion, letters)
        letter = letter if letter in tuple(letters) else None
        return PathVote(letter, 1.0) if letter is not None else PathVote(None, 0.0)
    answer = _ANSWER_RE.search(completion)
    letter = answer.group(1).strip() if answer else None
    if letter is None or len(letter) != 1 or letter not in letters:
        return PathVote(None, 0.0)
    think = _THINK_RE.search(completion)
    if think is None:
        return PathVote(letter, 0.0)
    if mode == "majority":
        return PathVote(letter, 1.0)
    crops = crop_evidence(frames, fps, parse_claims(think.group(1).strip()))
    if not crops:
        return PathVote(letter, NO_EVIDENCE_WEIGHT)
    return PathVote(letter, relevance_weight(scorer(crops, question)), len(crops))


def vote(
    completions: Sequence[str],
    *,
    mode: str = "majority",
    letters: str = LETTERS_ABCD,
    think_mode: bool = True,
    frames: np.ndarray | None = None,
    fps: float | None = None,
    scorer: RelevanceScorer | None = None,
    question: str = "",
    parse_letter: Callable[[str], str | None] | None = None,
) -> VoteResult:
    """Aggregate N sampled completions into one letter.

    Args:
      completions: the N sampled replies for one question.
      mode: "majority" or "confidence".
      letters: allowed option letters ("ABCD"; "ABCDEFGHIJ" for VideoMMMU).
      think_mode: whether the replies follow the `<think>…</think><answer>…</answer>` format.
      frames, fps: the frames fed to the model, uint8[T, H, W, 3], and their sample rate
        (confidence mode only).
      scorer: `scorer(crops, question) -> 0/1/2 or reply text` (confidence mode only).
      question: question text plus options, passed to the scorer.
      parse_letter: reads the letter of a non-think reply (default `mcq.extract_letter`;
        the evaluation passes upstream's parser, `eval.letter_parsers`).
    """
    if mode not in ("majority", "confidence"):
        raise ValueError(f"mode must be 'majority' or 'confidence', got {mode!r}")
    if mode == "confidence" and think_mode and (frames is None or fps is None or scorer is None):
        raise ValueError("confidence voting needs frames, fps and scorer")
    if not completions:
        raise ValueError("vote() needs at least one completion")
    if not letters or not letters.isupper() or len(set(letters)) != len(letters):
        raise ValueError(f"letters must be distinct upper-case letters, got {letters!r}")
    paths = tuple(
        _path_vote(c, mode, letters, think_mode, frames, fps, scorer, question, parse_letter)
        for c in completions
    )
    weights = dict.fromkeys(letters, 0.0)
    for p in paths:
        if p.letter is not None:
            weights[p.letter] += p.weight
    # max() returns the first maximal key, and dicts keep `letters` order: ties go to A first.
    return VoteResult(max(weights, key=weights.get), weights, paths)
