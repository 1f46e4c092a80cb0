"""One process of a (possibly multi-process) tiny training run, for tests/test_multiprocess.py.

  python tests/multiprocess_worker.py SPEC_JSON

SPEC: {"stage": "sft" | "gspo" | "probe", "workdir": DIR, "flags": {config leaf: value},
       "process_id": i, "num_processes": n, "port": coordinator port (n > 1),
       "record_dir": where process_{i}.json goes (default DIR)}

With n > 1 the process joins a JAX distributed run (coordinator on localhost, gloo CPU
collectives) before anything else touches JAX; every process then makes the same `train` call
on the same workdir, as the workers of a pod slice do. Each process writes
RECORD_DIR/process_{i}.json: its JAX topology, the mesh, the metrics `train` returned (or the
traceback), the data-iterator state after every step and the one restored on resume, and the
completions of every GSPO rollout (this process's rows), so that the test can compare each
process with a single-process run. Stage "probe" only checks that cross-process collectives
work (a jitted sum over a 2-process array and a process_allgather).
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def _distributed(spec: dict) -> None:
    import jax

    # gloo is jax 0.10's default CPU collective implementation; set it explicitly so that a
    # changed default cannot silently leave the processes without cross-process collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if spec["num_processes"] > 1:
        jax.distributed.initialize(
            coordinator_address=f"localhost:{spec['port']}",
            num_processes=spec["num_processes"],
            process_id=spec["process_id"],
            initialization_timeout=60,
        )


def _config(stage: str, flags: dict):
    from o3video_jax.demo import load_config

    c = load_config(f"size=tiny,stage={stage}")
    with c.unlocked():
        for key, value in flags.items():
            node = c
            *path, leaf = key.split(".")
            for p in path:
                node = node[p]
            node[leaf] = value
    return c


class _RecordedIterator:
    """A grain batch iterator that appends every state the loop asks for to `states`."""

    def __init__(self, it, states: list):
        self._it, self._states = it, states

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)

    def get_state(self):
        state = self._it.get_state()
        self._states.append(state)
        return state

    def set_state(self, state):
        self._it.set_state(state)

    @property
    def stats(self):  # the loops log the pipeline's skip count (data/skipped)
        return self._it.stats

    def close(self):  # the loops close the pipeline (its grain workers) on the way out
        self._it.close()


class _RecordedDataset:
    def __init__(self, ds, states: list):
        self._ds, self._states = ds, states

    def __iter__(self):
        return _RecordedIterator(iter(self._ds), self._states)

    def __getattr__(self, name):
        return getattr(self._ds, name)


def _spy(record: dict) -> None:
    """Records the mesh, the restored data state, the iterator states and the completions."""
    import numpy as np

    from o3video_jax.drivers import experiment
    from o3video_jax.drivers import gspo as rl_loop

    real_setup, real_dataset, real_rewards = (
        experiment.setup,
        experiment.dataset,
        rl_loop.compute_rewards,
    )

    def setup(config, workdir):
        exp = real_setup(config, workdir)
        record["mesh"] = dict(exp.mesh.shape)
        record["start_step"] = exp.start_step
        record["restored_data_state"] = _jsonable(exp.data_state)
        return exp

    def dataset(*args, **kwargs):
        # Only the training loop calls get_state(): evaluation iterators record nothing.
        return _RecordedDataset(real_dataset(*args, **kwargs), record["data_states"])

    def rewards(completions, examples, **kw):
        # A random tiny model earns no reward, so no advantage and no gradient: a bonus that
        # depends on the sampled text gives the GSPO update something to follow.
        r = real_rewards(completions, examples, **kw)
        record["completions"].append(list(completions))
        r["total"] = r["total"] + np.asarray([len(c) % 5 / 4 for c in completions], np.float32)
        return r

    record.update(data_states=[], completions=[])
    experiment.setup, experiment.dataset = setup, dataset
    rl_loop.compute_rewards = rewards


def _jsonable(state):
    if isinstance(state, bytes | bytearray):
        return {"__bytes_hex__": bytes(state).hex()}
    return state


def _probe() -> dict:
    """A cross-process jitted reduction and an all-gather: the collectives training needs."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    local = np.arange(jax.local_device_count(), dtype=np.float32) + 10 * jax.process_index()
    x = jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec("data")), local)
    total = jax.jit(lambda a: a.sum(), out_shardings=NamedSharding(mesh, PartitionSpec()))(x)
    gathered = multihost_utils.process_allgather(x, tiled=True)
    return {"sum": float(total.addressable_shards[0].data), "gathered": gathered.tolist()}


def run(spec: dict) -> int:
    """Runs the stage (after `_distributed`), writes process_{i}.json; returns the exit code."""
    import jax

    record = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
    }
    out_dir = spec.get("record_dir") or spec["workdir"]
    os.makedirs(out_dir, exist_ok=True)
    code = 0
    try:
        if spec["stage"] == "probe":
            record["probe"] = _probe()
        else:
            config = _config(spec["stage"], spec["flags"])
            _spy(record)
            if spec["stage"] == "sft":
                from o3video_jax.drivers import sft as loop

                record["last"] = loop.train(config, spec["workdir"])
            else:
                from o3video_jax.drivers import gspo as rl_loop

                record["last"] = rl_loop.train(config, spec["workdir"])
    except Exception:  # noqa: BLE001 - reported to the test, which asserts on it
        record["error"] = traceback.format_exc()
        code = 1
    with open(os.path.join(out_dir, f"process_{spec['process_id']}.json"), "w") as f:
        json.dump(record, f, default=float)
    return code


if __name__ == "__main__":
    SPEC = json.loads(sys.argv[1])
    _distributed(SPEC)
    sys.exit(run(SPEC))
