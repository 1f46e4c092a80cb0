"""`train.supervise`, the per-worker wrapper launch.sh puts around a run: real processes, real
signals, a local folder and the GCS emulator as the run's workdir."""

import os
import signal
import subprocess
import sys
import time

import pytest
from loop_fixtures import REPO
from test_gcs import gcs  # noqa: F401  (the module-scoped GCS emulator fixture)

from o3video_jax import io

SLEEPER = "import time; print('{host} is training', flush=True); time.sleep(120)"
STUBBORN = (  # a worker stuck in a collective: SIGTERM does not end it
    "import signal, time; signal.signal(signal.SIGTERM, lambda *a: print('ignored', flush=True));"
    "print('{host} is training', flush=True); time.sleep(120)"
)
CRASH = "import sys, time; time.sleep(1); print('{host} crashed', flush=True); sys.exit(3)"
CLEAN_STOP = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0));"
    "print('{host} is training', flush=True); time.sleep(120)"
)


def start(tmp_path, logs, host, program, env=None, grace=3.0):
    log = tmp_path / f"{host}.local.log"
    out = open(log, "w")  # noqa: SIM115  (as run.sh: the worker's log gets both streams)
    e = dict(env or os.environ)
    e["PYTHONPATH"] = REPO + os.pathsep + e.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "o3video_jax.train.supervise",
            "--logs",
            logs,
            "--host",
            host,
            "--log",
            str(log),
            "--every",
            "0.5",
            "--grace",
            str(grace),
            "--",
            sys.executable,
            "-c",
            program.format(host=host),
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=e,
        start_new_session=True,
    )
    proc.log, proc.out = log, out
    return proc


def wait_for(predicate, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def text(p):
    try:
        return io.read_text(p)
    except (OSError, FileNotFoundError):
        return ""


@pytest.fixture
def procs():
    started = []
    yield started
    for p in started:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        p.out.close()


@pytest.mark.parametrize("stubborn", [False, True])
def test_a_crash_stops_the_other_workers_and_logs_are_mirrored(tmp_path, procs, stubborn):
    logs = str(tmp_path / "workdir" / "logs" / "launch1")
    a = start(tmp_path, logs, "w0", STUBBORN if stubborn else SLEEPER)
    procs.append(a)
    # The log is in the workdir while the run goes on.
    assert wait_for(lambda: "w0 is training" in text(os.path.join(logs, "w0.log"))), (
        a.log.read_text()
    )
    b = start(tmp_path, logs, "w1", CRASH)
    procs.append(b)
    assert b.wait(timeout=60) == 3
    assert text(os.path.join(logs, "w1.exit")).strip() == "3"
    assert "w1 crashed" in text(os.path.join(logs, "w1.log"))
    t0 = time.monotonic()
    code = a.wait(timeout=60)
    # SIGTERM ends the sleeper (143); the stubborn one is killed after the 3 s grace (137).
    assert code == (137 if stubborn else 143), a.log.read_text()
    assert time.monotonic() - t0 < (20 if stubborn else 10)
    assert text(os.path.join(logs, "w0.exit")).strip() == str(code)
    mirrored = text(os.path.join(logs, "w0.log"))
    assert "w1 exited 3: stopping this worker" in mirrored
    assert ("SIGKILL" in mirrored) == stubborn


def test_a_clean_stop_of_the_group_is_recorded_and_stops_no_one(tmp_path, procs):
    """stop.sh / a VM shutdown: SIGTERM to the whole group. The command saves and exits 0; the
    supervisor (ignoring the signal) records it; a peer is not stopped by a 0."""
    logs = str(tmp_path / "logs")
    a = start(tmp_path, logs, "w0", CLEAN_STOP)
    b = start(tmp_path, logs, "w1", SLEEPER)
    procs += [a, b]
    assert wait_for(lambda: "is training" in text(os.path.join(logs, "w0.log")))
    os.killpg(a.pid, signal.SIGTERM)
    assert a.wait(timeout=30) == 0
    assert text(os.path.join(logs, "w0.exit")).strip() == "0"
    time.sleep(2)  # four of w1's checks
    assert b.poll() is None


def test_logs_and_exit_status_reach_a_gcs_workdir(tmp_path, procs, gcs):  # noqa: F811
    logs = "gs://bucket/runs/r1/logs/launch1"
    env = dict(os.environ, **gcs)
    a = start(tmp_path, logs, "w0", SLEEPER, env=env)
    procs.append(a)
    assert wait_for(lambda: "w0 is training" in text(f"{logs}/w0.log")), a.log.read_text()
    b = start(tmp_path, logs, "w1", CRASH, env=env)
    procs.append(b)
    assert b.wait(timeout=60) == 3
    assert a.wait(timeout=60) == 143, a.log.read_text()
    assert text(f"{logs}/w0.exit").strip() == "143" and text(f"{logs}/w1.exit").strip() == "3"
    assert "w1 exited 3" in text(f"{logs}/w0.log")
