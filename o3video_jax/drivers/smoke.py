"""`python -m o3video_jax.train.smoke --workdir DIR [--path P ...]`: a one-minute check of a slice
before a long run, on every worker (tpu_scripts/launch.sh ... -- python3 -m
o3video_jax.train.smoke ...). One line per host:

  smoke t1v-...-w-3 process 3/8: devices 4 local / 32 global | psum 32 OK | workdir OK | data 2 OK

- devices: this host's and the whole run's (`--expect_devices N` makes a mismatch an error);
- psum: a jitted sum of ones over an array sharded on every device of every host, which must be
  the global device count: the interconnect (ICI, and DCN between slices) and
  `jax.distributed.initialize()` work;
- workdir: each process writes DIR/smoke/PROCESS.txt, and after a barrier reads the file of the
  next process, so the workdir is writable and shared between the hosts (gs:// included);
- data: every --path (the model checkpoint, the data JSON, the media root) exists and is
  readable from this host.

Exits 1 (after printing its line) when any check fails.
"""

from __future__ import annotations

import os
import socket
import sys
import time

from absl import app, flags

from o3video_jax import io
from o3video_jax.train.distributed import initialize, should_initialize, tpu_chips_attached


def check_devices(expect: int) -> tuple[str, bool]:
    import jax

    n, local = jax.device_count(), jax.local_device_count()
    ok = not expect or n == expect
    note = "" if ok else f" (expected {expect})"
    return f"devices {local} local / {n} global{note}", ok


def check_psum() -> tuple[str, bool]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.asarray(jax.devices()), ("all",))
    x = jax.make_array_from_process_local_data(
        NamedSharding(mesh, PartitionSpec("all")), np.ones(jax.local_device_count(), np.int32)
    )
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, PartitionSpec()))(x)
    got = int(jax.device_get(total))
    ok = got == jax.device_count()
    return f"psum {got} {'OK' if ok else 'WRONG'}", ok


def check_workdir(workdir: str) -> tuple[str, bool]:
    import jax
    from jax.experimental import multihost_utils

    i, n = jax.process_index(), jax.process_count()
    token = f"{socket.gethostname()} {os.getpid()} {time.time()}"
    mine = os.path.join(workdir, "smoke", f"{i}.txt")
    try:
        io.write_text(mine, token)
        ok = io.read_text(mine) == token
    except Exception as e:  # noqa: BLE001  the line reports it
        return f"workdir FAILED ({type(e).__name__}: {e})", False
    if n > 1:
        multihost_utils.sync_global_devices("o3video smoke workdir")
        peer = os.path.join(workdir, "smoke", f"{(i + 1) % n}.txt")
        try:
            io.read_text(peer)
        except Exception as e:  # noqa: BLE001
            return f"workdir not shared (cannot read {peer}: {type(e).__name__})", False
    return f"workdir {'OK' if ok else 'READ BACK DIFFERS'}", ok


def check_paths(paths: list[str]) -> tuple[str, bool]:
    bad = []
    for p in paths:
        try:
            if io.isdir(p):
                io.listdir(p)
            elif io.isfile(p):
                with io.open(p, "rb") as f:
                    f.read(1)
            else:
                bad.append(f"{p} missing")
        except Exception as e:  # noqa: BLE001
            bad.append(f"{p}: {type(e).__name__}")
    if bad:
        return "data FAILED (" + "; ".join(bad) + ")", False
    return f"data {len(paths)} OK", True


def run(workdir: str, paths: list[str], expect_devices: int = 0) -> tuple[str, bool]:
    """This host's line and whether every check passed (collectives: call on every process)."""
    import jax

    t0 = time.perf_counter()
    parts = [
        check_devices(expect_devices),
        check_psum(),
        check_workdir(workdir),
        check_paths(paths),
    ]
    head = f"smoke {socket.gethostname()} process {jax.process_index()}/{jax.process_count()}: "
    line = head + " | ".join(p for p, _ in parts) + f" | {time.perf_counter() - t0:.1f} s"
    return line, all(ok for _, ok in parts)


def main(argv):
    del argv
    start, _ = should_initialize(flags.FLAGS.distributed, os.environ, tpu_chips_attached())
    if start:
        initialize()
    line, ok = run(flags.FLAGS.workdir, flags.FLAGS.path, flags.FLAGS.expect_devices)
    print(line, flush=True)
    sys.exit(0 if ok else 1)


def cli() -> None:
    """`python -m o3video_jax.train.smoke`. The flags are defined here, not at import."""
    flags.DEFINE_string("workdir", None, "the run's workdir (local or gs://)")
    flags.DEFINE_multi_string("path", [], "a path the run reads (repeatable)")
    flags.DEFINE_integer("expect_devices", 0, "the global device count expected (0: any)")
    flags.DEFINE_enum(
        "distributed", "auto", ["auto", "on", "off"], "as python -m o3video_jax.train --distributed"
    )
    flags.mark_flag_as_required("workdir")
    app.run(main)


if __name__ == "__main__":
    cli()
