"""`compute_rewards`: the seven Open-o3 Video rewards (docs/open_o3_video.md §3) for a batch of completions.

Host side: parse the completions (`parse.parse_batch`), build the ground-truth arrays
(`targets.build_targets`) and compute `ans_acc`, which is text work (option-letter matching and
ROUGE). Device side: everything numeric in one jitted call (`scoring.score_batch`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np

from o3video_jax.rewards import batch, registry, rouge, scan, scoring, targets
from o3video_jax.rewards.config import (
    GENERAL_FREE_FORM,
    GENERAL_MCQ,
    SPATIAL_GATES,
    TASK_IDS,
    TEMPORAL_QA_MCQ,
    TEMPORAL_SPATIAL,
    RewardConfig,
    sigma_schedule,
)

_FREE_FORM = (TASK_IDS[TEMPORAL_SPATIAL], TASK_IDS[GENERAL_FREE_FORM])


def letter_matches(prediction: str, letter: str) -> bool:
    """MCQ match: the stripped prediction is L, "L.", "(L)" or "[L]" for the stripped GT L."""
    return prediction.strip() in (letter, letter + ".", "(" + letter + ")", "[" + letter + "]")


def answer_accuracy(parsed: batch.ParsedBatch, gt: targets.Targets) -> np.ndarray:
    """ans_acc, float64[N]: ROUGE mean F (free-form tasks, clipped to [0, 1]), letter match
    (General MCQ: the whole answer; TG-MCQ: text after `Correct Option:`), else 0."""
    task = gt.task
    out = np.zeros(len(task))
    free = np.flatnonzero((task == _FREE_FORM[0]) | (task == _FREE_FORM[1])).tolist()
    if free:
        answers, references = parsed.answers, gt.reference
        rouge_f = rouge.rouge_mean_f_batch(
            [references[i] for i in free], [answers[i] for i in free]
        )
        out[free] = np.clip(rouge_f, 0.0, 1.0)
    for i in np.flatnonzero(task == TASK_IDS[GENERAL_MCQ]).tolist():
        out[i] = letter_matches(parsed.answers[i], gt.letter[i])
    for i in np.flatnonzero(task == TASK_IDS[TEMPORAL_QA_MCQ]).tolist():
        if parsed.choices[i] is not None:
            out[i] = letter_matches(parsed.choices[i], gt.letter[i])
    return out


def _weights(weights: Mapping[str, float] | None, rewards) -> np.ndarray:
    weights = dict(weights or {})
    names = tuple(r.name for r in rewards)
    unknown = set(weights) - set(names)
    if unknown:
        raise ValueError(f"unknown reward weights {sorted(unknown)}; names are {names}")
    out = np.array([float(weights.get(r.name, r.weight)) for r in rewards])
    if not np.all(np.isfinite(out)):
        raise ValueError(f"reward weights must be finite, got {weights}")
    return out


def compute_rewards(
    completions: Sequence[str],
    examples: Sequence[Mapping],
    step_fraction: float = 0.3,
    *,
    weights: Mapping[str, float] | None = None,
    spatial_gate: str = "intended",
    config: RewardConfig | None = None,
    added: Sequence[registry.Reward] | None = None,
) -> dict[str, np.ndarray]:
    """Scores N completions against their N examples.

    Args:
      completions: N completion strings (the assistant text after the generation prompt).
      examples: N STGR records plus "frame_size": [W, H] of the frames/image fed to the model.
      step_fraction: p = (global_step + 1) / max_steps; thk_temporal_point uses
        sigma = 4 (1 - p) for p < 0.75, else 1.
      weights: optional per-term weights of the total (missing names take their table weight,
        1 for the seven: the original's unweighted sum).
      spatial_gate: "intended" (|g - T| < 1 s) or "reference" (the original's g - T < 1 s).
      config: array budgets (RewardConfig()).

    Returns:
      dict name -> float32[N] for ans_acc, ans_tiou, ans_viou, thk_temporal_point,
      thk_temporal_segment, thk_spatial, format and total.
    """
    if isinstance(completions, str) or len(completions) != len(examples):
        raise ValueError(
            f"need one example per completion, got {len(examples)} examples for "
            f"{'a str' if isinstance(completions, str) else len(completions)} completions"
        )
    if spatial_gate not in SPATIAL_GATES:
        raise ValueError(f"spatial_gate must be one of {SPATIAL_GATES}, got {spatial_gate!r}")
    sigma = sigma_schedule(step_fraction)
    added = tuple(registry.ADDED if added is None else added)
    w = _weights(weights, registry.table(added))
    cfg = config or RewardConfig()
    gt = targets.build_targets(examples, cfg)  # validates the tasks first
    parsed = scan.parse_batch(completions, cfg, [ex["task"] for ex in examples])
    acc = answer_accuracy(parsed, gt)
    # float64 on the CPU: see scoring's docstring (discontinuous comparisons must match).
    cpu = jax.local_devices(backend="cpu")[0]  # this process's (multi-host CPU backends)
    with jax.enable_x64(True), jax.default_device(cpu):
        out = scoring.score_batch(
            parsed.arrays(),
            gt.arrays(),
            acc,
            np.float64(sigma),
            w,
            gate=spatial_gate,
            added=added,
        )
        return {name: np.asarray(value, np.float32) for name, value in out.items()}
