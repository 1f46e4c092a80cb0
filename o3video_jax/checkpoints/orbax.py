"""Train-state checkpoints with Orbax (docs/design.md decision 9).

One `Checkpointer` per run directory: asynchronous saves, the last N kept, a save every k steps
and every m minutes, and one on preemption (a SIGTERM on any process; every process saves the
same step, see preemption.py), automatic resume from the latest step. A checkpoint holds the train state pytree
(params, optimiser state, step, rng) and the data iterator state, so a resumed run continues
with exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from o3video_jax.checkpoints import layout
from o3video_jax.checkpoints.preemption import PreemptionWatch


def _encode_data_state(state: Any) -> Any:
    # grain iterator states are bytes; Orbax's JSON handler needs text.
    if isinstance(state, bytes | bytearray):
        return {"__bytes_b64__": base64.b64encode(bytes(state)).decode("ascii")}
    return state


def _decode_data_state(state: Any) -> Any:
    if isinstance(state, dict) and set(state) == {"__bytes_b64__"}:
        return base64.b64decode(state["__bytes_b64__"])
    return state


def _gather_json(obj: Any) -> list[Any]:
    """Every process's `obj` (JSON-serialisable), in process order (a collective)."""
    data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int32(data.size))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(r[:n]).decode()) for r, n in zip(rows, sizes, strict=True)]


def _data_payload(data_state: Any) -> Any:
    """The JSON item of a save. Multi-host: each process reads its own shard of the records
    and its iterator state differs (e.g. tokens emitted by packing), so all are stored."""
    encoded = _encode_data_state(data_state)
    if jax.process_count() == 1:
        return encoded
    return {"per_process": _gather_json(encoded)}


def _own_data_state(payload: Any) -> Any:
    if isinstance(payload, dict) and set(payload) == {"per_process"}:
        states = payload["per_process"]
        if len(states) != jax.process_count():
            raise ValueError(
                f"the checkpoint holds data-iterator states of {len(states)} processes, this run "
                f"has {jax.process_count()}: the records are sharded by process, so resuming "
                "with another process count would repeat or skip data"
            )
        payload = states[jax.process_index()]
    return _decode_data_state(payload)


class _Manager(ocp.CheckpointManager):
    """Orbax's manager, answering its own preemption queries from our decision. Orbax asks
    `reached_preemption(step)` when a save starts and again from the background finalize
    thread, long after: passed on to JAX's sync manager, that late call would set this
    process's last reported step back to an old one, and a notice arriving then could be
    given a sync step the run has already passed (and be lost)."""

    preemption: PreemptionWatch | None = None

    def reached_preemption(self, step: int) -> bool:
        return self.preemption is not None and self.preemption.step == step


class Checkpointer:
    """Saves and restores (train_state, data_state) under `directory`.

    Args:
      directory: run directory (local path or gs://...); checkpoints live in `directory/ckpt`.
      save_every: save when `step % save_every == 0` (and always on preemption or `force`).
      save_every_minutes: also save once this many minutes have passed since the last save (or
        the start); 0 turns it off. Process 0's clock decides and every process follows (a
        broadcast at every step), since a save is a collective and hosts' clocks and step
        start times differ.
      keep: how many recent checkpoints to keep.
      async_save: write in a background thread; `wait()` blocks until it lands.
      handle_sigterm: treat SIGTERM as a preemption notice (`preemption.PreemptionWatch`).
    """

    def __init__(
        self,
        directory: str,
        *,
        save_every: int = 1000,
        save_every_minutes: float = 0.0,
        keep: int = 3,
        async_save: bool = True,
        handle_sigterm: bool = True,
    ):
        self.directory = os.path.join(directory, "ckpt")
        self.save_every = int(save_every)
        self.save_every_minutes = float(save_every_minutes)
        self._clock = time.monotonic
        self._last_save = self._clock()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
        )
        self._manager = _Manager(self.directory, options=options)
        self._preemption = PreemptionWatch(
            self._manager.latest_step() or 0, handle_sigterm=handle_sigterm
        )
        self._manager.preemption = self._preemption

    @property
    def preempted(self) -> bool:
        """True once every process agreed to stop after a preemption notice (preemption.py):
        the checkpoint of that step was saved (asynchronously: `close()` waits for it)."""
        return self._preemption.triggered

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        """Whether `step` is saved. Call it once per step on every process (`save` does): it
        takes part in the cross-process preemption decision."""
        if self._preemption.check(step):
            return True
        if self.save_every > 0 and step % self.save_every == 0:
            return True
        return self._minutes_due()

    def _minutes_due(self) -> bool:
        if self.save_every_minutes <= 0:
            return False
        due = self._clock() - self._last_save >= 60.0 * self.save_every_minutes
        if jax.process_count() > 1:  # every process takes process 0's decision
            due = bool(np.asarray(multihost_utils.broadcast_one_to_all(np.int32(due))))
        return due

    def save(
        self,
        step: int,
        state: Any,
        data_state: Any = None,
        *,
        force: bool = False,
        before_save: Callable[[], None] | None = None,
    ) -> bool:
        """Saves when due (or forced). Returns whether a save was started.

        before_save: called once a save is decided, before it starts, so that what must be
          durable with the checkpoint (the metrics rows up to it) is written before its commit
          marker can exist: a run killed right after the commit resumes with every row.
        """
        if not force and not self.should_save(step):
            return False
        if step in self._manager.all_steps():
            return False
        if before_save is not None:
            before_save()
        args = {"state": ocp.args.StandardSave(state)}
        if data_state is not None:
            args["data"] = ocp.args.JsonSave(_data_payload(data_state))
        self._manager.save(step, args=ocp.args.Composite(**args), force=True)
        self._last_save = self._clock()
        return True

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, Any, int]:
        """Restores the latest (or given) step into the shardings of `abstract_state`.

        abstract_state: a pytree of jax.ShapeDtypeStruct (with .sharding) or arrays.
        A checkpoint saved in the other parameter layout (unrolled vs scanned layers,
        `checkpoints.layout`) is read in its own layout, each per-layer leaf in the sharding of
        its stack minus the layer axis, and converted on the devices into `abstract_state`'s.
        Returns (state, data_state or None, step).
        """
        step = self._manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        items = self._manager.item_metadata(step)
        want = layout.is_stacked(abstract)
        saved = layout.is_stacked(items["state"]) if items is not None else None
        convert = want is not None and saved is not None and want != saved
        read_as = layout.to_layout(abstract, saved) if convert else abstract
        args = {"state": ocp.args.StandardRestore(read_as)}
        if items is not None and "data" in items.keys():
            args["data"] = ocp.args.JsonRestore()
        restored = self._manager.restore(step, args=ocp.args.Composite(**args))
        state = restored["state"]
        if convert:
            shardings = jax.tree.map(lambda x: x.sharding, abstract)
            to = lambda t: layout.to_layout(t, want)
            state = jax.jit(to, out_shardings=shardings)(state)
        data_state = _own_data_state(restored["data"]) if "data" in args else None
        return state, data_state, step

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
        self._preemption.close()
