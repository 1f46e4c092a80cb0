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

from o3video_jax.train.distributed import (  # noqa: F401 - re-exported
    cluster_detected,
    initialize,
    should_initialize,
    tpu_chips_attached,
)


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines off the console
    init, _ = should_initialize(flags.FLAGS.distributed, os.environ, tpu_chips_attached())
    if init:
        initialize()
    from o3video_jax.train import steps

    config = flags.FLAGS.config
    try:
        if config.stage == "sft":
            from o3video_jax.drivers import sft

            sft.train(config, flags.FLAGS.workdir)
        elif config.stage == "gspo":
            from o3video_jax.drivers import gspo

            gspo.train(config, flags.FLAGS.workdir)
        elif config.stage == "sft+gspo":
            from o3video_jax.drivers import two_stage

            two_stage.train(config, flags.FLAGS.workdir)
        else:
            raise app.UsageError(
                f"config.stage must be 'sft', 'gspo' or 'sft+gspo', got {config.stage!r}"
            )
    except steps.NonFiniteLossError as e:
        print(f"training stopped: {e}", file=sys.stderr, flush=True)
        sys.exit(3)


def cli() -> None:
    """`python -m o3video_jax.train`. The flags are defined here, not at import."""
    config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
    flags.DEFINE_string("workdir", None, "run directory (checkpoints, logs, export)")
    flags.DEFINE_enum(
        "distributed",
        "auto",
        ["auto", "on", "off"],
        "call jax.distributed.initialize() first: auto = on a Cloud TPU VM (JAX finds the pod's "
        "workers from the TPU metadata; one worker is a 1-process run) or when a cluster "
        "environment (coordinator address, SLURM, Open MPI) is set; on = always; off = never",
    )
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)


if __name__ == "__main__":
    cli()
