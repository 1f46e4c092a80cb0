"""Whether a command starts JAX's distributed runtime (`jax.distributed.initialize()`).

Shared by `python -m o3video_jax.train` and `python -m o3video_jax.evaluate` (`--distributed`).
"""

from __future__ import annotations

import os

# Set by TPU pod / SLURM / Open MPI launchers when several processes form one run.
_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS")


def cluster_detected(env=os.environ) -> bool:
    """A CPU/GPU (or explicitly configured TPU) cluster's environment variables are set."""
    if any(env.get(k) for k in _CLUSTER_ENV):
        return True
    if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        return True
    for key in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if env.get(key, "1").isdigit() and int(env.get(key, "1")) > 1:
            return True
    return False


def tpu_chips_attached() -> int:
    """TPU chips on this host's PCI bus (what JAX itself checks to tell a Cloud TPU VM); 0 when
    the probe is unavailable."""
    try:
        from jax._src import hardware_utils

        return int(hardware_utils.num_available_tpu_chips_and_device_id()[0])
    except Exception:  # noqa: BLE001 - private helper: any failure means "no TPU found"
        return 0


def should_initialize(mode: str, env=os.environ, tpu_chips: int = 0) -> tuple[bool, str]:
    """Whether to call `jax.distributed.initialize()`, and why.

    auto: yes on a Cloud TPU VM (TPU chips attached, JAX_PLATFORMS not excluding tpu): a pod
    worker started over ssh has no cluster variables, JAX reads the workers from the TPU
    metadata, and on a single-host VM it makes a 1-process run; yes when a CPU/GPU cluster's
    variables are set (`cluster_detected`); no otherwise (a laptop, one GPU box).
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"--distributed must be auto, on or off, got {mode!r}")
    if mode != "auto":
        return mode == "on", f"--distributed={mode}"
    if cluster_detected(env):
        return True, "cluster environment variables"
    platforms = [p.strip() for p in env.get("JAX_PLATFORMS", "").lower().split(",") if p.strip()]
    if tpu_chips > 0 and (not platforms or "tpu" in platforms):
        return True, f"Cloud TPU VM ({tpu_chips} chips attached)"
    return False, "no TPU VM or cluster environment"


def initialize(env=os.environ) -> None:
    """`jax.distributed.initialize()`, with the process count and id from JAX_NUM_PROCESSES /
    JAX_PROCESS_ID when set (JAX itself reads only JAX_COORDINATOR_ADDRESS from the
    environment; on a Cloud TPU VM it finds all three in the TPU metadata)."""
    import jax

    kw = {}
    if env.get("JAX_NUM_PROCESSES") and env.get("JAX_PROCESS_ID"):
        kw = {
            "num_processes": int(env["JAX_NUM_PROCESSES"]),
            "process_id": int(env["JAX_PROCESS_ID"]),
        }
    jax.distributed.initialize(**kw)
