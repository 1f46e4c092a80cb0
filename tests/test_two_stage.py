"""`stage="sft+gspo"`: one command runs SFT, exports, runs GSPO from the export; resumable.

The config split is checked against the single-stage configs; the run (tiny synthetic config,
one CPU device, a subprocess) is interrupted once in each stage, by a real preemption notice
(SIGTERM) in SFT and by a crash in GSPO, and its rerun must equal the uninterrupted run.
"""

import json
import os
import subprocess
import sys
import textwrap

import ml_collections
import numpy as np
import pytest
from loop_fixtures import REPO
from test_train_loop import metrics, run, strip

from o3video_jax.demo import load_config
from o3video_jax.drivers import two_stage


@pytest.mark.parametrize("size", ["tiny", "demo"])
def test_split_gives_the_single_stage_configs(size):
    config = load_config(f"size={size},stage=sft+gspo")
    sft, gspo = two_stage.split(config)
    assert sft.to_dict() == load_config(f"size={size},stage=sft").to_dict()
    assert gspo.to_dict() == load_config(f"size={size},stage=gspo").to_dict()
    # Only what differs is stored, and each stays overridable.
    assert "model" not in config.gspo_stage and config.gspo_stage.rl.beta == 0.04
    assert config.gspo_stage.total_steps == gspo.total_steps  # always overridable
    config.gspo_stage.optim.lr = 1e-5
    assert two_stage.split(config)[1].optim.lr == 1e-5
    assert two_stage.split(config)[0].optim.lr == sft.optim.lr


def test_split_rejects_bad_configs():
    config = load_config("size=tiny,stage=sft+gspo")
    with config.unlocked():
        config.gspo_stage.optim.no_such_field = 1.0
    with pytest.raises(ValueError, match="gspo_stage.optim.no_such_field is not a config field"):
        two_stage.split(config)
    config = load_config("size=tiny,stage=sft+gspo")
    config.ckpt.export_hf = False
    with pytest.raises(ValueError, match="export_hf"):
        two_stage.split(config)
    with pytest.raises(ValueError, match="sft\\+gspo"):
        two_stage.split(load_config("size=tiny,stage=sft"))
    a = ml_collections.ConfigDict({"a": 1, "b": {"c": 2, "d": 3}, "e": {"f": 5}})
    b = ml_collections.ConfigDict({"a": 1, "b": {"c": 2, "d": 4}, "e": {"f": 5}, "stage": "x"})
    assert two_stage.stage_overrides(a, b, always=()).to_dict() == {"b": {"d": 4}}
    assert two_stage.stage_overrides(a, b, always=("e.f", "a")).to_dict() == {
        "b": {"d": 4},
        "e": {"f": 5},
        "a": 1,
    }


DRIVER = textwrap.dedent(
    """
    import json, os, signal, sys
    import numpy as np
    from o3video_jax.demo import load_config
    from o3video_jax.drivers import gspo as rl_loop
    from o3video_jax.drivers import sft as sft_loop
    from o3video_jax.drivers import two_stage

    FLAGS, OUT = json.loads(sys.argv[1]), sys.argv[2]

    def config():
        c = load_config("size=tiny,stage=sft+gspo")
        for k, v in FLAGS.items():
            node = c
            *path, leaf = k.split(".")
            for p in path:
                node = node[p]
            node[leaf] = v
        return c

    class Crash(Exception):
        pass

    sft_calls, gspo_calls = [0], [0]
    real_batch, real_rewards = sft_loop.sft_batch, rl_loop.compute_rewards

    def sft_batch(host):
        sft_calls[0] += 1
        if PREEMPT_SFT_AT[0] == sft_calls[0]:
            os.kill(os.getpid(), signal.SIGTERM)  # a preemption notice: save and exit
        return real_batch(host)

    def rewards(completions, examples, **kw):
        gspo_calls[0] += 1
        if CRASH_GSPO_AT[0] == gspo_calls[0]:
            raise Crash
        r = real_rewards(completions, examples, **kw)
        r["total"] = r["total"] + np.asarray([len(c) % 5 / 4 for c in completions], np.float32)
        return r

    sft_loop.sft_batch, rl_loop.compute_rewards = sft_batch, rewards
    PREEMPT_SFT_AT, CRASH_GSPO_AT = [None], [None]
    log = []

    def attempt(workdir, preempt=None, crash=None):
        sft_calls[0] = gspo_calls[0] = 0
        PREEMPT_SFT_AT[0], CRASH_GSPO_AT[0] = preempt, crash
        try:
            out = two_stage.train(config(), os.path.join(OUT, workdir))
            # A stage's metrics: "none" = not run (SFT preempted), "-" = already finished.
            tag = lambda k: "none" if out[k] is None else (k if out[k] else "-")
            log.append([workdir, tag("sft"), tag("gspo")])
        except Crash:
            log.append([workdir, "crash"])
        log[-1] += [sft_calls[0], gspo_calls[0]]

    attempt("full")
    attempt("resumed", preempt=2)  # SFT preempted in its step 2
    attempt("resumed", crash=2)  # SFT resumes and finishes; GSPO crashes in its step 2
    attempt("resumed")  # SFT skipped; GSPO resumes
    attempt("resumed")  # both finished: nothing left to train
    print("RESULT " + json.dumps(log))
    """
)


def test_sft_then_gspo_resumes_at_either_stage(tmp_path, loop_env):
    flags = {
        "total_steps": 3,
        "gspo_stage.total_steps": 2,
        "ckpt.save_every": 1,
        "gspo_stage.ckpt.save_every": 1,  # the stage's own value otherwise (gspo_stage.ALWAYS)
        "data.synthetic.videos": 4,
        "data.synthetic.eval_videos": 1,
        "optim.schedule": "constant",
        "log.progress": False,
        "log.tensorboard": False,
    }
    p = run([sys.executable, "-c", DRIVER, json.dumps(flags), str(tmp_path)], loop_env, 1200)
    log = json.loads(p.stdout.split("RESULT ", 1)[1])
    assert log == [
        ["full", "sft", "gspo", 3, 2],
        ["resumed", "sft", "none", 2, 0],  # preempted in SFT step 2: no GSPO
        ["resumed", "crash", 1, 2],  # SFT's last step only, then GSPO step 1 and the crash
        ["resumed", "-", "gspo", 0, 1],  # SFT skipped, GSPO from its step-1 checkpoint
        ["resumed", "-", "-", 0, 0],  # both finished: nothing runs
    ], log
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    for d in (full, resumed):  # the whole run's marker, after GSPO (run_until_done.sh reads it)
        for marker in (
            d / "COMPLETE.json",
            d / "sft" / "COMPLETE.json",
            d / "gspo" / "COMPLETE.json",
        ):
            assert marker.exists(), marker
    for stage in ("sft", "gspo"):
        assert strip(metrics(resumed / stage)) == strip(metrics(full / stage)), stage
    assert [m["step"] for m in metrics(full / "gspo")] == [1, 2]
    # GSPO started from the SFT export, and its own export differs from it.
    from o3video_jax.checkpoints import hf

    _, sft_params = hf.load(full / "sft" / "hf", progress=False)
    for d in (full, resumed):
        _, params = hf.load(d / "gspo" / "hf", progress=False)
        diffs = [
            np.abs(np.asarray(a) - np.asarray(b)).max()
            for a, b in zip(jax_leaves(params), jax_leaves(sft_params), strict=True)
        ]
        assert max(diffs) > 0
    assert os.path.isdir(full / "synthetic") and not os.path.exists(full / "sft" / "synthetic")


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def test_cli_accepts_the_stage(tmp_path, loop_env):
    """The CLI dispatches stage=sft+gspo (it used to reject it); a bad GSPO override is named."""
    args = [
        sys.executable, "-m", "o3video_jax.train",
        "--config=" + os.path.join(REPO, "experiments", "configs", "synthetic.py")
        + ":size=tiny,stage=sft+gspo",
        f"--workdir={tmp_path}", "--config.ckpt.export_hf=False",
    ]  # fmt: skip
    p = subprocess.run(args, env=loop_env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert p.returncode != 0 and "ckpt.export_hf=True" in p.stderr, p.stderr[-2000:]
