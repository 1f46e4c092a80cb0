"""The GSPO loop's wiring (issue 12 review): what reaches the update, not only what it returns.

One CPU device, a subprocess per module (loop_env / loop_data of conftest). With one update
per rollout batch the update sees the policy that sampled the batch, so its sequence ratios
are exactly 1 and nothing is clipped; the rollout ("old") log-probs are the current policy's,
the reference log-probs the initial parameters', also after a resume; the reward's sigma
schedule gets the original's p = (global_step + 1) / max_steps.
"""

import json
import sys
import textwrap

import numpy as np
from loop_fixtures import base_flags
from test_train_loop import PRELUDE, metrics, run

DRIVER = PRELUDE + textwrap.dedent(
    """
    import jax
    from o3video_jax.rl import gspo
    from o3video_jax.drivers import gspo as rl_loop

    real_rewards, real_update = rl_loop.compute_rewards, gspo.make_gspo_update
    seen = {"fractions": [], "rows": []}

    def rewards(completions, examples, **kw):
        seen["fractions"].append(kw["step_fraction"])
        r = real_rewards(completions, examples, **kw)
        # A random tiny model earns no reward: a bonus that depends on the text gives advantages.
        r["total"] = r["total"] + np.asarray([len(c) % 5 / 4 for c in completions], np.float32)
        return r

    class Interrupt(Exception):
        pass

    STOP = [None]

    def make_update(*a, **k):
        update = real_update(*a, **k)

        def wrapped(state, mb):
            if STOP[0] is not None and len(seen["rows"]) == STOP[0]:
                raise Interrupt  # after the previous step's checkpoint
            with jax.transfer_guard("allow"):
                seen["rows"].append({n: np.asarray(mb[n]) for n in ("old_logp", "ref_logp", "mask")})
            return update(state, mb)

        return wrapped

    rl_loop.compute_rewards = rewards
    gspo.make_gspo_update = make_update

    def train(workdir, tag, stop=None):
        seen["fractions"], seen["rows"], STOP[0] = [], [], stop
        try:
            rl_loop.train(config("gspo", total_steps=2), OUT + "/" + workdir)
        except Interrupt:
            pass
        arrays = {f"{n}{i}": v for i, r in enumerate(seen["rows"]) for n, v in r.items()}
        np.savez(f"{OUT}/{tag}.npz", fractions=seen["fractions"], **arrays)

    train("full", "full")
    train("part", "interrupted", stop=1)
    train("part", "resumed")
    """
)


def test_first_update_ratio_is_one_and_reference_is_the_initial_policy(
    tmp_path, loop_env, loop_data
):
    flags = {
        **base_flags(loop_data, "gspo"),
        "rl.beta": 0.04,
        "rl.old_logp": "rollout",
        "rl.num_updates": 1,
        "rl.minibatches": 1,
        "optim.lr": 0.01,
        "ckpt.save_every": 1,
    }
    run([sys.executable, "-c", DRIVER, json.dumps(flags), str(tmp_path)], loop_env)
    full, first, resumed = (
        np.load(tmp_path / f"{t}.npz") for t in ("full", "interrupted", "resumed")
    )

    # p = (global_step + 1) / max_steps: 1/2 then 2/2 (the old code passed 0 and 1/2).
    np.testing.assert_allclose(full["fractions"], [0.5, 1.0])
    np.testing.assert_allclose(first["fractions"], [0.5, 1.0])  # interrupted in step 2
    np.testing.assert_allclose(resumed["fractions"], [1.0])

    # One update per batch: the update's ratios are 1 and nothing clips, at every step.
    rows = metrics(tmp_path / "full")
    assert [m["step"] for m in rows] == [1, 2]
    for m in rows:
        assert abs(m["ratio_min"] - 1) < 1e-5 and abs(m["ratio_max"] - 1) < 1e-5, m
        assert m["clip_frac"] == 0 and m["grad_norm"] > 0

    # Step 1: the policy is the initial one, so old == ref, and both are real log-probs.
    mask = full["mask0"] > 0
    assert mask.sum() > 0 and (full["old_logp0"][mask] < 0).all()
    np.testing.assert_allclose(full["old_logp0"][mask], full["ref_logp0"][mask], atol=1e-5)
    # Step 2: the policy moved (old != ref) but the reference did not. The resumed run rebuilt
    # it from the initial parameters and restored the policy: the same rows, old and ref.
    mask = full["mask1"] > 0
    assert np.abs(full["old_logp1"][mask] - full["ref_logp1"][mask]).max() > 1e-3
    np.testing.assert_array_equal(resumed["mask0"], full["mask1"])
    for name in ("old_logp", "ref_logp"):
        np.testing.assert_allclose(resumed[name + "0"], full[name + "1"], atol=1e-6, err_msg=name)
    assert [m["step"] for m in metrics(tmp_path / "part")] == [1, 2]
