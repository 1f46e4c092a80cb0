"""Periodic held-out evaluation (`log.eval_every`) in the SFT and GSPO loops.

The runs happen in one subprocess on ONE CPU device, as in tests/test_train_loop.py (with a
persistent compilation cache, so a step function rebuilt by the second run of a stage is not
compiled again). The driver trains the tiny synthetic config with and without evaluation, for
each stage, and recomputes the logged eval metrics independently from the checkpoints.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from loop_fixtures import REPO, base_flags

TIMING = ("step_time", "data_time", "tokens_per_s")


def flags(data, stage, **kw):
    held = data.heldout_media_root
    return {
        **base_flags(data, stage),
        # 3 held-out records: two batches of 2 rows, the second one half padding.
        "data.eval_json": os.path.join(
            held, "json_data", "STGR-SFT.json" if stage == "sft" else "STGR-RL.json"
        ),
        "data.eval_media_root": held,
        "ckpt.export_hf": False,
        "ckpt.keep": 5,
        **kw,
    }


PRELUDE = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp
    import numpy as np
    from o3video_jax.demo import load_config
    from o3video_jax.drivers import experiment
    from o3video_jax.train.metrics_log import read_metrics

    FLAGS, ROOT = json.loads(sys.argv[1]), sys.argv[2]
    RESULT = {}

    def config(stage, **kw):
        c = load_config("size=tiny,stage=" + stage)
        with c.unlocked():  # data.eval_media_root, log.eval_prompts may not be keys yet
            for k, v in {**FLAGS[stage], **kw}.items():
                node = c
                *path, leaf = k.split(".")
                for p in path:
                    node = node[p]
                node[leaf] = v
        return c

    def checkpoint_params(cfg, workdir, steps):
        exp = experiment.setup(cfg, workdir)
        out = {}
        for s in steps:
            state, _, _ = exp.checkpointer.restore(exp.state, step=s)
            out[s] = jax.device_get(state.params)
        exp.checkpointer.close()
        return exp, out
    """
)

SFT_PART = textwrap.dedent(
    """
    from o3video_jax.drivers import evaluation
    from o3video_jax.drivers import sft as loop

    OUT = ROOT + "/sft"
    made = []
    real_make = evaluation.make_sft_eval_step

    def spy(*a, **kw):
        made.append(real_make(*a, **kw))
        return made[-1]

    evaluation.make_sft_eval_step = spy
    loop.train(config("sft", **{"log.eval_every": 2}), OUT + "/eval")
    loop.train(config("sft"), OUT + "/plain")
    step_fn = made[0]
    compiles = [f._cache_size() for f in step_fn.compiled.values()]

    # Independent held-out CE: full [B, L, V] logits, no chunking, no mesh.
    cfg = config("sft", **{"log.eval_every": 2})
    exp, params = checkpoint_params(cfg, OUT + "/eval", [2, 3])
    forward = jax.jit(lambda p, inputs: exp.model.apply({"params": p}, inputs))
    ds = experiment.dataset(
        cfg, exp.tokenizer, exp.model_config, "sft", cfg.data.eval_json,
        cfg.data.eval_media_root, batch_size=2, shuffle=False, num_epochs=1,
    )
    batches = list(ds)
    ref = {}
    for s, p in params.items():
        nll = correct = tokens = 0.0
        for b in batches:
            logits = forward(p, b.inputs)
            logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
            t = np.asarray(b.targets)
            tok_logp = np.take_along_axis(np.asarray(logp), t[..., None], -1)[..., 0]
            m = np.asarray(b.loss_mask)
            nll -= float((tok_logp * m).sum())
            correct += float(((np.asarray(logits).argmax(-1) == t) * m).sum())
            tokens += float(m.sum())
        ref[s] = {"eval/loss": nll / tokens, "eval/accuracy": correct / tokens,
                  "eval/tokens": tokens}
    try:  # STGR-RL records have no SFT target: refused before the first step
        rl_json = cfg.data.eval_json.replace("STGR-SFT", "STGR-RL")
        loop.train(config("sft", **{"log.eval_every": 1, "data.eval_json": rl_json}), OUT + "/rl")
        refused = ""
    except ValueError as e:
        refused = str(e)
    RESULT["sft"] = {
        "refused": refused,
        "rl_steps": len(read_metrics(OUT + "/rl")),
        "eval": read_metrics(OUT + "/eval"),
        "plain": read_metrics(OUT + "/plain"),
        "ref": ref,
        "compiles": compiles,
        "rows": [int(np.asarray(b.inputs.segment_ids).any(-1).sum()) for b in batches],
    }
    """
)

GSPO_PART = textwrap.dedent(
    """
    from o3video_jax.drivers import heldout
    from o3video_jax.drivers import gspo as rl_loop

    OUT = ROOT + "/gspo"
    real = rl_loop.compute_rewards

    def rewards(completions, examples, **kw):
        # A random tiny model earns no reward: a bonus that fingerprints the text gives the
        # updates advantages to follow and the held-out "total" a value to compare.
        r = real(completions, examples, **kw)
        bonus = [sum(map(ord, c)) % 997 / 997 for c in completions]
        r["total"] = r["total"] + np.asarray(bonus, np.float32)
        return r

    rl_loop.compute_rewards = heldout.compute_rewards = rewards
    cfg = config("gspo", **{"log.eval_every": 1, "log.eval_prompts": 1})
    rl_loop.train(cfg, OUT + "/eval")
    rl_loop.train(config("gspo"), OUT + "/plain")
    exp, params = checkpoint_params(cfg, OUT + "/eval", [1, 2])
    ref = {}
    for s, p in params.items():
        # On the run's mesh, so that the loop's compiled sampler is reused.
        summary, items = heldout.evaluate(
            cfg, exp.model_config, p, exp.tokenizer, cfg.data.eval_json,
            cfg.data.eval_media_root, batch_size=2, max_prompts=1, mesh=exp.mesh,
            rules=exp.rules,
        )
        ref[s] = {"eval/" + k: v for k, v in summary.items()}
    RESULT["gspo"] = {
        "eval": read_metrics(OUT + "/eval"), "plain": read_metrics(OUT + "/plain"), "ref": ref
    }
    print("RESULT " + json.dumps(RESULT))
    """
)


@pytest.fixture(scope="module")
def results(tmp_path_factory, loop_env, loop_data):
    """Both stages, each trained with and without evaluation (one subprocess)."""
    env, data = loop_env, loop_data
    runs = {
        "sft": flags(data, "sft", total_steps=3, **{"ckpt.save_every": 2}),
        "gspo": flags(
            data,
            "gspo",
            total_steps=2,
            **{"optim.lr": 0.01, "ckpt.save_every": 1, "rl.beta": 0.0},
        ),
    }
    root = tmp_path_factory.mktemp("runs")
    p = subprocess.run(
        [sys.executable, "-c", PRELUDE + SFT_PART + GSPO_PART, json.dumps(runs), str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
        cwd=REPO,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.split("RESULT ", 1)[1])


def training_part(rows):
    return [
        {k: v for k, v in r.items() if k not in TIMING and not k.startswith(("eval/", "time/"))}
        for r in rows
    ]


def test_sft_eval_every(results):
    out = results["sft"]
    rows = {r["step"]: r for r in out["eval"]}
    assert [s for s, r in rows.items() if "eval/loss" in r] == [2, 3]  # every 2, and the last
    # Two eval batches, the second one with a padding row that must count for nothing.
    assert out["rows"] == [2, 1]
    assert out["compiles"] == [1]  # one compile for both evaluations and the padded batch
    for s in (2, 3):
        ref = out["ref"][str(s)]
        assert rows[s]["eval/tokens"] == ref["eval/tokens"] > 0
        assert rows[s]["eval/loss"] == pytest.approx(ref["eval/loss"], rel=1e-5)
        assert rows[s]["eval/accuracy"] == pytest.approx(ref["eval/accuracy"], abs=1e-6)
    assert rows[2]["eval/loss"] != rows[3]["eval/loss"]  # evaluated the params of its step
    # Training is untouched by the evaluation: the same batches, losses and updates.
    assert training_part(out["eval"]) == training_part(out["plain"])
    assert [r["step"] for r in out["plain"]] == [1, 2, 3]
    assert "gives no SFT example" in out["refused"] and out["rl_steps"] == 0


def test_gspo_eval_every(results):
    out = results["gspo"]
    rows = {r["step"]: r for r in out["eval"]}
    assert [s for s, r in rows.items() if "eval/total" in r] == [1, 2]
    for s in (1, 2):
        ref = out["ref"][str(s)]
        assert ref["eval/n"] == 1  # log.eval_prompts=1 cuts the first batch of 2 prompts
        for k in ("eval/total", "eval/format", "eval/acc", "eval/tiou", "eval/viou", "eval/mAM"):
            assert rows[s][k] == pytest.approx(ref[k], abs=1e-6), k
        assert rows[s]["eval/n"] == 1
    # The greedy completions (fingerprinted by the bonus) of the params of each step.
    assert rows[1]["eval/total"] != rows[2]["eval/total"]
    # Step 2 trains after an evaluation: same rollouts, rewards and updates as without.
    assert training_part(out["eval"]) == training_part(out["plain"])
    assert [r["step"] for r in out["plain"]] == [1, 2]


@pytest.mark.parametrize("stage", ["sft", "gspo"])
def test_eval_every_without_eval_json_raises_before_setup(tmp_path, loop_data, stage):
    data = loop_data
    from o3video_jax.demo import load_config
    from o3video_jax.drivers import gspo as rl_loop
    from o3video_jax.drivers import sft as loop

    train = loop.train if stage == "sft" else rl_loop.train
    c = load_config(f"size=tiny,stage={stage}")
    c.data.synthetic.videos = 0
    c.data.train_json = data.sft_json
    c.log.eval_every = 2
    with pytest.raises(ValueError, match=r"log.eval_every=2 needs held-out records.*eval_json"):
        train(c, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # raised before building anything
    c.log.eval_every = -1
    with pytest.raises(ValueError, match="log.eval_every must be >= 0"):
        train(c, str(tmp_path / "run"))
