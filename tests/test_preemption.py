"""The preemption decision (`checkpoints.preemption.PreemptionWatch`) in one process, with real
SIGTERMs sent to this process. The cross-process agreement runs for real in
tests/test_multiprocess.py (-k sigterm); the CLI end to end in tests/test_train_loop.py, and
here with grain worker processes and the signal sent to the whole process group."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from loop_fixtures import REPO, base_flags

from o3video_jax.checkpoints import orbax, preemption


@pytest.fixture
def restore_sigterm():
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def sigterm_self():
    # Python runs the handler in the main thread before the next bytecode after the kill.
    os.kill(os.getpid(), signal.SIGTERM)


def test_one_process_stops_at_the_step_after_the_notice(restore_sigterm):
    previous = signal.getsignal(signal.SIGTERM)
    watch = preemption.PreemptionWatch(start_step=4)
    assert watch.mode == "local"
    assert [watch.check(s) for s in (5, 6)] == [False, False]
    sigterm_self()  # the process is still alive: the handler only took note
    assert not watch.triggered
    assert watch.check(7)
    assert watch.triggered and watch.step == 7
    assert watch.check(8) and watch.step == 7  # the decision stays
    watch.close()
    assert signal.getsignal(signal.SIGTERM) == previous


def test_allgather_mode_agrees_through_a_collective(monkeypatch, restore_sigterm):
    monkeypatch.setattr(preemption, "_mode", lambda: "allgather")
    gathered = []
    real = preemption.multihost_utils.process_allgather

    def spy(x):
        out = real(x)
        gathered.append(int(x))
        return out

    monkeypatch.setattr(preemption.multihost_utils, "process_allgather", spy)
    watch = preemption.PreemptionWatch()
    assert not watch.check(1)
    sigterm_self()
    assert watch.check(2) and watch.step == 2
    assert gathered == [0, 1]  # one all-gather per step, of this process's flag
    watch.close()


def test_jax_mode_leaves_sigterm_to_jax_and_registers_the_start_step(monkeypatch, restore_sigterm):
    """A Python handler over JAX's C++ one would swallow the notice (the old defect): each
    process then saved alone and the collective save hung."""
    calls, sync_step = [], 9
    monkeypatch.setattr(preemption, "_mode", lambda: "jax")
    monkeypatch.setattr(
        preemption.multihost_utils,
        "reached_preemption_sync_point",
        lambda step: calls.append(step) or step == sync_step,
    )
    previous = signal.getsignal(signal.SIGTERM)
    watch = preemption.PreemptionWatch(start_step=6)
    assert signal.getsignal(signal.SIGTERM) == previous
    assert calls == [6]  # a notice before step 7 gets the sync step 7, not 0
    assert [watch.check(s) for s in (7, 8, 9)] == [False, False, True]
    assert calls == [6, 7, 8, 9] and watch.step == 9


def test_jax_mode_sync_point_at_the_start_step_stops_after_the_first_step(
    monkeypatch, restore_sigterm
):
    monkeypatch.setattr(preemption, "_mode", lambda: "jax")
    monkeypatch.setattr(
        preemption.multihost_utils, "reached_preemption_sync_point", lambda step: step == 6
    )
    watch = preemption.PreemptionWatch(start_step=6)
    assert not watch.triggered
    assert watch.check(7) and watch.step == 7


def test_checkpointer_saves_the_preempted_step_once(tmp_path, restore_sigterm):
    import jax.numpy as jnp

    ckpt = orbax.Checkpointer(str(tmp_path), save_every=0, async_save=False)
    state = {"w": jnp.arange(3.0)}
    assert not ckpt.save(1, state) and not ckpt.preempted
    sigterm_self()
    assert ckpt.save(2, state) and ckpt.preempted
    ckpt.close()
    reopened = orbax.Checkpointer(str(tmp_path))
    assert reopened.all_steps() == [2]
    reopened.close()


def test_orbax_does_not_report_steps_to_the_sync_manager(monkeypatch, tmp_path, restore_sigterm):
    """Orbax queries the sync point on every save and again from its finalize thread; only our
    once-per-step calls may reach JAX's sync manager (a late call would move this process's
    reported step back). Here the sync point is step 3."""
    import jax.numpy as jnp

    calls = []
    monkeypatch.setattr(preemption, "_mode", lambda: "jax")
    monkeypatch.setattr(
        preemption.multihost_utils,
        "reached_preemption_sync_point",
        lambda step: calls.append(step) or step == 3,
    )
    ckpt = orbax.Checkpointer(str(tmp_path), save_every=1, async_save=True)
    state = {"w": jnp.arange(3.0)}
    for step in (1, 2, 3):
        assert ckpt.save(step, state)
        assert ckpt.preempted == (step == 3)
    ckpt.close()
    assert calls == [0, 1, 2, 3]


def test_before_save_runs_before_the_commit_only_when_a_save_is_due(tmp_path, restore_sigterm):
    """The loops flush their metrics rows through `before_save`: a run killed the moment a
    checkpoint's commit marker exists must find every row up to that step (CI once saw the
    gs:// kill-resume test read step 1 of a committed step 2 when the flush came after)."""
    import jax.numpy as jnp

    ckpt = orbax.Checkpointer(str(tmp_path), save_every=2, async_save=False)
    state = {"w": jnp.arange(3.0)}
    seen = []

    def flush():  # what exists on disk when the loop's flush runs
        seen.append(ckpt.all_steps())

    assert not ckpt.save(1, state, before_save=flush)
    assert seen == []  # nothing due: no flush
    assert ckpt.save(2, state, before_save=flush)
    assert seen == [[]]  # flushed before step 2 was written, let alone committed
    assert ckpt.save(3, state, force=True, before_save=flush)
    assert seen == [[], [2]]
    assert not ckpt.save(3, state, force=True, before_save=flush)  # already saved: no flush
    assert seen == [[], [2]]
    ckpt.close()


# ---- the CLI with grain worker processes, signalled as stop.sh and a VM shutdown do ----------


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "(gone)"


def _group_members(pgid):
    """Live (non-zombie) processes of a process group, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry))
    return out


@pytest.mark.slow  # three CLI runs, about 2 minutes on 2 cores
def test_sigterm_to_the_process_group_with_data_workers(tmp_path, loop_env, loop_data):
    """The whole group (the run and its two grain workers) gets SIGTERM, as from stop.sh or a
    VM shutdown. Before the workers ignored it, the run logged its save and then hung in
    grain's close on the dead workers' queue (or failed with "Worker process was terminated
    unexpectedly" before the agreed step). Now: the agreed step is saved, the process and its
    workers are gone within seconds with status 0, and the resumed run equals an uninterrupted
    one."""
    config = os.path.join(REPO, "experiments", "configs", "synthetic.py")

    def cli(workdir, total):
        flags = {
            **base_flags(loop_data, "sft"),
            "data.workers": 2,
            "ckpt.save_every": 0,  # the only checkpoint can come from the signal
            "ckpt.save_every_minutes": 0,
            "log.every": 1,
            "total_steps": total,
        }
        return [
            sys.executable,
            "-m",
            "o3video_jax.train",
            f"--config={config}:size=tiny,stage=sft",
            f"--workdir={workdir}",
            *(f"--config.{k}={v}" for k, v in flags.items()),
        ]

    def rows(workdir):
        p = workdir / "metrics.jsonl"
        if not p.exists():
            return []
        return [json.loads(x) for x in p.read_text().splitlines() if x.endswith("}")]

    def steady(rs):
        return [
            {k: v for k, v in r.items() if k not in ("step_time", "data_time", "tokens_per_s")}
            for r in rs
        ]

    run_dir, ref_dir, log = tmp_path / "stopped", tmp_path / "ref", tmp_path / "stopped.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cli(run_dir, 10_000),
            env=loop_env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as launch.sh's setsid
        )
        try:
            deadline = time.time() + 180
            while len(rows(run_dir)) < 2:
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.time() < deadline, "no step logged within 180 s"
                time.sleep(0.05)
            workers = [p for p in _group_members(proc.pid) if p != proc.pid]
            assert len(workers) >= 2, "the grain workers share the run's process group"
            os.killpg(proc.pid, signal.SIGTERM)
            t0 = time.time()
            code = proc.wait(timeout=60)
            exit_s = time.time() - t0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert exit_s < 20, f"exited {exit_s:.0f} s after the signal"  # grain alone: 25 s+
    assert "terminated unexpectedly" not in text
    # Orphans of the run (grain workers, multiprocessing's resource tracker) see their parent's
    # exit asynchronously: they must be gone within seconds, not at once.
    deadline = time.time() + 10
    while _group_members(proc.pid) and time.time() < deadline:
        time.sleep(0.1)
    left = {p: _cmdline(p) for p in _group_members(proc.pid)}
    assert left == {}, f"processes of the run outlived it by 10 s: {left}"
    found = re.findall(r"preempted at step (\d+): checkpoint saved", text)
    assert len(found) == 1, text[-3000:]
    k = int(found[0])
    assert sorted(int(n) for n in os.listdir(run_dir / "ckpt") if n.isdigit()) == [k]
    assert not (run_dir / "COMPLETE.json").exists()  # stopped, not finished

    total = k + 2
    for workdir in (run_dir, ref_dir):
        p = subprocess.run(
            cli(workdir, total), env=loop_env, cwd=REPO, capture_output=True, text=True, timeout=240
        )
        assert p.returncode == 0, p.stderr[-3000:]
        assert json.loads((workdir / "COMPLETE.json").read_text())["step"] == total
    assert [r["step"] for r in rows(run_dir)] == list(range(1, total + 1))
    assert steady(rows(run_dir)) == steady(rows(ref_dir))


def test_time_based_saves_follow_the_clock(tmp_path, restore_sigterm):
    import jax.numpy as jnp

    ckpt = orbax.Checkpointer(str(tmp_path), save_every=0, save_every_minutes=1.0, async_save=False)
    now = [0.0]
    ckpt._clock = lambda: now[0]
    ckpt._last_save = 0.0  # the run started at t = 0
    state = {"w": jnp.arange(3.0)}
    saved = []
    for step, t in [(1, 30.0), (2, 61.0), (3, 100.0), (4, 121.0), (5, 170.0)]:
        now[0] = t
        if ckpt.save(step, state):
            saved.append(step)
    assert saved == [2, 4]  # 61 s after the start, then 60 s after the save at 61 s
    ckpt.close()


def test_time_based_saves_take_process_0s_decision(monkeypatch, tmp_path, restore_sigterm):
    """Hosts' clocks and step start times differ; a save is a collective, so every process
    follows process 0's decision (a broadcast), whatever its own clock says."""
    ckpt = orbax.Checkpointer(str(tmp_path), save_every=10, save_every_minutes=1.0)
    sent, answer = [], [0]

    def broadcast(x):
        sent.append(int(x))
        return np.int32(answer[0])

    monkeypatch.setattr(orbax.jax, "process_count", lambda: 2)
    monkeypatch.setattr(orbax.multihost_utils, "broadcast_one_to_all", broadcast)
    monkeypatch.setattr(preemption, "_mode", lambda: "local")
    ckpt._clock = lambda: ckpt._last_save + 90.0  # this host: due
    assert not ckpt._minutes_due() and sent == [1]  # process 0 says not yet
    ckpt._clock = lambda: ckpt._last_save + 5.0  # this host: not due
    answer[0] = 1
    assert ckpt._minutes_due() and sent == [1, 0]  # process 0 says save
    assert ckpt.should_save(10) and sent == [1, 0]  # a step-based save needs no broadcast
    monkeypatch.undo()
    ckpt.close()


CLOSE_DRIVER = """
import argparse, multiprocessing, os, signal, sys, time
import grain
import numpy as np
from absl import flags
from o3video_jax.data import pipeline

if __name__ == "__main__":
    flags.FLAGS.mark_as_parsed()
    if sys.argv[1] == "kill":  # pickled through the pipe, as our examples: grain moves
        # arrays (in dicts, lists) to shared memory, not inside other objects
        element = lambda i: argparse.Namespace(pixels=np.zeros(1 << 18, np.float32))
    else:  # arrays travel in shared memory, as the pipeline's batches of arrays
        element = lambda i: np.zeros(1 << 18, np.float32)
    ds = grain.MapDataset.range(10_000).map(element).to_iter_dataset()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=2, per_worker_buffer_size=2),
                        worker_init_fn=pipeline.worker_init)
    it = iter(ds)
    next(it), next(it)
    time.sleep(2)  # the workers fill their queues (bytes: blocked mid-write, 1 MiB > a pipe)
    workers = [p for p in multiprocessing.active_children() if p.name.startswith("grain-")]
    print("workers", len(workers), flush=True)
    for p in workers:
        os.kill(p.pid, signal.SIGTERM)
    time.sleep(0.5)
    print("alive after SIGTERM", sum(p.is_alive() for p in workers), flush=True)
    if sys.argv[1] == "kill":  # as an OOM kill or a signal sent to a worker alone
        for p in workers:
            os.kill(p.pid, signal.SIGKILL)
    t = time.time()
    pipeline.close(it, timeout_s=3.0)
    print(f"closed in {time.time() - t:.1f} s", flush=True)
    print("alive after close", sum(p.is_alive() for p in workers), flush=True)
"""


@pytest.mark.parametrize("how", ["alive", "kill"])
def test_pipeline_close_with_live_and_dead_workers(how):
    """Workers ignore SIGTERM; the close returns in bounded time even when the workers died
    mid-write (grain's own close then blocks for ever on the half message, in the call and
    again in its exit finalizer), and the process exits."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.time()
    p = subprocess.run(
        [sys.executable, "-c", CLOSE_DRIVER, how],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout
    assert "workers 2" in out and "alive after SIGTERM 2" in out, out
    assert "alive after close 0" in out, out
    closed = float(re.search(r"closed in ([\d.]+) s", out).group(1))
    assert closed < (5.0 if how == "alive" else 6.0), out  # grain: ~1 s per live worker
    assert time.time() - t0 < 45
