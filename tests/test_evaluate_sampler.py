"""The sampler's repetition penalty == transformers' RepetitionPenaltyLogitsProcessor."""

import jax.numpy as jnp
import numpy as np
import pytest

from o3video_jax.rl import sampler as sampler_lib


def test_penalty_matches_transformers_processor():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    rng = np.random.default_rng(0)
    v, n, length = 50, 3, 7
    logits = rng.normal(size=(n, v)).astype(np.float32) * 3
    ids = rng.integers(0, v, (n, length)).astype(np.int32)
    seg = np.ones((n, length), np.int32)
    seg[1, :3] = 0  # left padding: not part of the prompt
    ids[1, :3] = 49  # a pad id that appears nowhere else
    ids[ids == 49] = 48
    ids[1, :3] = 49
    seen = sampler_lib.prompt_tokens_seen(ids, seg, vocab=v, group_size=1)
    got = np.asarray(sampler_lib.apply_repetition_penalty(jnp.asarray(logits), seen, 1.05))
    proc = transformers.RepetitionPenaltyLogitsProcessor(1.05)
    for r in range(n):
        real = torch.tensor(ids[r][seg[r] != 0][None].astype(np.int64))
        want = proc(real, torch.tensor(logits[r : r + 1])).numpy()[0]
        np.testing.assert_allclose(got[r], want, rtol=1e-6)
    assert got[1, 49] == logits[1, 49]  # padding is not "present"


def test_seen_repeats_to_the_group_and_config_validates():
    ids = np.array([[1, 2], [3, 3]], np.int32)
    seen = np.asarray(sampler_lib.prompt_tokens_seen(ids, np.ones_like(ids), vocab=5, group_size=2))
    assert seen.shape == (4, 5)
    assert seen[0].tolist() == seen[1].tolist() == [False, True, True, False, False]
    assert seen[3].tolist() == [False, False, False, True, False]
    with pytest.raises(ValueError, match="repetition_penalty"):
        sampler_lib.SamplingConfig(max_new_tokens=4, repetition_penalty=0.0)
