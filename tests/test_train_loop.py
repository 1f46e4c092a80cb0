"""The training loops end to end, through the CLI, on the tiny synthetic config.

Runs happen in subprocesses on ONE CPU device (the fake 8-device platform of conftest would
need a batch divisible by 8) and share a persistent compilation cache, so only the first run of
each step function pays for XLA compilation.
"""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from loop_fixtures import REPO, base_flags

CONFIG = os.path.join(REPO, "experiments", "configs", "synthetic.py")
TIMING = ("step_time", "data_time", "tokens_per_s")


def overrides(data, **kw):
    flags = {
        "data.synthetic.videos": 0,
        "data.media_root": data.media_root,
        "data.tokenizer_dir": data.tokenizer_dir,
        "optim.schedule": "constant",
        "log.progress": False,
        "log.tensorboard": False,
        **kw,
    }
    return [f"--config.{k}={v}" for k, v in flags.items()]


def cli(data, workdir, stage="sft", **kw):
    train_json = data.sft_json if stage == "sft" else data.rl_json
    return [
        sys.executable,
        "-m",
        "o3video_jax.train",
        f"--config={CONFIG}:size=tiny,stage={stage}",
        f"--workdir={workdir}",
        *overrides(data, **{"data.train_json": train_json, **kw}),
    ]


def run(args, env, timeout=240):
    p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def strip(rows, drop=TIMING):
    return [
        {k: v for k, v in r.items() if k not in drop and not k.startswith("time/")} for r in rows
    ]


def metrics_if_any(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f.read().splitlines() if line.endswith("}")]


def checkpoint_steps(workdir):
    d = os.path.join(workdir, "ckpt")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def test_sigkill_resume_matches_uninterrupted(tmp_path, loop_env, loop_data):
    env, data = loop_env, loop_data
    total = 8
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "killed"
    run(cli(data, ref_dir, total_steps=total, **{"ckpt.save_every": 2}), env)
    ref = metrics(ref_dir)
    assert [m["step"] for m in ref] == list(range(1, total + 1))

    # Same run with a far horizon (constant schedule: identical steps), killed once a
    # checkpoint has landed.
    proc = subprocess.Popen(
        cli(data, run_dir, total_steps=10_000, **{"ckpt.save_every": 2}),
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 180
    while not checkpoint_steps(run_dir):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint within 180 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    saved = checkpoint_steps(run_dir)[-1]
    assert 2 <= saved < total, f"checkpoint {saved} leaves nothing to compare"

    run(cli(data, run_dir, total_steps=total, **{"ckpt.save_every": 2}), env)
    got = metrics(run_dir)
    # metrics.jsonl reads as one run: the killed run's lines past the checkpoint were dropped.
    assert [m["step"] for m in got] == list(range(1, total + 1))
    assert strip(got[saved:]) == strip(ref[saved:])
    assert strip(got) == strip(ref)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert os.path.exists(run_dir / "hf" / name)


def hf_weights(workdir):
    from safetensors.numpy import load_file

    return load_file(os.path.join(workdir, "hf", "model.safetensors"))


def test_sigterm_saves_exits_cleanly_and_resume_matches_uninterrupted(
    tmp_path, loop_env, loop_data
):
    """A real SIGTERM to the CLI process mid-run: it finishes the step in flight, saves it and
    exits with code 0; rerunning the command resumes there and ends where an uninterrupted run
    ends."""
    env, data = loop_env, loop_data
    run_dir, ref_dir = tmp_path / "preempted", tmp_path / "ref"
    # No periodic saves: the only checkpoint can come from the SIGTERM.
    flags = {"ckpt.save_every": 0, "log.every": 1}
    log = tmp_path / "preempted.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cli(data, run_dir, total_steps=10_000, **flags),
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.time() + 180
            while len(logged := metrics_if_any(run_dir)) < 2:
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.time() < deadline, "no step logged within 180 s"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = log.read_text()
    assert code == 0, text[-3000:]
    found = re.findall(r"preempted at step (\d+): checkpoint saved", text)
    assert len(found) == 1, text[-3000:]
    k = int(found[0])
    assert k >= len(logged) >= 2  # the step in flight when the signal came, or the next
    assert checkpoint_steps(run_dir) == [k]
    assert [m["step"] for m in metrics(run_dir)] == list(range(1, k + 1))
    assert not (run_dir / "hf").exists()  # stopped, not finished

    total = k + 2
    resumed = run(cli(data, run_dir, total_steps=total, **flags), env)
    assert "preempted" not in resumed.stdout
    run(cli(data, ref_dir, total_steps=total, **flags), env)
    assert [m["step"] for m in metrics(run_dir)] == list(range(1, total + 1))
    assert strip(metrics(run_dir)) == strip(metrics(ref_dir))
    want, got = hf_weights(ref_dir), hf_weights(run_dir)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


PRELUDE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from o3video_jax.demo import load_config

    FLAGS, OUT = json.loads(sys.argv[1]), sys.argv[2]

    def config(stage, **kw):
        c = load_config("size=tiny,stage=" + stage)
        for k, v in {**FLAGS, **kw}.items():
            node = c
            *path, leaf = k.split(".")
            for p in path:
                node = node[p]
            node[leaf] = v
        return c
    """
)

NAN_DRIVER = PRELUDE + textwrap.dedent(
    """
    from o3video_jax.train import steps
    from o3video_jax.drivers import sft as loop

    BAD = 3  # the third batch gets NaN pixels
    orig, count = loop.sft_batch, [0]

    def poisoned(host):
        batch = orig(host)
        count[0] += 1
        if count[0] == BAD:
            px = np.full_like(batch["inputs"].pixel_values, np.nan)
            batch["inputs"] = batch["inputs"].replace(pixel_values=px)
        return batch

    loop.sft_batch = poisoned
    out = {}
    for policy in ("skip", "stop"):
        count[0] = 0
        try:
            loop.train(config("sft", nan_policy=policy), OUT + "/" + policy)
            out[policy] = "finished"
        except steps.NonFiniteLossError as e:
            out[policy] = "stopped: " + str(e)
    print("RESULT " + json.dumps(out))
    """
)


def test_nan_skip_and_stop(tmp_path, loop_env, loop_data):
    env, data = loop_env, loop_data
    flags = {**base_flags(data, "sft"), "total_steps": 5}
    p = run([sys.executable, "-c", NAN_DRIVER, json.dumps(flags), str(tmp_path)], env)
    result = json.loads(p.stdout.split("RESULT ", 1)[1])
    assert result["skip"] == "finished"
    assert result["stop"].startswith("stopped: non-finite loss nan")

    skip = {m["step"]: m for m in metrics(tmp_path / "skip")}
    assert [skip[s]["skipped"] for s in range(1, 6)] == [0, 0, 1, 0, 0]
    assert skip[3]["loss"] == "nan"
    assert skip[3]["param_norm"] == skip[2]["param_norm"]  # the update was not applied
    assert skip[3]["update_norm"] == 0.0
    assert skip[4]["param_norm"] != skip[3]["param_norm"]  # training went on
    from o3video_jax.checkpoints import hf

    _, params = hf.load(tmp_path / "skip" / "hf", progress=False)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax_leaves(params))

    stop = metrics(tmp_path / "stop")
    assert [m["step"] for m in stop] == [1, 2, 3] and stop[-1]["skipped"] == 1
    assert not os.path.exists(tmp_path / "stop" / "hf")  # no export of a stopped run


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


GSPO_KEYS = (
    "loss",
    "grad_norm",
    "param_norm",
    "update_norm",
    "clip_frac",
    "clip_low_frac",
    "clip_high_frac",
    "ratio_min",
    "ratio_mean",
    "ratio_max",
    "kl_mean",
    "adv_mean",
    "adv_std",
    "zero_variance_groups",
    "reward",
    "completion_len",
    "completion_len_max",
    "truncated_frac",
    "time/rollout",
    "time/logprobs",
    "time/update",
    *(
        f"reward/{k}"
        for k in (
            "ans_acc",
            "ans_tiou",
            "ans_viou",
            "thk_temporal_point",
            "thk_temporal_segment",
            "thk_spatial",
            "format",
            "total",
        )
    ),
)


GSPO_DRIVER = PRELUDE + textwrap.dedent(
    """
    from o3video_jax.drivers import gspo as rl_loop

    real = rl_loop.compute_rewards

    def rewards(completions, examples, **kw):
        # A random tiny model earns no reward at all, so no gradient; a deterministic bonus
        # that depends on the sampled text gives the updates real advantages to follow.
        r = real(completions, examples, **kw)
        r["total"] = r["total"] + np.asarray([len(c) % 5 / 4 for c in completions], np.float32)
        return r

    rl_loop.compute_rewards = rewards
    rl_loop.train(config("gspo", total_steps=2), OUT + "/full")
    rl_loop.train(config("gspo", total_steps=1), OUT + "/part")
    rl_loop.train(config("gspo", total_steps=2), OUT + "/part")
    """
)


def test_gspo_step_metrics_and_resume(tmp_path, loop_env, loop_data):
    env, data = loop_env, loop_data
    flags = {
        **base_flags(data, "gspo"),
        "rl.beta": 0.04,
        "rl.eps_low": 0.02,
        "rl.eps_high": 0.02,
        "rl.num_updates": 2,
        "rl.minibatches": 2,
        "optim.lr": 0.01,
        "ckpt.save_every": 1,
    }
    run([sys.executable, "-c", GSPO_DRIVER, json.dumps(flags), str(tmp_path)], env)
    full, part = tmp_path / "full", tmp_path / "part"
    assert checkpoint_steps(part)[-1] == 2

    rows = metrics(full)
    assert [m["step"] for m in rows] == [1, 2]
    for m in rows:
        missing = [k for k in GSPO_KEYS if k not in m]
        assert not missing, missing
        bad = {k: m[k] for k in GSPO_KEYS if not np.isfinite(float(m[k]))}
        assert not bad, bad
        assert m["skipped"] == 0 and m["grad_norm"] > 0
        assert m["ratio_min"] <= m["ratio_mean"] <= m["ratio_max"]
        assert 0 <= m["clip_frac"] <= 1 and 0 <= m["zero_variance_groups"] < 1
        assert 1 <= m["completion_len"] <= 32  # tiny config: max_new_tokens 32
        assert m["kl_mean"] >= 0
        # Four updates per rollout batch: all but the first see a moved policy, so the ratio
        # leaves 1 and, with eps 0.02 and lr 1e-2, the clipping engages.
        assert m["ratio_max"] > 1.0 or m["ratio_min"] < 1.0
    assert max(m["clip_frac"] for m in rows) > 0
    assert max(m["kl_mean"] for m in rows) > 0
    # Resumed from the step-1 checkpoint == uninterrupted.
    assert strip(metrics(part)) == strip(rows)


GSPO_SIGTERM_DRIVER = PRELUDE + textwrap.dedent(
    """
    import os, signal
    from o3video_jax.drivers import gspo as rl_loop

    real, calls, kill_at = rl_loop.compute_rewards, [0], [None]

    def rewards(completions, examples, **kw):
        calls[0] += 1
        if calls[0] == kill_at[0]:  # a real SIGTERM, in the middle of a GSPO step
            os.kill(os.getpid(), signal.SIGTERM)
        r = real(completions, examples, **kw)  # + a bonus, as in GSPO_DRIVER
        r["total"] = r["total"] + np.asarray([len(c) % 5 / 4 for c in completions], np.float32)
        return r

    rl_loop.compute_rewards = rewards
    rl_loop.train(config("gspo", total_steps=3), OUT + "/full")
    calls[0], kill_at[0] = 0, 2
    rl_loop.train(config("gspo", total_steps=10_000), OUT + "/part")
    with open(OUT + "/stopped.json", "w") as f:
        json.dump({"rollouts": calls[0], "ckpt": sorted(os.listdir(OUT + "/part/ckpt"))}, f)
    rl_loop.train(config("gspo", total_steps=3), OUT + "/part")
    rl_loop.train(config("gspo", total_steps=3), OUT + "/part")  # finished: a no-op, no crash
    """
)


def test_gspo_sigterm_saves_the_step_in_flight_and_resumes(tmp_path, loop_env, loop_data):
    env, data = loop_env, loop_data
    flags = {**base_flags(data, "gspo"), "rl.beta": 0.04, "optim.lr": 0.01, "ckpt.save_every": 0}
    p = run([sys.executable, "-c", GSPO_SIGTERM_DRIVER, json.dumps(flags), str(tmp_path)], env)
    full, part = tmp_path / "full", tmp_path / "part"
    # SIGTERM during step 2's rollout: step 2 finishes, is saved (the only checkpoint: no
    # periodic saves) and the loop returns; the process lived on to resume it.
    assert json.loads((tmp_path / "stopped.json").read_text()) == {"rollouts": 2, "ckpt": ["2"]}
    assert p.stdout.count("preempted at step 2: checkpoint saved") == 1
    rows = metrics(full)
    assert [m["step"] for m in rows] == [1, 2, 3]
    assert strip(metrics(part)) == strip(rows)
    want, got = hf_weights(full), hf_weights(part)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert all(m["update_norm"] > 0 for m in rows)  # the weights moved: their equality counts


def test_aot_needs_libtpu_and_a_valid_topology(monkeypatch):
    import importlib.util

    from o3video_jax.drivers import aot

    assert aot.parse_topology("v5p:4x4x4") == ("v5p", (4, 4, 4))
    assert aot.parse_topology("v5e:2x4") == ("v5e", (2, 4))
    with pytest.raises(ValueError, match="not like 'v5p:4x4x4'"):
        aot.parse_topology("v5p-128")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real(name, *a)
    )
    with pytest.raises(aot.LibTPUMissingError, match=r"needs libtpu.*pip install"):
        aot.topology_devices("v5p:4x4x4")


def test_aot_compiles_the_sft_step_for_a_tpu_topology(loop_env):
    env = loop_env
    import importlib.util

    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("libtpu is not installed (pip install -e '.[aot]')")
    p = run(
        [
            sys.executable,
            "-m",
            "o3video_jax.train.aot",
            f"--config={CONFIG}:size=tiny",
            "--config.data.batch_size=8",
            "--topology=v5p:2x2x1",
        ],
        env,
    )
    assert "v5p:2x2x1: 4 devices" in p.stdout
    temps = re.search(r"temporaries\s+([\d.]+) GiB", p.stdout)
    assert temps and float(temps.group(1)) > 0
