"""Time-based checkpoints on two real processes (jax.distributed on CPU, gloo): the hosts'
clocks disagree, the decision is process 0's on both, and both save the same steps."""

import json
import os
import socket
import subprocess
import sys

from loop_fixtures import REPO

DRIVER = r"""
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid, port, root = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(f"localhost:{port}", 2, pid, initialization_timeout=60)
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from o3video_jax.checkpoints import orbax

mesh = Mesh(np.asarray(jax.devices()), ("d",))
state = {"w": jax.make_array_from_process_local_data(
    NamedSharding(mesh, PartitionSpec("d")), np.arange(2.0) + 2 * pid)}
ckpt = orbax.Checkpointer(root, save_every=0, save_every_minutes=1.0, async_save=False)
now = [0.0]
ckpt._clock = lambda: now[0]
ckpt._last_save = 0.0
# Seconds since the start on each host's clock at steps 1..4: process 1 runs 50 s ahead.
clocks = {0: [30.0, 61.0, 90.0, 125.0], 1: [80.0, 95.0, 140.0, 150.0]}[pid]
saved = []
for step, t in enumerate(clocks, start=1):
    now[0] = t
    if ckpt.save(step, state):
        saved.append(step)
ckpt.close()
print("SAVED " + json.dumps(saved), flush=True)
"""


def test_two_processes_save_when_process_0_says_so(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(i), str(port), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    saved = []
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
        saved.append(json.loads(out.split("SAVED ", 1)[1]))
    # Process 0: due at 61 s (step 2), then 60 s after that save, at 125 s (step 4). Process
    # 1's own clock would have said steps 1 and 3.
    assert saved == [[2, 4], [2, 4]]
    assert sorted(int(n) for n in os.listdir(tmp_path / "ckpt") if n.isdigit()) == [2, 4]
