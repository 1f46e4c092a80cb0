"""The preemption decision (`checkpoints.preemption.PreemptionWatch`) in one process, with real
SIGTERMs sent to this process. The cross-process agreement runs for real in
tests/test_multiprocess.py (-k sigterm); the CLI end to end in tests/test_train_loop.py."""

import os
import signal

import pytest

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
