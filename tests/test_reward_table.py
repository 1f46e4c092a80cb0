"""The reward table (`rewards.registry`): an added reward is one function and one `Reward`
record; it is scored inside the jitted call, weighed in the total, and named everywhere the
seven are."""

import numpy as np
import pytest

from o3video_jax.rewards import REWARD_NAMES, compute_rewards, registry
from o3video_jax.rewards.config import OPEN_O3_REWARDS

GMCQ = {"task": "General video QA MCQ", "answer": "C"}
COMPLETIONS = [
    "<think>the third option fits</think><answer>C</answer>",  # think block, right letter
    "<answer>B</answer>",  # no think block, wrong letter
    "<think>unsure</think><answer>A</answer>",  # think block, wrong letter
]


def thk_present(parsed, targets):
    """1 when the completion has a think block (the docs/extending.md example)."""
    del targets
    return parsed["has_think"].astype(np.float64)


THK_PRESENT = registry.Reward("thk_present", thk_present, weight=0.5)


def test_the_table_starts_with_the_seven_of_the_original():
    assert (
        REWARD_NAMES[:7]
        == OPEN_O3_REWARDS
        == (
            "ans_acc",
            "ans_tiou",
            "ans_viou",
            "thk_temporal_point",
            "thk_temporal_segment",
            "thk_spatial",
            "format",
        )
    )
    assert registry.DEFAULT_WEIGHTS == {name: 1.0 for name in REWARD_NAMES}


def test_an_added_reward_is_scored_and_weighed():
    base = compute_rewards(COMPLETIONS, [GMCQ] * 3, added=())
    assert "thk_present" not in base
    out = compute_rewards(COMPLETIONS, [GMCQ] * 3, added=(THK_PRESENT,))
    # hand-derived: think blocks in completions 0 and 2
    np.testing.assert_array_equal(out["thk_present"], [1.0, 0.0, 1.0])
    for name in OPEN_O3_REWARDS:
        np.testing.assert_array_equal(out[name], base[name])
    # its table weight (0.5) in the total, unless the weights say otherwise
    np.testing.assert_allclose(out["total"], base["total"] + [0.5, 0.0, 0.5], rtol=1e-6)
    heavy = compute_rewards(
        COMPLETIONS, [GMCQ] * 3, added=(THK_PRESENT,), weights={"thk_present": 2.0}
    )
    np.testing.assert_allclose(heavy["total"], base["total"] + [2.0, 0.0, 2.0], rtol=1e-6)
    # the letter reward, to show the base is what it should be: only completion 0 is right
    np.testing.assert_array_equal(base["ans_acc"], [1.0, 0.0, 0.0])


def test_registration_is_the_one_line_in_the_table(monkeypatch):
    """`compute_rewards` reads `registry.ADDED` at call time: the entry is all it takes."""
    monkeypatch.setattr(registry, "ADDED", (THK_PRESENT,))
    out = compute_rewards(COMPLETIONS, [GMCQ] * 3)
    np.testing.assert_array_equal(out["thk_present"], [1.0, 0.0, 1.0])


def test_bad_tables_and_weights_are_refused():
    with pytest.raises(ValueError, match="unique"):
        registry.table((registry.Reward("format", thk_present),))
    with pytest.raises(ValueError, match="unique"):
        registry.table((registry.Reward("total", thk_present),))
    with pytest.raises(ValueError, match="score function"):
        registry.table((registry.Reward("no_function"),))
    with pytest.raises(ValueError, match="unknown reward weights"):
        compute_rewards(COMPLETIONS, [GMCQ] * 3, added=(), weights={"thk_present": 1.0})
