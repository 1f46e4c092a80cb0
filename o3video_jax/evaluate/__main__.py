r"""Command line: `python -m o3video_jax.evaluate --config experiments/configs/eval.py:ARG
--workdir DIR [--config.eval.x=...]`; rerun the same command to resume."""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "eval config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (items.jsonl, summary, report)")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "call jax.distributed.initialize() first (as `python -m o3video_jax.train`)",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    import jax

    from o3video_jax.train import distributed

    start, _ = distributed.should_initialize(
        _DISTRIBUTED.value, tpu_chips=distributed.tpu_chips_attached()
    )
    if start:
        jax.distributed.initialize()
    from o3video_jax.evaluate import runner

    runner.evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
