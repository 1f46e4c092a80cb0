"""A tiny GSPO run through the CLI: the lr the loop logs counts optimiser updates (issue 9,
defect 1), and a prompt longer than the largest prompt bucket is skipped and counted by the
data pipeline instead of failing in the sampler (defect 4)."""

import json
import math
import subprocess
import sys

import pytest
from loop_fixtures import REPO, base_flags

CONFIG = f"{REPO}/experiments/configs/synthetic.py:size=tiny,stage=gspo"


def cosine(k: int, horizon: int, peak: float) -> float:
    return peak * (1 + math.cos(math.pi * k / horizon)) / 2


def test_gspo_lr_counts_updates_and_long_prompts_are_skipped(tmp_path, loop_env, loop_data):
    records = json.load(open(loop_data.rl_json))
    # ~18 tokens a sentence: ~300 prompt tokens, over the tiny config's one bucket (256) but
    # inside the budget data.max_seq_len - rl.max_new_tokens = 544 - 32 = 512.
    records[0]["question"] += " Which object appears first in the video?" * 5
    train_json = tmp_path / "rl.json"
    train_json.write_text(json.dumps(records))
    peak = 0.01
    flags = {
        **base_flags(loop_data, "gspo"),
        "data.train_json": str(train_json),
        "data.shuffle": False,  # the long prompt comes first
        "data.max_seq_len": 544,
        "data.max_error_fraction": 0.5,
        "optim.schedule": "cosine",
        "optim.lr": peak,
        "rl.minibatches": 2,  # 2 optimiser updates per rollout step
        "rl.num_updates": 1,
        "total_steps": 2,
        "ckpt.save_every": 100,
        "ckpt.export_hf": False,
    }
    args = [sys.executable, "-m", "o3video_jax.train", f"--config={CONFIG}"]
    args += [f"--workdir={tmp_path / 'run'}", *(f"--config.{k}={v}" for k, v in flags.items())]
    p = subprocess.run(args, env=loop_env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "rl.prompt_buckets=[256] stop below the prompt budget 512" in p.stdout
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [m["step"] for m in rows] == [1, 2]
    # Horizon 2 steps x 2 updates = 4 updates; step s uses updates 2(s-1) and 2(s-1) + 1.
    # (The old horizon of 2 updates put the lr of step 2 at 0.)
    lrs = [cosine(k, 4, peak) for k in range(4)]
    assert rows[0]["lr"] == pytest.approx((lrs[0] + lrs[1]) / 2, rel=1e-5)
    assert rows[1]["lr"] == pytest.approx((lrs[2] + lrs[3]) / 2, rel=1e-5)
    assert rows[1]["lr_last"] == pytest.approx(lrs[3], rel=1e-5) and lrs[3] > 0
    assert rows[0]["data/skipped"] == rows[1]["data/skipped"] == 1
    assert all(m["skipped"] == 0 for m in rows)


def test_update_count_is_the_schedule_step_and_skips_do_not_advance_it():
    """The loops log lr = schedule(update_count(opt_state)): a skipped (non-finite) update
    leaves the count, so the next update uses the same lr."""
    import jax
    import jax.numpy as jnp
    import ml_collections

    from o3video_jax.train.state import TrainState, make_optimizer, update_count
    from o3video_jax.train.steps import apply_gradients

    cfg = ml_collections.ConfigDict(
        dict(lr=1.0, schedule="linear", warmup_steps=0, total_steps=4, weight_decay=0.0,
             b1=0.9, b2=0.99, eps=1e-8, grad_clip=1.0, freeze_regex="^frozen", microbatches=1)
    )  # fmt: skip
    tx = make_optimizer(cfg)
    params = {"w": jnp.ones((2, 2)), "frozen": jnp.ones(2)}
    state = TrainState.create(params, tx, jax.random.PRNGKey(0))
    trainable = {"w": True, "frozen": False}
    grads = jax.tree.map(jnp.ones_like, params)
    counts = [int(update_count(state.opt_state))]
    for loss in (1.0, float("nan"), 1.0):
        state, m = apply_gradients(state, tx, jnp.float32(loss), grads, trainable)
        counts.append(int(update_count(state.opt_state)))
    assert counts == [0, 1, 1, 2] and int(state.step) == 3
