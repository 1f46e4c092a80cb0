"""Sweeps: the override helpers and run names, the plan's checks, printed launch commands,
the results table on hand-made metrics, and a real 2x2 sweep of the tiny synthetic config run
locally (a second invocation redoes nothing; a partial run resumes to the same metrics)."""

import csv
import io
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from loop_fixtures import REPO, base_flags

from o3video_jax.drivers.sft import TIMING_KEYS
from o3video_jax.sweep import product, run_name, runner, spec, sweep
from o3video_jax.sweep import results as sweep_results
from o3video_jax.sweep import zip as zip_
from o3video_jax.sweep.spec import fixed_argv
from o3video_jax.train import completion

sys.path.insert(0, os.path.join(REPO, "experiments", "configs"))
CONFIG = "experiments/configs/synthetic.py:size=tiny"


def _config():
    import synthetic

    return synthetic.get_config("size=tiny")


# ---- helpers and names ----
def test_product_zip_sweep():
    assert product({"a": [1, 2]}, {"b": [3, 4]}) == [
        {"a": 1, "b": 3},
        {"a": 1, "b": 4},
        {"a": 2, "b": 3},
        {"a": 2, "b": 4},
    ]
    assert zip_({"seed": [0, 1], "x.y": ["p", "q"]}) == [
        {"seed": 0, "x.y": "p"},
        {"seed": 1, "x.y": "q"},
    ]
    assert product(sweep("lr", [0.1]), zip_(sweep("s", [0, 1]), sweep("t", [5, 6]))) == [
        {"lr": 0.1, "s": 0, "t": 5},
        {"lr": 0.1, "s": 1, "t": 6},
    ]
    assert product({"a": [1, 2], "b": [3]}) == [{"a": 1, "b": 3}, {"a": 2, "b": 3}]
    with pytest.raises(ValueError, match=r"different lengths \[2, 3\]"):
        zip_(sweep("a", [1, 2]), sweep("b", [1, 2, 3]))
    with pytest.raises(ValueError, match="'a' is set by two factors"):
        product(sweep("a", [1]), sweep("a", [2]))
    with pytest.raises(TypeError, match="needs a list of values"):
        sweep("a", 3)


def test_check_rejects_bad_sweeps():
    for runs, error, message in [
        ({"a": [1]}, TypeError, "must return a list"),
        ([], ValueError, "no runs"),
        ([{"a b": 1}], ValueError, "not a dotted config path"),
        ([{"a": [1, 2]}], TypeError, "values must be str, int, float or bool"),
        ([{"a": 1}, {"a": 1}], ValueError, r"\[1\] repeats run 0"),
        ([3], TypeError, "not an override dict"),
    ]:
        with pytest.raises(error, match=message):
            spec.check(runs)


def test_run_names_are_short_safe_stable_and_distinct():
    assert run_name({}) == "base"
    assert run_name({"optim.lr": 1e-3, "seed": 0}) == "lr=0.001,seed=0"
    assert run_name({"seed": 0, "optim.lr": 3e-4}) == "seed=0,lr=0.0003"
    assert run_name({"seed": 1, "data.seed": 2}) == "seed=1,data.seed=2"  # shared last part
    assert run_name({"rl.beta": 0.0, "data.shuffle": False}) == "beta=0.0,shuffle=false"
    lossy = run_name({"model.hf_checkpoint": "/data/a b"})
    assert re.fullmatch(r"hf_checkpoint=_data_a_b-[0-9a-f]{8}", lossy)
    assert run_name({"model.hf_checkpoint": "_data_a_b"}) == "hf_checkpoint=_data_a_b"
    long = run_name({"a": "x" * 300})
    assert len(long) <= spec.MAX_NAME and long != run_name({"a": "x" * 301})
    for name in (lossy, long):
        assert re.fullmatch(r"[A-Za-z0-9._=,+-]+", name)


def test_fixed_argv_forwards_config_flags_verbatim():
    argv = ["--config", "c.py:a=1", "--config.x=1 2", "--sweep", "s.py", "--config.y", "3"]
    assert fixed_argv(argv) == ["--config.x=1 2", "--config.y", "3"]


# ---- plan and records ----
def test_plan_checks_every_override_before_running(tmp_path):
    c = _config()
    runs = runner.plan(c, [{"optim.lr": 0.01, "total_steps": 9}], str(tmp_path))
    assert runs[0].name == "lr=0.01,total_steps=9" and runs[0].total_steps == 9
    assert runs[0].workdir == str(tmp_path / "lr=0.01,total_steps=9")
    assert c.total_steps == 6  # the caller's config is untouched
    for overrides, error, message in [
        ({"optim.lrate": 0.1}, KeyError, "no field 'optim.lrate'"),
        ({"optimx.lr": 0.1}, KeyError, "no field 'optimx'"),
        ({"seed": "zero"}, TypeError, "seed='zero'"),
        ({"optim": 1}, TypeError, "config section"),
    ]:
        with pytest.raises(error, match=message):
            runner.plan(c, [overrides], str(tmp_path))
    with pytest.raises(ValueError, match="command line fixes"):
        runner.plan(c, [{"seed": 1}], str(tmp_path), fixed={"seed": 2})


def test_status_and_records(tmp_path):
    (run,) = runner.plan(_config(), [{"seed": 3}], str(tmp_path))
    assert runner.status(run) == ("new", None)
    os.makedirs(os.path.join(run.workdir, "ckpt", "4"))
    os.makedirs(os.path.join(run.workdir, "ckpt", "6.orbax-checkpoint-tmp-1"))
    assert runner.status(run) == ("partial", 4)
    os.makedirs(os.path.join(run.workdir, "ckpt", "6"))
    # A checkpoint at total_steps is not the end (the old rule said "finished"): only the
    # run's own marker is, written after its final save and export.
    assert run.total_steps == 6 and runner.status(run) == ("partial", 6)
    completion.mark(run.workdir, 6, 6, None)
    assert runner.status(run) == ("done", 6)
    out = io.StringIO()
    assert runner.run_local([run], CONFIG, {"x": 1}, [], out=out) == []  # no training started
    assert "done (step 6), skipped" in out.getvalue()
    runner._record(run, {"x": 1}, CONFIG)
    record = json.load(open(os.path.join(run.workdir, runner.RUN_FILE)))
    assert record["overrides"] == {"seed": 3} and record["fixed"] == {"x": 1}
    with pytest.raises(ValueError, match="use another --workdir"):
        runner._record(run, {"x": 2}, CONFIG)


def test_a_run_that_exits_0_without_the_marker_is_preempted(tmp_path, monkeypatch):
    """The sweep launches each run as a subprocess; here the subprocess is a stand-in that
    either stops cleanly after a checkpoint (SIGTERM: exit 0, no marker) or finishes."""
    run_a, run_b = runner.plan(_config(), product({"seed": [0, 1]}), str(tmp_path))

    def fake_train(cmd, **kw):
        workdir = cmd[cmd.index("--workdir") + 1]
        os.makedirs(os.path.join(workdir, "ckpt", "3"))
        if workdir == run_b.workdir:
            completion.mark(workdir, 3, 3, None)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(runner.subprocess, "run", fake_train)
    out = io.StringIO()
    assert runner.run_local([run_a, run_b], CONFIG, {}, [], out=out) == [run_a.name]
    text = out.getvalue()
    assert f"{run_a.name}: preempted at step 3" in text and f"{run_b.name}: done (step 3" in text
    assert runner.status(run_a) == ("partial", 3) and runner.status(run_b) == ("done", 3)
    assert sweep_results.collect(str(tmp_path))[0].status == "partial (3)"


def test_print_launch_commands_reach_launch_sh(tmp_path):
    runs = runner.plan(_config(), product({"seed": [0, 1]}), str(tmp_path))
    out = io.StringIO()
    runner.print_launch(
        runs, CONFIG, {"log.every": 5}, ["--config.log.every=5"], tpu_names=["va", "vb"], out=out
    )
    lines = [line for line in out.getvalue().splitlines() if not line.startswith("#")]
    assert len(lines) == 2
    cmd = shlex.split(lines[1])
    assert cmd == [
        "tpu_scripts/launch.sh",
        "--name",
        "vb",
        "--run",
        "seed=1",
        "--",
        "python3",
        "-m",
        "o3video_jax.train",
        "--config",
        CONFIG,
        "--workdir",
        str(tmp_path / "seed=1"),
        "--config.log.every=5",
        "--config.seed=1",
    ]
    assert os.path.exists(tmp_path / "seed=1" / runner.RUN_FILE)
    # launch.sh accepts the printed command as it is (its dry run prints the gcloud call).
    r = subprocess.run(
        [os.path.join(REPO, cmd[0]), "--zone", "z", "--dry_run", *cmd[1:]],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "o3video_runs/seed=1" in r.stdout and "--config.seed=1" in r.stdout
    with pytest.raises(ValueError, match="2 runs"):
        runner.print_launch(runs, CONFIG, {}, [], tpu_names=["one"], out=io.StringIO())


# ---- results on hand-made runs ----
def _fake_run(root, name, overrides, rows, done):
    d = root / name
    d.mkdir(parents=True)
    (d / runner.RUN_FILE).write_text(json.dumps({"name": name, "overrides": overrides}))
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if done:
        (d / runner.DONE_FILE).write_text(json.dumps({"step": rows[-1]["step"]}))
    else:
        (d / "ckpt" / str(rows[-1]["step"])).mkdir(parents=True)


def test_results_table_csv_and_png(tmp_path):
    _fake_run(
        tmp_path,
        "lr=0.1",
        {"optim.lr": 0.1},
        [{"step": 1, "loss": 3.0, "eval/acc": 0.2}, {"step": 2, "loss": 1.0, "eval/acc": 0.1}],
        True,
    )
    _fake_run(
        tmp_path,
        "lr=0.3",
        {"optim.lr": 0.3},
        [{"step": 1, "loss": 2.0, "eval/acc": 0.5}, {"step": 2, "loss": "nan", "eval/acc": 0.4}],
        True,
    )
    _fake_run(tmp_path, "lr=0.5", {"optim.lr": 0.5}, [{"step": 1, "loss": 2.5}], False)
    (tmp_path / "not_a_run").mkdir()
    out = io.StringIO()
    header, rows = sweep_results.report(str(tmp_path), out=out)
    assert header == [
        "run",
        "optim.lr",
        "status",
        "steps",
        "loss final",
        "loss best (min)",
        "eval/acc final",
        "eval/acc best (max)",
    ]
    nan = float("nan")
    expected = [
        ["lr=0.1 *", 0.1, "done", 2, 1.0, 1.0, 0.1, 0.2],  # best loss (min over runs of min)
        ["lr=0.3", 0.3, "done", 2, nan, 2.0, 0.4, 0.5],  # nan final, best among finite
        ["lr=0.5", 0.5, "partial (1)", 1, 2.5, 2.5, nan, nan],
    ]
    assert len(rows) == 3
    for row, exp in zip(rows, expected, strict=True):
        assert [str(x) for x in row] == [str(x) for x in exp]
    text = out.getvalue()
    assert text.splitlines()[0].startswith("| run | optim.lr | status |")
    assert "| lr=0.1 * | 0.1 | done | 2 | 1 | 1 | 0.1 | 0.2 |" in text
    with open(tmp_path / "results.csv") as f:
        table = list(csv.reader(f))
    assert [r[0] for r in table[1:]] == ["lr=0.1", "lr=0.3", "lr=0.5"] and table[0] == header
    png = (tmp_path / "results_loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and "loss of 3 runs" in text
    _, rows = sweep_results.report(str(tmp_path), metric="eval/acc", out=io.StringIO())
    assert rows[1][0] == "lr=0.3 *"  # the highest accuracy wins
    assert (tmp_path / "results_eval_acc.png").exists()
    with pytest.raises(ValueError, match="no run logged metric 'reward'"):
        sweep_results.report(str(tmp_path), metric="reward", out=io.StringIO())
    with pytest.raises(FileNotFoundError, match="no runs under"):
        sweep_results.report(str(tmp_path / "not_a_run"), out=io.StringIO())


# ---- a real sweep ----
def _flags(data):
    return dict(base_flags(data, "sft"), **{"ckpt.export_hf": False})


def _sweep_cli(root, sweep_file, data, env):
    cmd = [sys.executable, "-m", "o3video_jax.sweep", "--config", CONFIG, "--sweep", sweep_file]
    cmd += ["--workdir", str(root), *[f"--config.{k}={v}" for k, v in _flags(data).items()]]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _sweep_again(root, sweep_file, data, env):
    """The same sweep through the library (what the command line calls), without paying
    another interpreter start-up."""
    fixed = _flags(data)
    config = runner.apply_overrides(_config(), fixed)
    runs = runner.plan(config, spec.load(str(sweep_file)), str(root), fixed)
    argv = [f"--config.{k}={v}" for k, v in fixed.items()]
    out = io.StringIO()
    assert runner.run_local(runs, CONFIG, fixed, argv, env=env, out=out) == [], out.getvalue()
    return out.getvalue()


def _rows(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def test_local_sweep_2x2_skips_finished_and_resumes_partial(tmp_path, loop_env, loop_data):
    sweep_file = tmp_path / "sweep.py"
    sweep_file.write_text(
        "from o3video_jax.sweep import product\n"
        "def get_sweep():\n"
        "    return product({'total_steps': [2, 3]}, {'seed': [0, 1]})\n"
    )
    root = tmp_path / "root"
    out = _sweep_cli(root, sweep_file, loop_data, loop_env)
    names = ["total_steps=2,seed=0", "total_steps=2,seed=1", "total_steps=3,seed=0"]
    names.append("total_steps=3,seed=1")
    assert out.count(": starting") == 4 and out.count(": done (step") == 4
    before = {}
    for name in names:
        total = int(name[len("total_steps=")])
        done = json.load(open(root / name / runner.DONE_FILE))
        assert done["step"] == total
        before[name] = _rows(root / name)
        assert [r["step"] for r in before[name]] == list(range(1, total + 1))
    assert before[names[0]] != before[names[1]]  # the seed matters
    assert before[names[0]] == before[names[2]][:2]  # and total_steps only adds a step

    # A second invocation starts nothing.
    mtimes = {n: os.path.getmtime(root / n / "metrics.jsonl") for n in names}
    out = _sweep_again(root, sweep_file, loop_data, loop_env)
    assert out.count("skipped") == 4 and "starting" not in out and "resuming" not in out
    assert mtimes == {n: os.path.getmtime(root / n / "metrics.jsonl") for n in names}

    # A run killed after its step-2 checkpoint resumes there and ends as if uninterrupted.
    partial = root / names[3]
    os.remove(partial / runner.DONE_FILE)
    subprocess.run(["rm", "-rf", str(partial / "ckpt" / "3")], check=True)
    out = _sweep_again(root, sweep_file, loop_data, loop_env)
    assert f"{names[3]}: resuming from step 2" in out and out.count("skipped") == 3
    assert _rows(partial) == before[names[3]]

    text = io.StringIO()
    header, rows = sweep_results.report(str(root), out=text)
    assert header[:4] == ["run", "total_steps", "seed", "status"]
    assert [r[0].removesuffix(" *") for r in rows] == names
    for row, name in zip(rows, names, strict=True):
        assert row[1:4] == [int(name[12]), int(name[-1]), "done"]
        assert row[header.index("loss final")] == before[name][-1]["loss"]
    with open(root / "results.csv") as f:
        assert [r["run"] for r in csv.DictReader(f)] == names
    assert "loss of 4 runs" in text.getvalue()
    assert (root / "results_loss.png").read_bytes()[:4] == b"\x89PNG"


def test_example_sweeps_fit_their_configs(tmp_path):
    import gspo_qwen2_5_vl

    sweeps = os.path.join(REPO, "experiments", "sweeps")
    runs = runner.plan(_config(), spec.load(os.path.join(sweeps, "synthetic_lr_seed.py")), "r")
    assert [r.name for r in runs] == [
        "lr=0.001,seed=0",
        "lr=0.001,seed=1",
        "lr=0.003,seed=0",
        "lr=0.003,seed=1",
    ]
    gspo = gspo_qwen2_5_vl.get_config("size=7b")
    runs = runner.plan(gspo, spec.load(os.path.join(sweeps, "gspo_clip.py")), "r")
    assert len(runs) == 4 and runs[0].overrides == {
        "rl.eps_low": 3e-4,
        "rl.eps_high": 4e-4,
        "rl.beta": 0.0,
    }
    bad = tmp_path / "bad.py"
    bad.write_text("SWEEP = []\n")
    with pytest.raises(ValueError, match="defines no get_sweep"):
        spec.load(str(bad))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        spec.load(str(tmp_path / "missing.py"))
