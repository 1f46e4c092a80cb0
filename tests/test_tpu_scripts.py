"""tpu_scripts/*.sh against a fake `gcloud` on PATH.

The fake records every call's argv as a JSON line. With FAKE_GCLOUD_WORKER set it also plays
one TPU VM worker: `scp` copies into the worker's home and `ssh --command=C` runs C with bash
in that home, with a fake `python3` first on PATH (it records its argv and, as a training run,
waits for SIGTERM). So the tests run the real worker command lines the scripts build: the
launch quoting must survive to the program's argv, and launch must return while the run
goes on.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "tpu_scripts")

FAKE_GCLOUD = """\
#!{python}
import json, os, shutil, subprocess, sys
argv = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(argv) + "\\n")
home = os.environ.get("FAKE_GCLOUD_WORKER")
if home and argv[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
    src, dest = argv[4], argv[5].split(":", 1)[1]
    shutil.copy(src, os.path.join(home, dest))
elif home and argv[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
    command = next(a for a in argv if a.startswith("--command="))[len("--command="):]
    # The worker starts without uv (as a TPU VM image): setup_workers.sh must install it.
    path = [p for p in os.environ["PATH"].split(os.pathsep)
            if not os.path.exists(os.path.join(p, "uv"))]
    env = dict(os.environ, HOME=home,
               PATH=os.pathsep.join([os.environ["FAKE_WORKER_BIN"], *path]))
    sys.exit(subprocess.run(["bash", "-c", command], cwd=home, env=env).returncode)
"""

FAKE_PYTHON3 = """\
#!{python}
import json, os, shutil, signal, sys, time
with open(os.path.join(os.environ["HOME"], "python3_calls.jsonl"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
with open(os.path.join(os.environ["HOME"], "python3_argv0.jsonl"), "a") as f:
    f.write(json.dumps(sys.argv) + "\\n")
if sys.argv[1:] == ["-m", "pip", "install", "-q", "--user", "uv"]:
    os.makedirs(os.path.join(os.environ["HOME"], ".local", "bin"), exist_ok=True)
    shutil.copy(os.path.join(os.environ["FAKE_WORKER_BIN"], "fake_uv"),
                os.path.join(os.environ["HOME"], ".local", "bin", "uv"))
if sys.argv[1:3] == ["-m", "o3video_jax.train.supervise"]:  # the real one
    os.environ["PYTHONPATH"] = os.environ["FAKE_REPO"]
    os.execv(os.environ["FAKE_REAL_PYTHON"], ["python", *sys.argv[1:]])
if sys.argv[1:3] == ["-m", "o3video_jax.train"] and os.environ.get("FAKE_TRAIN_FINISHES_ON"):
    # run_until_done.sh: launch k finishes (the completion marker), earlier ones train on.
    runs = os.path.join(os.environ["HOME"], "train_runs")
    with open(runs, "a") as f:
        f.write("x")
    k = os.path.getsize(runs)
    print(f"training, launch {{k}}", flush=True)
    if k >= int(os.environ["FAKE_TRAIN_FINISHES_ON"]):
        args = sys.argv[1:]
        workdir = next((a.split("=", 1)[1] for a in args if a.startswith("--workdir=")), None)
        workdir = workdir or args[args.index("--workdir") + 1]
        with open(os.path.join(workdir, "COMPLETE.json"), "w") as f:
            f.write(json.dumps({{"step": 10}}))
        sys.exit(0)
    open(os.path.join(os.environ["HOME"], "training_started"), "w").close()
    time.sleep(120)
    sys.exit(1)
if sys.argv[1:3] == ["-m", "o3video_jax.train"]:
    def on_term(*_):  # as the train loop: save, exit (FAKE_IGNORE_TERM_ON: that node hangs)
        with open(os.path.join(os.environ["HOME"], "sigterm_at"), "w") as f:
            f.write(repr(time.time()))
        if os.environ.get("FAKE_IGNORE_TERM_ON") != os.environ.get("FAKE_NODE", ""):
            sys.exit(7)
    signal.signal(signal.SIGTERM, on_term)
    print("training", flush=True)
    time.sleep(60)
    sys.exit(1)
"""

# The worker's hostname: a multislice fake cloud names each node's worker (FAKE_HOSTNAME).
FAKE_HOSTNAME = """\
#!{python}
import os, socket
print(os.environ.get("FAKE_HOSTNAME") or socket.gethostname())
"""

# uv as setup_workers.sh uses it: `venv ... DIR` makes DIR/bin/python{,3} (the fake python3).
FAKE_UV = """\
#!{python}
import json, os, shutil, sys
with open(os.path.join(os.environ["HOME"], "uv_calls.jsonl"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if sys.argv[1] == "venv":
    bin_dir = os.path.join(sys.argv[-1], "bin")
    os.makedirs(bin_dir, exist_ok=True)
    for name in ("python", "python3"):
        shutil.copy(os.path.join(os.environ["FAKE_WORKER_BIN"], "python3"),
                    os.path.join(bin_dir, name))
"""


@pytest.fixture
def fake(tmp_path):
    bin_dir, worker_bin, home = tmp_path / "bin", tmp_path / "worker_bin", tmp_path / "home"
    for d in (bin_dir, worker_bin, home):
        d.mkdir()
    for path, text in (
        (bin_dir / "gcloud", FAKE_GCLOUD),
        (worker_bin / "python3", FAKE_PYTHON3),
        (worker_bin / "fake_uv", FAKE_UV),
        (worker_bin / "hostname", FAKE_HOSTNAME),
    ):
        path.write_text(text.format(python=sys.executable))
        path.chmod(0o755)
    log = tmp_path / "gcloud.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TPU_", "FAKE_GCLOUD_"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        FAKE_GCLOUD_LOG=str(log),
        FAKE_WORKER_BIN=str(worker_bin),
        FAKE_REPO=REPO,
        FAKE_REAL_PYTHON=sys.executable,
    )

    class Fake:
        def __init__(self):
            self.env, self.home, self.log = env, home, log

        def run(self, script, *args, worker=False, check=True, **env_overrides):
            e = dict(self.env, **env_overrides)
            if worker:
                e["FAKE_GCLOUD_WORKER"] = str(self.home)
            r = subprocess.run(
                [os.path.join(SCRIPTS, script), *args],
                env=e,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if check and r.returncode != 0:
                raise AssertionError(f"{script} failed ({r.returncode}):\n{r.stderr}")
            return r

        def calls(self):
            if not self.log.exists():
                return []
            return [json.loads(line) for line in self.log.read_text().splitlines()]

        def python3_calls(self):
            return self._jsonl("python3_calls.jsonl")

        def python3_argv(self):  # argv[0] included: which python ran
            return self._jsonl("python3_argv0.jsonl")

        def uv_calls(self):
            return self._jsonl("uv_calls.jsonl")

        def _jsonl(self, name):
            p = self.home / name
            return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []

        def make_venv(self):  # what setup_workers.sh leaves: ~/o3video_venv/bin/python{,3}
            bin_dir = self.home / "o3video_venv" / "bin"
            bin_dir.mkdir(parents=True, exist_ok=True)
            for name in ("python", "python3"):
                (bin_dir / name).write_text((worker_bin / "python3").read_text())
                (bin_dir / name).chmod(0o755)

    f = Fake()
    yield f
    for pid_file in home.glob("o3video_runs/*/*.pid"):  # never leave a detached run behind
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def _dry_and_real(fake, script, *args, **env):
    """The commands --dry_run prints, and the argv the same call passes to gcloud."""
    cut = args.index("--") if "--" in args else len(args)  # options go before the command
    dry = fake.run(script, *args[:cut], "--dry_run", *args[cut:], **env)
    assert fake.calls() == [], "--dry_run must not call gcloud"
    printed = [shlex.split(line) for line in dry.stdout.splitlines() if line.startswith("gcloud")]
    fake.run(script, *args, **env)
    real = fake.calls()
    fake.log.unlink()
    assert printed == [["gcloud", *c] for c in real]
    return real


CREATE_CASES = [
    (
        ["--type", "v5p-64"],
        [
            "compute tpus tpu-vm create o3v --zone=us-east5-a --accelerator-type=v5p-64 "
            "--version=v2-alpha-tpuv5"
        ],
    ),
    (
        ["--type", "v6e-8", "--spot", "--project", "my-proj"],
        [
            "compute tpus tpu-vm create o3v --zone=us-east5-a --project=my-proj "
            "--accelerator-type=v6e-8 --version=v2-alpha-tpuv6e --spot"
        ],
    ),
    (
        ["--type", "v5litepod-16"],
        [
            "compute tpus tpu-vm create o3v --zone=us-east5-a --accelerator-type=v5litepod-16 "
            "--version=v2-alpha-tpuv5-lite"
        ],
    ),
    (
        ["--type", "v4-32", "--runtime", "custom-rt"],
        [
            "compute tpus tpu-vm create o3v --zone=us-east5-a --accelerator-type=v4-32 "
            "--version=custom-rt"
        ],
    ),
    (
        ["--type", "v6e-16", "--queued", "--spot", "--valid_for", "6h"],
        [
            "compute tpus queued-resources create o3v-qr --zone=us-east5-a --node-id=o3v "
            "--accelerator-type=v6e-16 --runtime-version=v2-alpha-tpuv6e --spot "
            "--valid-until-duration=6h"
        ],
    ),
]


CREATE_CASES += [
    (  # anything else goes to gcloud as given, after our flags
        "--type v5p-16 --reserved --network net-a --subnetwork sub-a --internal-ips "
        "--service-account sa@p.iam.gserviceaccount.com --scopes=cloud-platform "
        "--boot-disk-size 200GB --labels team=o3v".split(),
        [
            "compute tpus tpu-vm create o3v --zone=us-east5-a --accelerator-type=v5p-16 "
            "--version=v2-alpha-tpuv5 --reserved --network net-a --subnetwork sub-a "
            "--internal-ips --service-account sa@p.iam.gserviceaccount.com "
            "--scopes=cloud-platform --boot-disk-size 200GB --labels team=o3v"
        ],
    ),
    (
        "--type v6e-64 --queued --spot --internal-ips --labels=a=b".split(),
        [
            "compute tpus queued-resources create o3v-qr --zone=us-east5-a --node-id=o3v "
            "--accelerator-type=v6e-64 --runtime-version=v2-alpha-tpuv6e --spot "
            "--internal-ips --labels=a=b"
        ],
    ),
    (  # multislice: the nodes are named by prefix (o3v-0, o3v-1), not --node-id
        "--type v5p-64 --queued --node-count 2 --node-prefix o3v".split(),
        [
            "compute tpus queued-resources create o3v-qr --zone=us-east5-a "
            "--accelerator-type=v5p-64 --runtime-version=v2-alpha-tpuv5 --node-count 2 "
            "--node-prefix o3v"
        ],
    ),
]


@pytest.mark.parametrize("args,expected", CREATE_CASES)
def test_create_commands(fake, args, expected):
    calls = _dry_and_real(fake, "create_tpu_vm.sh", "--name", "o3v", "--zone", "us-east5-a", *args)
    assert calls == [e.split() for e in expected]


def test_create_from_environment_and_bad_inputs(fake):
    calls = _dry_and_real(
        fake, "create_tpu_vm.sh", TPU_NAME="envtpu", TPU_ZONE="europe-west4-a", TPU_TYPE="v4-8"
    )
    assert calls == [
        "compute tpus tpu-vm create envtpu --zone=europe-west4-a --accelerator-type=v4-8 "
        "--version=tpu-ubuntu2204-base".split()
    ]
    for args, message in [
        (["--zone", "z", "--type", "v5p-8"], "no TPU name"),
        (["--name", "n", "--type", "v5p-8"], "no zone"),
        (["--name", "n", "--zone", "z"], "no accelerator type"),
        (["--name", "n", "--zone", "z", "--type", "v9x-8"], "no default runtime"),
        (["--name", "n", "--zone", "z", "--type", "v5p-8", "--wait"], "apply to --queued"),
        (["--name", "n", "--zone", "z", "--type", "v5p-8", "--spot", "x"], "unexpected argument"),
    ]:
        r = fake.run("create_tpu_vm.sh", *args, check=False)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
    assert fake.calls() == []


def test_queued_wait_polls_until_active(fake, tmp_path):
    # A gcloud whose `describe` answers WAITING_FOR_RESOURCES once, then ACTIVE.
    states = tmp_path / "states"
    states.write_text("WAITING_FOR_RESOURCES\nACTIVE\n")
    (tmp_path / "bin" / "gcloud").write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent(f"""\
        import json, os, sys
        with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
            f.write(json.dumps(sys.argv[1:]) + "\\n")
        if "describe" in sys.argv:
            lines = open({str(states)!r}).read().splitlines()
            print(lines[0])
            open({str(states)!r}, "w").write("\\n".join(lines[1:]) + "\\n")
        """)
    )
    r = fake.run(
        "create_tpu_vm.sh",
        *"--name o3v --zone z --type v5p-64 --queued --wait".split(),
        TPU_POLL_S="0",
    )
    calls = fake.calls()
    assert [c[:4] for c in calls] == [["compute", "tpus", "queued-resources", "create"]] + [
        ["compute", "tpus", "queued-resources", "describe"]
    ] * 2
    assert "ACTIVE" in r.stdout


def test_queued_wait_rerun_polls_the_existing_request(fake, tmp_path):
    """A rerun of `--queued --wait` (a dropped terminal, run_until_done.sh) finds the request
    already there: it polls it instead of failing."""
    (tmp_path / "bin" / "gcloud").write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent("""\
        import json, os, sys
        with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
            f.write(json.dumps(sys.argv[1:]) + "\\n")
        if "create" in sys.argv:
            print("ERROR: (gcloud.compute.tpus.queued-resources.create) Resource "
                  "'projects/p/locations/z/queuedResources/o3v-qr' already exists",
                  file=sys.stderr)
            sys.exit(1)
        if "describe" in sys.argv:
            print("ACTIVE")
        """)
    )
    args = "--name o3v --zone z --type v5p-64 --queued --wait".split()
    r = fake.run("create_tpu_vm.sh", *args, TPU_POLL_S="0")
    assert "o3v-qr already exists: waiting for it" in r.stdout and "ACTIVE" in r.stdout
    assert [c[3] for c in fake.calls()] == ["create", "describe"]
    # Without --wait, or with another error, the failure stands.
    fake.log.unlink()
    r = fake.run("create_tpu_vm.sh", *args[:-1], check=False)
    assert r.returncode == 1 and [c[3] for c in fake.calls()] == ["create"]


def test_delete_and_status_commands(fake):
    assert _dry_and_real(fake, "delete_tpu_vm.sh", "--name", "o3v", "--zone", "z") == [
        "compute tpus tpu-vm delete o3v --zone=z --quiet".split()
    ]
    assert _dry_and_real(fake, "delete_tpu_vm.sh", "--name", "o3v", "--zone", "z", "--queued") == [
        "compute tpus queued-resources delete o3v-qr --zone=z --force --quiet".split()
    ]
    calls = _dry_and_real(fake, "status.sh", "--name", "o3v", "--zone", "z", "--queued")
    assert [c[:5] for c in calls] == [
        ["compute", "tpus", "queued-resources", "describe", "o3v-qr"],
        ["compute", "tpus", "tpu-vm", "describe", "o3v"],
    ]


def test_setup_replaces_the_workers_copy(fake):
    args = ["--name", "o3v", "--zone", "z"]
    fake.run("setup_workers.sh", *args, worker=True)
    code = fake.home / "o3video_jax"
    assert (code / "setup.py").read_text() == open(os.path.join(REPO, "setup.py")).read()
    assert (code / "tpu_scripts" / "launch.sh").exists()
    (code / "stale.py").write_text("old")  # a file deleted locally since the last sync
    fake.run("setup_workers.sh", *args, worker=True)
    assert not (code / "stale.py").exists()
    assert not (code / "o3video_jax" / "setup.py").exists()  # no nested second copy
    assert sorted(p.name for p in fake.home.iterdir() if "o3video_jax" in p.name) == [
        "o3video_jax"
    ]  # no leftover tarball or temporary folder
    assert not any(p.name in (".git", ".venv") for p in code.iterdir())
    # uv is installed once (the second run finds it), then the same venv and pinned install.
    home = str(fake.home)
    venv = f"{home}/o3video_venv"
    pip = [c for c in fake.python3_argv() if "pip" in c]
    assert [c[1:] for c in pip] == [["-m", "pip", "install", "-q", "--user", "uv"]]
    assert pip[0][0].endswith("worker_bin/python3")  # the image's python3, not the venv's
    make = ["venv", "-q", "--allow-existing", "--python", "3.11", venv]
    install = ["pip", "install", "-q", "--python", f"{venv}/bin/python"]
    install += ["-c", "tpu_scripts/constraints-tpu.txt", "-e", ".[tpu]"]
    assert fake.uv_calls() == [make, install] * 2
    checks = [c for c in fake.python3_argv() if c[0] == f"{venv}/bin/python"]
    assert len(checks) == 2 and checks[0][1] == "-c" and "jax.__version__" in checks[0][2]
    calls = fake.calls()
    assert [c[:4] for c in calls] == [
        ["compute", "tpus", "tpu-vm", "scp"],
        ["compute", "tpus", "tpu-vm", "ssh"],
    ] * 2
    assert "--worker=all" in calls[0] and "--worker=all" in calls[1]
    r = fake.run("setup_workers.sh", *args, "--remote_dir", "/", check=False)
    assert r.returncode == 2 and "--remote_dir" in r.stderr
    for bad, message in [
        (["--python", "3.10"], "3.11 or newer"),
        (["--python", "python3"], "3.11 or newer"),
        (["--constraints", "nope.txt"], "not a file"),
        (["--venv", "a b"], "--venv"),
    ]:
        r = fake.run("setup_workers.sh", *args, *bad, check=False)
        assert r.returncode == 2 and message in r.stderr, (bad, r.stderr)


def test_setup_python_and_venv_choices(fake):
    fake.run(
        "setup_workers.sh",
        *"--name o3v --zone z --python 3.12 --venv /opt/env --extra tpu,test".split(),
        worker=True,
    )
    assert fake.uv_calls()[:2] == [
        ["venv", "-q", "--allow-existing", "--python", "3.12", "/opt/env"],
        [
            "pip",
            "install",
            "-q",
            "--python",
            "/opt/env/bin/python",
            "-c",
            "tpu_scripts/constraints-tpu.txt",
            "-e",
            ".[tpu,test]",
        ],
    ]


def test_constraints_pin_the_versions_the_aot_rows_were_checked_with():
    """tpu_scripts/constraints-tpu.txt pins what README's AOT rows name (libtpu) and what this
    checkout's tests run (jax, jaxlib: tests/test_versions.py checks the floors)."""
    from importlib.metadata import version

    pins = {}
    with open(os.path.join(SCRIPTS, "constraints-tpu.txt")) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if line:
                name, _, v = line.partition("==")
                pins[name] = v
    assert set(pins) == {"jax", "jaxlib", "libtpu"}
    with open(os.path.join(REPO, "README.md")) as f:
        readme_libtpu = set(re.findall(r"libtpu (\d+\.\d+\.\d+(?:\.\d+)?)", f.read()))
    assert readme_libtpu == {pins["libtpu"]}
    assert pins["jax"] == pins["jaxlib"] == version("jax") == version("jaxlib")


def _pid(fake, run):
    files = list((fake.home / "o3video_runs" / run).glob("*.pid"))
    assert len(files) == 1
    return int(files[0].read_text())


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def _wait_for(predicate, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_launch_detaches_quotes_exactly_and_stops(fake):
    (fake.home / "o3video_jax").mkdir()  # the code folder setup_workers.sh makes
    fake.make_venv()
    workdir = """gs://bucket/it's a "run" $HOME `x` \\n"""
    program = ["python3", "-m", "o3video_jax.train", "--workdir", workdir, "--config.x=a b"]
    common = ["--name", "o3v", "--zone", "z", "--run", "sft1"]
    t0 = time.monotonic()
    r = fake.run(
        "launch.sh",
        *common,
        "--logs_to",
        "none",
        "--env",
        "MY_FLAG=1 2",
        "--",
        *program,
        worker=True,
    )
    launch_s = time.monotonic() - t0
    assert "started sft1" in r.stdout
    ssh = fake.calls()[-1]
    assert ssh[:5] == ["compute", "tpus", "tpu-vm", "ssh", "o3v"] and "--worker=all" in ssh
    command = next(a for a in ssh if a.startswith("--command="))
    assert "setsid nohup bash" in command and "< /dev/null &" in command
    # The program got exactly our argv and is still running after launch returned.
    assert _wait_for(
        lambda: any(c[:2] == ["-m", "o3video_jax.train"] for c in fake.python3_calls())
    )
    assert [c for c in fake.python3_calls() if c[:2] == ["-m", "o3video_jax.train"]] == [
        program[1:]
    ]
    # `python3` on the command line is the venv's (launch.sh puts its bin/ first on PATH).
    ran = [c for c in fake.python3_argv() if c[1:3] == ["-m", "o3video_jax.train"]]
    assert [c[0] for c in ran] == [str(fake.home / "o3video_venv" / "bin" / "python3")]
    pid = _pid(fake, "sft1")
    assert _alive(pid), "the run must outlive the ssh command"
    assert launch_s < 30  # the fake program sleeps 60 s: launch did not wait for it
    run_sh = (fake.home / "o3video_runs" / "sft1" / "run.sh").read_text()
    assert "export JAX_COMPILATION_CACHE_DIR=" in run_sh and "export MY_FLAG='1 2'" in run_sh

    again = fake.run(
        "launch.sh", *common, "--logs_to", "none", "--", *program, worker=True, check=False
    )
    assert again.returncode != 0 and "still running" in again.stderr

    status = fake.run("status.sh", *common, worker=True)
    assert "sft1: running" in status.stdout
    stop = fake.run("stop.sh", *common, "--grace", "20", worker=True)
    assert "SIGTERM sent" in stop.stdout and "SIGKILL" not in stop.stdout
    assert _wait_for(lambda: not _alive(pid))
    exit_files = list((fake.home / "o3video_runs" / "sft1").glob("*.exit"))
    assert [f.read_text().strip() for f in exit_files] == ["7"]  # the program's SIGTERM exit
    assert "sft1: exited 7" in fake.run("status.sh", *common, worker=True).stdout
    logs = fake.run("logs.sh", *common, "--lines", "50", worker=True).stdout
    assert "training" in logs and "exit status 7" in logs and logs.startswith("[")
    assert "is not running" in fake.run("stop.sh", *common, worker=True).stdout


def test_launch_mirrors_the_log_into_the_workdir_and_records_the_exit(fake, tmp_path):
    """The command's --workdir gets logs/LAUNCH_ID/HOST.log while it runs and HOST.exit at the
    end (o3video_jax.train.supervise, run for real on the fake worker)."""
    (fake.home / "o3video_jax").mkdir()
    fake.make_venv()
    workdir = tmp_path / "bucket" / "run 1"
    program = ["python3", "-m", "o3video_jax.train", "--workdir", str(workdir), "--x=1"]
    common = ["--name", "o3v", "--zone", "z", "--run", "r2"]
    fake.run("launch.sh", *common, "--watch_every", "1", "--", *program, worker=True)
    assert _wait_for(lambda: list(workdir.glob("logs/*/*.log")), timeout=60)
    (log,) = workdir.glob("logs/*/*.log")
    assert re.fullmatch(r"\d{8}T\d{6}Z", log.parent.name)
    assert _wait_for(lambda: "training" in log.read_text(), timeout=30)
    trains = [c for c in fake.python3_calls() if c[:2] == ["-m", "o3video_jax.train"]]
    assert trains == [program[1:]]  # the quoting survives the wrapper
    assert not list(workdir.glob("logs/*/*.exit"))
    fake.run("stop.sh", *common, "--grace", "30", worker=True)
    exit_file = log.with_suffix(".exit")
    assert _wait_for(exit_file.exists, timeout=30)
    assert exit_file.read_text().strip() == "7"  # the program's own SIGTERM exit
    assert "[launch]" in log.read_text()


def test_launch_without_the_venv_says_so(fake):
    (fake.home / "o3video_jax").mkdir()
    fake.run(
        "launch.sh",
        "--name",
        "o3v",
        "--zone",
        "z",
        "--run",
        "r",
        "--",
        "python3",
        "-V",
        worker=True,
    )
    run_dir = fake.home / "o3video_runs" / "r"
    assert _wait_for(lambda: list(run_dir.glob("*.exit")))
    assert [f.read_text().strip() for f in run_dir.glob("*.exit")] == ["127"]
    log = "".join(f.read_text() for f in run_dir.glob("*.log"))
    assert "no Python environment" in log and "setup_workers.sh" in log
    assert fake.python3_calls() == []


def test_launch_bad_inputs(fake):
    common = ["--name", "o3v", "--zone", "z"]
    for args, message in [
        (common, "no command"),
        ([*common, "--run", "a/b", "--", "true"], "run name"),
        ([*common, "--env", "1X=2", "--", "true"], "--env needs KEY=VALUE"),
        ([*common, "python3", "x.py"], "put the command after --"),
    ]:
        r = fake.run("launch.sh", *args, check=False)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
    assert fake.calls() == []


def test_scripts_have_help_and_pass_shellcheck():
    scripts = sorted(f for f in os.listdir(SCRIPTS) if f.endswith(".sh") and f != "_common.sh")
    assert {
        "create_tpu_vm.sh",
        "setup_workers.sh",
        "launch.sh",
        "logs.sh",
        "status.sh",
        "stop.sh",
        "delete_tpu_vm.sh",
        "aot_check.sh",
    } <= set(scripts)
    for s in scripts:
        if s == "aot_check.sh":
            continue
        r = subprocess.run([os.path.join(SCRIPTS, s), "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "Usage: tpu_scripts/" + s in r.stdout, s
    shellcheck = subprocess.run(["which", "shellcheck"], capture_output=True).returncode == 0
    if not shellcheck:
        pytest.skip("shellcheck is not installed")
    r = subprocess.run(
        ["shellcheck", *scripts, "_common.sh"], cwd=SCRIPTS, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout


def test_older_positional_form_still_works(fake):
    assert _dry_and_real(fake, "create_tpu_vm.sh", "o3v", "us-east5-a", "v5p-8") == [
        "compute tpus tpu-vm create o3v --zone=us-east5-a --accelerator-type=v5p-8 "
        "--version=v2-alpha-tpuv5".split()
    ]
    calls = _dry_and_real(fake, "launch.sh", "o3v", "us-east5-a", "--", "python3", "-V")
    assert calls[0][:7] == "compute tpus tpu-vm ssh o3v --zone=us-east5-a --worker=all".split()
    r = fake.run("stop.sh", "o3v", "z", "extra", check=False)
    assert r.returncode == 2 and "unexpected argument 'extra'" in r.stderr


# A cloud with one TPU VM whose state lives in a file: create/describe/delete, and scp/ssh to its
# one worker (as FAKE_GCLOUD) while it exists. The first time `describe` finds a run training,
# the VM is deleted under it (its processes SIGKILLed), as a preemption or an operator would.
FAKE_CLOUD = """\
#!{python}
import glob, json, os, shutil, signal, subprocess, sys
argv = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(argv) + "\\n")
state_file = os.environ["FAKE_CLOUD_STATE"]
st = json.load(open(state_file)) if os.path.exists(state_file) else {{"vm": None, "deleted": 0}}
home = os.environ["FAKE_GCLOUD_WORKER"]
def save():
    json.dump(st, open(state_file, "w"))
def gone():
    print("ERROR: (gcloud) NOT_FOUND: node not found", file=sys.stderr)
    sys.exit(1)
what = argv[:4]
if what[:3] == ["compute", "tpus", "queued-resources"]:  # a queued request NAME-qr for node NAME
    if argv[3] == "create":
        if st.get("qr"):
            print("ERROR: already exists", file=sys.stderr); sys.exit(1)
        st["qr"], st["vm"] = "ACTIVE", "READY"; save()
    elif argv[3] == "delete":
        st["qr"] = st["vm"] = None; save()
    elif argv[3] == "describe":
        if not st.get("qr"):
            gone()
        print(st["qr"])
    sys.exit(0)
if what == ["compute", "tpus", "tpu-vm", "create"]:
    st["vm"] = "READY"; save()
elif what == ["compute", "tpus", "tpu-vm", "delete"]:
    st["vm"] = None; save()
elif what == ["compute", "tpus", "tpu-vm", "describe"]:
    if st["vm"] and st["deleted"] < int(os.environ.get("FAKE_DELETIONS", "1")) and \\
            os.path.exists(os.path.join(home, "training_started")):
        for pid_file in glob.glob(os.path.join(home, "o3video_runs", "*", "*.pid")):
            try:
                os.killpg(int(open(pid_file).read()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        os.remove(os.path.join(home, "training_started"))
        for d in ("o3video_runs", "o3video_jax", "o3video_venv", ".local"):  # a new VM's disk
            shutil.rmtree(os.path.join(home, d), ignore_errors=True)
        st["vm"] = None; st["deleted"] += 1
        if st.get("qr"):  # a preempted spot request: its node is gone, the request suspended
            st["qr"] = "SUSPENDED"
        save()
    if not st["vm"]:
        gone()
    print(st["vm"])
elif what[:3] == ["compute", "tpus", "tpu-vm"]:
    if not st["vm"]:
        gone()
    if argv[3] == "scp":
        shutil.copy(argv[4], os.path.join(home, argv[5].split(":", 1)[1]))
    else:
        command = next(a for a in argv if a.startswith("--command="))[len("--command="):]
        path = [p for p in os.environ["PATH"].split(os.pathsep)
                if not os.path.exists(os.path.join(p, "uv"))]
        env = dict(os.environ, HOME=home,
                   PATH=os.pathsep.join([os.environ["FAKE_WORKER_BIN"], *path]))
        sys.exit(subprocess.run(["bash", "-c", command], cwd=home, env=env).returncode)
else:
    sys.exit(f"fake cloud: unexpected {{argv}}")
"""


@pytest.mark.parametrize("max_attempts", [3, 1])
def test_run_until_done_recreates_a_deleted_slice_and_relaunches(fake, tmp_path, max_attempts):
    (tmp_path / "bin" / "gcloud").write_text(FAKE_CLOUD.format(python=sys.executable))
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    program = ["python3", "-m", "o3video_jax.train", "--config", "c.py", "--workdir", str(workdir)]
    r = fake.run(
        "run_until_done.sh",
        *"--name o3v --zone z --type v6e-8 --spot --run sft --max_attempts".split(),
        str(max_attempts),
        "--",
        *program,
        worker=True,
        check=False,
        TPU_POLL_S="1",
        FAKE_CLOUD_STATE=str(tmp_path / "cloud.json"),
        FAKE_TRAIN_FINISHES_ON="2",
    )
    kinds = [" ".join(c[2:4]) for c in fake.calls()]
    creates = [c for c in fake.calls() if c[2:4] == ["tpu-vm", "create"]]
    assert creates[0] == (
        "compute tpus tpu-vm create o3v --zone=z --accelerator-type=v6e-8 "
        "--version=v2-alpha-tpuv6e --spot".split()
    )
    trains = [c for c in fake.python3_calls() if c[:2] == ["-m", "o3video_jax.train"]]
    if max_attempts == 1:  # the slice went away under the only launch allowed
        assert r.returncode == 1 and "gave up after 1 launches" in r.stdout, r.stdout + r.stderr
        assert len(creates) == 1 and len(trains) == 1
        assert not (workdir / "COMPLETE.json").exists()
        return
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(preempted or deleted): relaunching" in r.stdout
    assert "done:" in r.stdout and (workdir / "COMPLETE.json").exists()
    assert len(creates) == 2 and trains == [program[1:]] * 2  # recreated once, launched twice
    assert kinds.count("tpu-vm scp") == 2, (kinds, r.stdout)  # set up on each new slice
    assert "launch failed" not in r.stdout
    # The launches' logs reach the workdir (launch.sh's supervise wrapper). The loop stops
    # watching once COMPLETE.json exists; the wrapper's final mirror follows the program's exit
    # in the background, so on a loaded host it may land a few seconds later.
    deadline = time.monotonic() + 60
    while not list(workdir.glob("logs/*/*.log")) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(list(workdir.glob("logs/*/*.log"))) >= 1


def test_multislice_launch_sets_megascale_on_every_slice(fake, tmp_path):
    """--slices 2: the nodes o3v-0 and o3v-1 of a --node-count 2 queued resource, each with the
    coordinator (slice 0's worker 0, from describe), the slice count and its own slice id."""
    (tmp_path / "bin" / "gcloud").write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent("""\
        import json, os, sys
        with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
            f.write(json.dumps(sys.argv[1:]) + "\\n")
        if "describe" in sys.argv:
            print("10.130.0.7")
        """)
    )
    program = ["python3", "-m", "o3video_jax.train", "--workdir", "gs://b/r"]
    fake.run("launch.sh", "--name", "o3v", "--zone", "z", "--slices", "2", "--", *program)
    calls = fake.calls()
    assert calls[0] == [
        "compute",
        "tpus",
        "tpu-vm",
        "describe",
        "o3v-0",
        "--zone=z",
        "--format=value(networkEndpoints[0].ipAddress)",
    ]
    ssh = calls[1:]
    assert [c[:5] for c in ssh] == [
        ["compute", "tpus", "tpu-vm", "ssh", f"o3v-{i}"] for i in (0, 1)
    ]
    for i, c in enumerate(ssh):
        assert "--worker=all" in c
        command = next(a for a in c if a.startswith("--command="))
        for line in (
            "export MEGASCALE_COORDINATOR_ADDRESS=10.130.0.7:8080",
            "export MEGASCALE_NUM_SLICES=2",
            f"export MEGASCALE_SLICE_ID={i}",
        ):
            assert line in command, (i, line)
        assert f"MEGASCALE_SLICE_ID={1 - i}" not in command
    r = fake.run(
        "launch.sh", "--name", "o3v", "--zone", "z", "--slices", "0", "--", "x", check=False
    )
    assert r.returncode == 2 and "--slices" in r.stderr


def test_run_until_done_with_a_queued_spot_request(fake, tmp_path):
    """The BUILD.md walkthrough's path: a preempted queued spot request is deleted and
    requested again (create_tpu_vm.sh --queued --wait), then the run relaunched."""
    (tmp_path / "bin" / "gcloud").write_text(FAKE_CLOUD.format(python=sys.executable))
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    program = ["python3", "-m", "o3video_jax.train", f"--workdir={workdir}"]
    r = fake.run(
        "run_until_done.sh",
        *"--name o3v --zone z --type v5p-64 --queued --spot --run sft".split(),
        "--",
        *program,
        worker=True,
        check=False,
        TPU_POLL_S="1",
        FAKE_CLOUD_STATE=str(tmp_path / "cloud.json"),
        FAKE_TRAIN_FINISHES_ON="2",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    qr = [c[3] for c in fake.calls() if c[2] == "queued-resources"]
    # describe (none), create, describe (ACTIVE: --wait); after the preemption: describe
    # (SUSPENDED), delete, create, describe (ACTIVE).
    assert qr == ["describe", "create", "describe", "describe", "delete", "create", "describe"], qr
    creates = [c for c in fake.calls() if c[2:4] == ["queued-resources", "create"]]
    assert creates[0] == (
        "compute tpus queued-resources create o3v-qr --zone=z --node-id=o3v "
        "--accelerator-type=v5p-64 --runtime-version=v2-alpha-tpuv5 --spot".split()
    )
    assert "queued resource o3v-qr is SUSPENDED: deleting it" in r.stdout
    assert (workdir / "COMPLETE.json").exists()


# A cloud of queued resources with several nodes (multislice), its state in a file: a queued
# request NAME-qr with --node-count N --node-prefix P makes the nodes P-0 ... P-(N-1), each with
# its own worker (home FAKE_NODE_HOMES/NODE, hostname NODE-w-0) for scp/ssh while it exists.
# The first time `describe FAKE_DELETE_NODE` finds that node training, the node is deleted
# under the run (its processes SIGKILLed, its disk wiped) and the request is SUSPENDED, as a
# preemption of one slice.
FAKE_SLICES_CLOUD = """\
#!{python}
import glob, json, os, shutil, signal, subprocess, sys, time
argv = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
    f.write(json.dumps(argv) + "\\n")
state_file = os.environ["FAKE_CLOUD_STATE"]
st = json.load(open(state_file)) if os.path.exists(state_file) else {{}}
st.setdefault("qr", None); st.setdefault("nodes", {{}}); st.setdefault("deleted", 0)
homes = os.environ["FAKE_NODE_HOMES"]
def save():
    json.dump(st, open(state_file, "w"))
def gone():
    print("ERROR: (gcloud) NOT_FOUND: node not found", file=sys.stderr)
    sys.exit(1)
def value(flag):
    return argv[argv.index(flag) + 1]
def wipe(node):  # a deleted node: its processes and its disk go with it
    home = os.path.join(homes, node)
    for pid_file in glob.glob(os.path.join(home, "o3video_runs", "*", "*.pid")):
        try:
            os.killpg(int(open(pid_file).read()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    for d in ("o3video_runs", "o3video_jax", "o3video_venv", ".local", "training_started"):
        shutil.rmtree(os.path.join(home, d), ignore_errors=True)
        if os.path.isfile(os.path.join(home, d)):
            os.remove(os.path.join(home, d))
if argv[:3] == ["compute", "tpus", "queued-resources"]:
    if argv[3] == "create":
        if st["qr"]:
            print("ERROR: already exists", file=sys.stderr); sys.exit(1)
        prefix, n = value("--node-prefix"), int(value("--node-count"))
        st["qr"], st["nodes"] = "ACTIVE", {{f"{{prefix}}-{{i}}": "READY" for i in range(n)}}
        for node in st["nodes"]:
            os.makedirs(os.path.join(homes, node), exist_ok=True)
    elif argv[3] == "delete":
        for node in st["nodes"]:
            wipe(node)
        st["qr"], st["nodes"] = None, {{}}
    elif argv[3] == "describe":
        if not st["qr"]:
            gone()
        print(st["qr"])
    save()
    sys.exit(0)
if argv[:3] != ["compute", "tpus", "tpu-vm"]:
    sys.exit(f"fake cloud: unexpected {{argv}}")
node = (argv[5] if argv[3] == "scp" else argv[4]).split(":")[0]
home = os.path.join(homes, node)
if argv[3] == "describe":
    if node == os.environ.get("FAKE_DELETE_NODE") and node in st["nodes"] and \\
            st["deleted"] < 1 and os.path.exists(os.path.join(home, "training_started")):
        wipe(node)
        del st["nodes"][node]
        st["deleted"] += 1
        st["qr"] = "SUSPENDED"
        save()
    if node not in st["nodes"]:
        gone()
    ip = "--format=value(networkEndpoints[0].ipAddress)" in argv
    print(f"10.0.0.{{list(st['nodes']).index(node) + 2}}" if ip else st["nodes"][node])
    sys.exit(0)
if node not in st["nodes"]:
    gone()
if argv[3] == "scp":
    shutil.copy(argv[4], os.path.join(home, argv[5].split(":", 1)[1]))
elif argv[3] == "ssh":
    command = next(a for a in argv if a.startswith("--command="))[len("--command="):]
    if node == os.environ.get("FAKE_FAIL_LAUNCH_ON") and "setsid nohup" in command and \
            not st.get("failed_launch"):  # once: a launch that does not reach this node
        st["failed_launch"] = 1
        save()
        for _ in range(200):  # a timeout, while the slices it reached start training
            if all(os.path.exists(os.path.join(homes, n, "training_started"))
                   for n in st["nodes"] if n != node):
                break
            time.sleep(0.1)
        print("ssh: connect to host 10.0.0.3 port 22: Connection timed out", file=sys.stderr)
        sys.exit(255)
    path = [p for p in os.environ["PATH"].split(os.pathsep)
            if not os.path.exists(os.path.join(p, "uv"))]
    env = dict(os.environ, HOME=home, FAKE_NODE=node, FAKE_HOSTNAME=f"{{node}}-w-0",
               PATH=os.pathsep.join([os.environ["FAKE_WORKER_BIN"], *path]))
    sys.exit(subprocess.run(["bash", "-c", command], cwd=home, env=env).returncode)
else:
    sys.exit(f"fake cloud: unexpected {{argv}}")
"""


@pytest.fixture
def slices(fake, tmp_path):
    """The fake with FAKE_SLICES_CLOUD as gcloud and, already there, the queued resource o3v-qr
    with the nodes o3v-0 and o3v-1 (fake.node_home(i): their workers' homes)."""
    (tmp_path / "bin" / "gcloud").write_text(FAKE_SLICES_CLOUD.format(python=sys.executable))
    homes = tmp_path / "nodes"
    state = tmp_path / "cloud.json"
    fake.env.update(FAKE_NODE_HOMES=str(homes), FAKE_CLOUD_STATE=str(state))
    fake.node_home = lambda i: homes / f"o3v-{i}"
    nodes = {"o3v-0": "READY", "o3v-1": "READY"}
    state.write_text(json.dumps({"qr": "ACTIVE", "nodes": nodes, "deleted": 0}))
    for i in (0, 1):
        fake.node_home(i).mkdir(parents=True)
    yield fake
    for pid_file in homes.glob("*/o3video_runs/*/*.pid"):  # never leave a detached run behind
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def _ssh(call):
    """(node, --worker, the remote command) of an ssh call."""
    assert call[:4] == ["compute", "tpus", "tpu-vm", "ssh"], call
    worker = next(a for a in call if a.startswith("--worker="))
    command = next(a for a in call if a.startswith("--command="))[len("--command=") :]
    return call[4], worker, command


def _dry_and_real_any_order(fake, script, *args, **env):
    """As _dry_and_real, for a script that runs its slices at once: --dry_run prints them in
    order (deterministic), the real calls may come in any order."""
    dry = fake.run(script, *args, "--dry_run", **env)
    assert fake.calls() == [], "--dry_run must not call gcloud"
    again = fake.run(script, *args, "--dry_run", **env)
    assert again.stdout == dry.stdout  # deterministic
    printed = [shlex.split(line) for line in dry.stdout.splitlines() if line.startswith("gcloud")]
    fake.run(script, *args, **env)
    real = fake.calls()
    fake.log.unlink()
    assert sorted(printed) == sorted(["gcloud", *c] for c in real)
    return [c[1:] for c in printed]


def test_slices_option_names_the_nodes_per_script(fake):
    """--slices 2: each script addresses the nodes o3v-0 and o3v-1 (the queued resource o3v-qr
    once), with the same per-node command as a single slice o3v gets today."""
    common = ["--name", "o3v", "--zone", "z", "--run", "r"]

    def one_and_two(script, *args, any_order=False):
        one = _dry_and_real(fake, script, *common, *args)
        run = _dry_and_real_any_order if any_order else _dry_and_real
        two = run(fake, script, *common, "--slices", "2", *args)
        return one, two

    for script, args, any_order in [
        ("stop.sh", ["--grace", "30"], True),
        ("logs.sh", ["--worker", "all", "--lines", "5"], False),
        ("logs.sh", ["--follow"], True),
    ]:
        (single,), two = one_and_two(script, *args, any_order=any_order)
        node, worker, command = _ssh(single)
        assert node == "o3v"
        assert [_ssh(c) for c in two] == [("o3v-0", worker, command), ("o3v-1", worker, command)]

    (describe, ssh), two = one_and_two("status.sh")
    assert describe[:5] == "compute tpus tpu-vm describe o3v".split()
    qr = "compute tpus queued-resources describe o3v-qr --zone=z".split()
    qr.append("--format=table(name.basename(), state.state)")
    # The queued resource once (no --queued needed: a multislice run is one), then each node.
    assert two == [
        qr,
        [*describe[:4], "o3v-0", *describe[5:]],
        [*describe[:4], "o3v-1", *describe[5:]],
        [*ssh[:4], "o3v-0", *ssh[5:]],
        [*ssh[:4], "o3v-1", *ssh[5:]],
    ]
    # --slices 1 (the default) is the single node NAME, exactly as without the option.
    for script, args in [
        ("setup_workers.sh", ["--no_install"]),
        ("stop.sh", ["--run", "r"]),
        ("status.sh", ["--queued", "--run", "r"]),
        ("logs.sh", ["--follow"]),
        ("launch.sh", ["--run", "r", "--", "python3", "-V"]),
        ("create_tpu_vm.sh", ["--type", "v5p-8", "--queued"]),
        ("delete_tpu_vm.sh", []),
    ]:
        cut = args.index("--") if "--" in args else len(args)
        outs = [
            fake.run(script, *common[:4], *extra, *args[:cut], "--dry_run", *args[cut:]).stdout
            for extra in ([], ["--slices", "1"], ["--slices=1"])
        ]
        outs = [re.sub(r"/tmp/\S+/o3video_jax_sync.tgz", "TARBALL", o) for o in outs]
        assert outs[0] == outs[1] == outs[2] and "o3v-0" not in outs[0], (script, outs)
    # --slices comes from the environment too, and is checked in every script.
    assert _dry_and_real(
        fake, "delete_tpu_vm.sh", "--name", "o3v", "--zone", "z", TPU_SLICES="2"
    ) == ["compute tpus queued-resources delete o3v-qr --zone=z --force --quiet".split()]
    for script in ("setup_workers.sh", "stop.sh", "status.sh", "logs.sh", "launch.sh"):
        for bad in ("0", "-1", "two", "1.5"):
            r = fake.run(script, *common, "--slices", bad, "--", "x", check=False)
            assert r.returncode == 2 and "--slices" in r.stderr, (script, bad, r.stderr)
    assert fake.calls() == []


def test_create_slices_is_the_queued_multislice_request(fake):
    calls = _dry_and_real(
        fake,
        "create_tpu_vm.sh",
        *"--name o3v --zone z --type v5p-64 --slices 2 --spot --internal-ips".split(),
    )
    assert calls == [
        "compute tpus queued-resources create o3v-qr --zone=z --accelerator-type=v5p-64 "
        "--runtime-version=v2-alpha-tpuv5 --spot --node-count 2 --node-prefix o3v "
        "--internal-ips".split()
    ]
    r = fake.run(
        "create_tpu_vm.sh",
        *"--name o3v --zone z --type v5p-64 --slices 2 --node-count 3".split(),
        check=False,
    )
    assert r.returncode == 2 and "drop --node-count" in r.stderr
    assert fake.calls() == []


def test_slices_setup_launch_status_logs_stop(slices):
    """Against a cloud of two nodes, each with its own worker: setup reaches both, launch runs
    on both, status and logs show both hosts, and stop's SIGTERM reaches slice 1 while slice
    0's run (which ignores it) is still in its grace period."""
    fake = slices
    common = ["--name", "o3v", "--zone", "z", "--slices", "2"]
    fake.run("setup_workers.sh", *common)
    scp = [c for c in fake.calls() if c[3] == "scp"]
    assert sorted(c[5] for c in scp) == ["o3v-0:o3video_jax_sync.tgz", "o3v-1:o3video_jax_sync.tgz"]
    for i in (0, 1):
        home = fake.node_home(i)
        assert (home / "o3video_jax" / "tpu_scripts" / "launch.sh").exists()
        assert (home / "o3video_venv" / "bin" / "python").exists()
        uv = [json.loads(line) for line in (home / "uv_calls.jsonl").read_text().splitlines()]
        assert [c[0] for c in uv] == ["venv", "pip"]
    fake.log.unlink()

    program = ["python3", "-m", "o3video_jax.train", "--config", "c.py"]
    run = [*common, "--run", "ms"]
    # Slice 0's program will ignore SIGTERM (as a run stuck in a collective).
    fake.run("launch.sh", *run, "--logs_to", "none", "--", *program, FAKE_IGNORE_TERM_ON="o3v-0")
    assert [c[3:5] for c in fake.calls()] == [
        ["describe", "o3v-0"],
        ["ssh", "o3v-0"],
        ["ssh", "o3v-1"],
    ]
    for i in (0, 1):
        run_sh = (fake.node_home(i) / "o3video_runs" / "ms" / "run.sh").read_text()
        assert f"export MEGASCALE_SLICE_ID={i}\n" in run_sh
        assert "export MEGASCALE_COORDINATOR_ADDRESS=10.0.0.2:8080\n" in run_sh
    log = lambda i: fake.node_home(i) / "o3video_runs" / "ms" / f"o3v-{i}-w-0.log"  # noqa: E731
    assert _wait_for(
        lambda: all(log(i).exists() and "training" in log(i).read_text() for i in (0, 1))
    )

    status = fake.run("status.sh", *run).stdout
    assert "o3v-0-w-0 ms: running" in status and "o3v-1-w-0 ms: running" in status
    logs = fake.run("logs.sh", *run, "--worker", "all").stdout.splitlines()
    assert "[o3v-0-w-0] training" in logs and "[o3v-1-w-0] training" in logs

    t0 = time.monotonic()
    stop = fake.run("stop.sh", *run, "--grace", "8")
    took = time.monotonic() - t0
    assert "o3v-0-w-0: SIGKILL sent" in stop.stdout  # slice 0 ignored SIGTERM: killed at 8 s
    assert "o3v-1-w-0: SIGTERM sent" in stop.stdout and "o3v-1-w-0: stopped" in stop.stdout
    sigterm_at = [float((fake.node_home(i) / "sigterm_at").read_text()) for i in (0, 1)]
    assert abs(sigterm_at[1] - sigterm_at[0]) < 4, sigterm_at  # not after slice 0's grace
    assert took < 8 + 8, took  # one grace period, not one per slice
    assert _wait_for((fake.node_home(1) / "o3video_runs" / "ms" / "o3v-1-w-0.exit").exists)
    status = fake.run("status.sh", *run).stdout
    assert "o3v-1-w-0 ms: exited 7" in status  # the program's own SIGTERM exit
    pid0 = int((fake.node_home(0) / "o3video_runs" / "ms" / "o3v-0-w-0.pid").read_text())
    assert _wait_for(lambda: not _alive(pid0))  # SIGKILLed after its grace period


def test_slices_logs_follow_runs_at_once_and_stops_together(slices):
    """logs.sh --slices 2 --follow follows both slices at once; a SIGTERM (or Ctrl-C) to it
    ends both followers, leaving no ssh or tail behind."""
    fake = slices
    for i in (0, 1):
        d = fake.node_home(i) / "o3video_runs" / "f"
        d.mkdir(parents=True)
        (d / f"o3v-{i}-w-0.log").write_text(f"hello from {i}\n")
    out = fake.home / "follow.out"
    with open(out, "w") as f:
        p = subprocess.Popen(
            [os.path.join(SCRIPTS, "logs.sh"), *"--name o3v --zone z --slices 2".split()]
            + ["--run", "f", "--follow"],
            env=fake.env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:
        assert _wait_for(
            lambda: all(f"[o3v-{i}-w-0] hello from {i}" in out.read_text() for i in (0, 1))
        ), out.read_text()
        assert p.poll() is None  # still following
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()

    def followers():
        found = []
        for proc in os.listdir("/proc"):
            try:
                with open(f"/proc/{proc}/cmdline", "rb") as c:
                    cmd = c.read()
            except OSError:
                continue
            if str(fake.node_home(0).parent).encode() in cmd or b"o3video_runs/f" in cmd:
                found.append(cmd)
        return found

    assert _wait_for(lambda: not followers(), timeout=10), followers()


def test_run_until_done_with_slices_recreates_and_relaunches_every_slice(slices, tmp_path):
    """--slices 2: the queued resource with --node-count 2 --node-prefix o3v; when node o3v-1
    is deleted mid-run, the request is deleted and made again, both slices set up and launched
    again, and the loop ends when COMPLETE.json exists."""
    fake = slices
    (tmp_path / "cloud.json").unlink()  # an empty project: the loop creates the request
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    program = ["python3", "-m", "o3video_jax.train", "--config", "c.py", "--workdir", str(workdir)]
    r = fake.run(
        "run_until_done.sh",
        *"--name o3v --zone z --type v5p-64 --slices 2 --spot --run sft".split(),
        "--",
        *program,
        check=False,
        TPU_POLL_S="1",
        FAKE_DELETE_NODE="o3v-1",
        FAKE_TRAIN_FINISHES_ON="2",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    calls = fake.calls()
    create = (
        "compute tpus queued-resources create o3v-qr --zone=z --accelerator-type=v5p-64 "
        "--runtime-version=v2-alpha-tpuv5 --spot --node-count 2 --node-prefix o3v".split()
    )
    assert [c for c in calls if c[3] == "create"] == [create, create]
    assert [c[3] for c in calls if c[2] == "queued-resources"] == [
        "describe",
        "create",
        "describe",  # none yet: request it, wait until ACTIVE
        "describe",
        "delete",
        "create",
        "describe",  # o3v-1 gone, the request SUSPENDED
    ]
    assert "slice o3v-1 is GONE (preempted or deleted): relaunching" in r.stdout
    assert "queued resource o3v-qr is SUSPENDED: deleting it" in r.stdout
    assert "done:" in r.stdout and (workdir / "COMPLETE.json").exists()
    # Set up and launched on both slices, twice (the coordinator looked up each time).
    scp = sorted(c[5].split(":")[0] for c in calls if c[3] == "scp")
    assert scp == ["o3v-0", "o3v-0", "o3v-1", "o3v-1"]
    ips = [c[4] for c in calls if c[3] == "describe" and any("ipAddress" in a for a in c)]
    assert ips == ["o3v-0", "o3v-0"]
    for i in (0, 1):
        calls = (fake.node_home(i) / "python3_calls.jsonl").read_text().splitlines()
        trains = [c for c in map(json.loads, calls) if c[:2] == ["-m", "o3video_jax.train"]]
        assert trains == [program[1:]] * 2, (i, trains)
        assert (fake.node_home(i) / "train_runs").read_text() == "xx"
    assert "launch failed" not in r.stdout and "setup failed" not in r.stdout
    # Every slice's hosts mirror their logs into the one workdir (the final copy may land a few
    # seconds after the loop has seen COMPLETE.json).
    hosts = {"o3v-0-w-0.log", "o3v-1-w-0.log"}
    assert _wait_for(lambda: {p.name for p in workdir.glob("logs/*/*.log")} == hosts, 60)


def test_run_until_done_stops_a_launch_that_failed_on_one_slice(slices, tmp_path):
    """A launch that reached slice 0 but not slice 1: the loop stops the run on every slice
    (slice 0 would wait for slice 1 and block the next launch as "still running"), then
    launches again on both."""
    fake = slices
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    program = ["python3", "-m", "o3video_jax.train", "--workdir", str(workdir)]
    r = fake.run(
        "run_until_done.sh",
        *"--name o3v --zone z --type v5p-64 --slices 2 --run sft --max_attempts 2".split(),
        "--",
        *program,
        check=False,
        TPU_POLL_S="1",
        FAKE_FAIL_LAUNCH_ON="o3v-1",
        FAKE_TRAIN_FINISHES_ON="2",  # slice 0's second launch finishes
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "launch failed: stopping it where it started" in r.stdout
    assert "still running" not in r.stderr
    steps = []
    for c in fake.calls():
        if c[3] == "ssh":
            node, _, command = _ssh(c)
            kind = (
                "launch" if "setsid nohup" in command else "stop" if "kill -TERM" in command else ""
            )
            if kind:
                steps.append((kind, node))
    launches = [("launch", "o3v-0"), ("launch", "o3v-1")]
    assert steps[:2] == launches and steps[4:] == launches, steps
    assert sorted(steps[2:4]) == [("stop", "o3v-0"), ("stop", "o3v-1")], steps  # at once
    assert (workdir / "COMPLETE.json").exists()
    # Slice 0's first run got the SIGTERM (it was training); its second run finished.
    assert (fake.node_home(0) / "train_runs").read_text() == "xx"
