r"""Command line: `python -m o3video_jax.train --config CONFIG.py[:arg] --workdir DIR`.

Every config leaf can be overridden with `--config.x.y=value`. On a multi-host slice every
worker runs the same command; JAX's distributed runtime is initialised first on a Cloud TPU VM
or when a cluster environment is detected (`--distributed=auto`, `should_initialize`), always
with `--distributed=on`, never with `--distributed=off`.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config file", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (checkpoints, logs, export)")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "call jax.distributed.initialize() first: auto = on a Cloud TPU VM (JAX finds the pod's "
    "workers from the TPU metadata; one worker is a 1-process run) or when a cluster "
    "environment (coordinator address, SLURM, Open MPI) is set; on = always; off = never",
)
flags.mark_flags_as_required(["config", "workdir"])

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


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines off the console
    import jax

    init, _ = should_initialize(_DISTRIBUTED.value, os.environ, tpu_chips_attached())
    if init:
        jax.distributed.initialize()
    from o3video_jax.train import steps

    config = _CONFIG.value
    try:
        if config.stage == "sft":
            from o3video_jax.train import loop

            loop.train(config, _WORKDIR.value)
        elif config.stage == "gspo":
            from o3video_jax.rl import loop as rl_loop

            rl_loop.train(config, _WORKDIR.value)
        elif config.stage == "sft+gspo":
            from o3video_jax.train import two_stage

            two_stage.train(config, _WORKDIR.value)
        else:
            raise app.UsageError(
                f"config.stage must be 'sft', 'gspo' or 'sft+gspo', got {config.stage!r}"
            )
    except steps.NonFiniteLossError as e:
        print(f"training stopped: {e}", file=sys.stderr, flush=True)
        sys.exit(3)


if __name__ == "__main__":
    app.run(main)
