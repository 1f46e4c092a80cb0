"""`python -m o3video_jax.train.smoke` on CPU: one process with 4 devices, and two processes
joined by JAX's distributed runtime (gloo collectives), as the workers of a slice."""

import os
import re
import socket
import subprocess
import sys

from loop_fixtures import REPO


def _env(devices, **extra):
    e = dict(os.environ)
    e.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        PYTHONPATH=REPO + os.pathsep + e.get("PYTHONPATH", ""),
        **extra,
    )
    return e


def _smoke(*args):
    return [sys.executable, "-m", "o3video_jax.train.smoke", *args]


def test_one_process(tmp_path):
    data = tmp_path / "data.json"
    data.write_text("[]")
    media = tmp_path / "media"
    media.mkdir()
    work = tmp_path / "work"
    p = subprocess.run(
        _smoke(f"--workdir={work}", f"--path={data}", f"--path={media}", "--distributed=off"),
        env=_env(4),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    (line,) = [x for x in p.stdout.splitlines() if x.startswith("smoke ")]
    assert re.fullmatch(
        r"smoke \S+ process 0/1: devices 4 local / 4 global \| psum 4 OK \| workdir OK \| "
        r"data 2 OK \| [\d.]+ s",
        line,
    ), line
    assert (work / "smoke" / "0.txt").exists()

    p = subprocess.run(
        _smoke(
            f"--workdir={work}",
            f"--path={tmp_path / 'nope.json'}",
            "--expect_devices=8",
            "--distributed=off",
        ),
        env=_env(4),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 1
    assert (
        "(expected 8)" in p.stdout and "data FAILED" in p.stdout and "nope.json missing" in p.stdout
    )


def test_two_processes_sum_over_both_hosts(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            _smoke(f"--workdir={tmp_path / 'work'}", "--distributed=on", "--expect_devices=4"),
            env=_env(
                2,
                JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(i),
                JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    for i, (p, (out, err)) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, err[-3000:]
        assert f"process {i}/2: devices 2 local / 4 global | psum 4 OK | workdir OK" in out, out
    assert sorted(os.listdir(tmp_path / "work" / "smoke")) == ["0.txt", "1.txt"]
