r"""Command line: `python -m o3video_jax.evaluate --config experiments/configs/eval.py:ARG
--workdir DIR [--config.eval.x=...]`; rerun the same command to resume."""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "eval config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (items.jsonl, summary, report)")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"], "call jax.distributed.initialize()"
)
flags.mark_flags_as_required(["config", "workdir"])


def cluster_detected(env=os.environ) -> bool:
    """As `python -m o3video_jax.train`: a TPU pod / SLURM / MPI launcher's variables."""
    if env.get("JAX_COORDINATOR_ADDRESS") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return True
    if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        return True
    return any(
        env.get(k, "1").isdigit() and int(env.get(k, "1")) > 1
        for k in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")
    )


def main(argv):
    del argv
    import jax

    if _DISTRIBUTED.value == "on" or (_DISTRIBUTED.value == "auto" and cluster_detected()):
        jax.distributed.initialize()
    from o3video_jax.evaluate import runner

    runner.evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
