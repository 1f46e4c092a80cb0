r"""Command line: `python -m o3video_jax.train --config CONFIG.py[:arg] --workdir DIR`.

Every config leaf can be overridden with `--config.x.y=value`. On a multi-host slice every
worker runs the same command; JAX's distributed runtime is initialised first when a cluster
environment is detected (or forced with --distributed=on).
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
    "distributed", "auto", ["auto", "on", "off"], "call jax.distributed.initialize()"
)
flags.mark_flags_as_required(["config", "workdir"])

# Set by TPU pod / SLURM / Open MPI launchers when several processes form one run.
_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS")


def cluster_detected(env=os.environ) -> bool:
    if any(env.get(k) for k in _CLUSTER_ENV):
        return True
    if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        return True
    for key in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if env.get(key, "1").isdigit() and int(env.get(key, "1")) > 1:
            return True
    return False


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines off the console
    import jax

    if _DISTRIBUTED.value == "on" or (_DISTRIBUTED.value == "auto" and cluster_detected()):
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
