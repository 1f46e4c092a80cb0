"""Preemption: every process decides to save and stop at the same step.

A spot or preemptible Cloud TPU VM gets SIGTERM some 30 s before it is stopped, and on a
multi-host slice only some workers may get it. An Orbax save is a collective: every process has
to save the same step. A process that saved on its own SIGTERM would block in the save while
the others block in the next step's collectives, until both time out and the notice is wasted.
So the decision comes from one of three sources, picked once per run:

- "jax" (multi-process, JAX's preemption service on: the default of
  `jax.distributed.initialize()`, config `jax_enable_preemption_service`). JAX installs its own
  SIGTERM handler in C++. When any process gets the notice, the processes swap their last
  reported steps in the background and agree on the one after the largest;
  `multihost_utils.reached_preemption_sync_point(step)` is True at that step on every process.
  It has to be called at every step. No Python SIGTERM handler may be installed on top, because
  it would replace JAX's handler and swallow the notice.
- "allgather" (multi-process, preemption service off): a Python SIGTERM handler sets a local
  flag, and an all-gather of the flags at every step makes every process see it at the same
  step.
- "local" (one process): the flag of the Python SIGTERM handler.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax._src import distributed
from jax.experimental import multihost_utils


def _mode() -> str:
    if jax.process_count() == 1:
        return "local"
    # JAX's private state, as multihost_utils reads it: its public call returns False without
    # a distributed client, which would leave SIGTERM unhandled.
    state = distributed.global_state
    if state.client is not None and state.preemption_sync_manager is not None:
        return "jax"
    return "allgather"


class PreemptionWatch:
    """Watches for a preemption notice; `check(step)` gives the same answer on every process.

    Args:
      start_step: the step the run resumes from (0 for a new run); every process passes the
        same one. In "jax" mode it is registered with the sync manager at once: a notice that
        came before the first step's call would otherwise be given the sync step 0 (max of no
        reported steps + 1), which a resumed run never reaches, and be lost.
      handle_sigterm: install the Python SIGTERM handler ("local"/"allgather" modes; only from
        the main thread, where Python runs signal handlers). In "jax" mode JAX's own handler is
        always active.
    """

    def __init__(self, start_step: int = 0, *, handle_sigterm: bool = True):
        self.mode = _mode()
        self.step: int | None = None  # the agreed step, once reached
        self._notice = threading.Event()
        self._previous_handler = None
        # True when the processes agreed on `start_step` itself (a notice during start-up):
        # every process then stops after its first step.
        self._synced_at_start = False
        if self.mode == "jax":
            self._synced_at_start = multihost_utils.reached_preemption_sync_point(int(start_step))
        elif handle_sigterm and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        del signum, frame
        self._notice.set()

    @property
    def triggered(self) -> bool:
        """True once every process has agreed to stop (at `self.step`)."""
        return self.step is not None

    def check(self, step: int) -> bool:
        """Whether to save and stop after `step`. A collective in "allgather" mode, and in "jax"
        mode it has to be called at every step on every process: call it exactly once per
        step, on all processes, with increasing steps."""
        if self.step is not None:
            return True
        if self.mode == "jax":
            reached = self._synced_at_start or multihost_utils.reached_preemption_sync_point(
                int(step)
            )
        elif self.mode == "allgather":
            flags = multihost_utils.process_allgather(np.int32(self._notice.is_set()))
            reached = bool(np.asarray(flags).any())
        else:
            reached = self._notice.is_set()
        if reached:
            self.step = int(step)
        return reached

    def close(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None
