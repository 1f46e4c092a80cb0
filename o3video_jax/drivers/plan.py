"""Command line of the token/patch budget planner (`o3video_jax.data.planner`).

`python -m o3video_jax.data.plan --config CFG --config.data.train_json=...` probes every record
of an experiment's training data on the host and prints which share fits the token and patch
budgets, and the smallest budgets that admit 99% and 100% of it.
"""

from __future__ import annotations

from o3video_jax.data import records
from o3video_jax.data.planner import (  # noqa: F401 - the planner, re-exported for old imports
    PATCH_MULTIPLE,
    PERCENTILES,
    ExamplePlan,
    Planner,
    Summary,
    VideoProbe,
    budget_for,
    plan_records,
    probe_image,
    probe_video,
    report,
    summarize,
)
from o3video_jax.data.tokenizer import Tokenizer
from o3video_jax.drivers import experiment


# ---- command line ----------------------------------------------------------------------------
def planner_from_config(config) -> tuple[Planner, int, int]:
    """(planner, token budget, patch budget) of an experiment config's training data: the
    builder's config as `drivers.experiment.example_builder` makes it."""
    kind = "rl" if config.stage == "gspo" else "sft"
    tok_dir = config.data.tokenizer_dir or config.model.hf_checkpoint
    if not tok_dir:
        raise ValueError("set data.tokenizer_dir (or model.hf_checkpoint, which holds one)")
    tokenizer = Tokenizer.from_dir(tok_dir)
    builder = experiment.example_builder(config, tokenizer, kind, config.data.media_root)
    merge = experiment.model_config(config).vision.spatial_merge_size
    planner = Planner(builder.config, tokenizer, merge)
    return planner, builder.config.max_seq_len, int(config.data.max_patches)


def main(argv):
    del argv
    import time

    from absl import flags

    config = flags.FLAGS.config
    if not config.data.train_json:
        raise ValueError("set --config.data.train_json (the records to plan)")
    planner, max_tokens, max_patches = planner_from_config(config)
    raws = records.read_json_records(config.data.train_json)
    if flags.FLAGS.limit > 0:
        raws = raws[: flags.FLAGS.limit]
    t0 = time.perf_counter()
    plans = plan_records(raws, planner, flags.FLAGS.threads)
    print(report(summarize(plans, max_tokens, max_patches), plans))
    print(f"planned {len(plans)} records in {time.perf_counter() - t0:.1f} s")


def cli() -> None:
    """`python -m o3video_jax.data.plan`: defines the flags, then runs `main`."""
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "experiment config", lock_config=True)
    flags.DEFINE_integer("limit", 0, "plan only the first N records (0: all)")
    flags.DEFINE_integer("threads", 16, "probing threads")
    flags.mark_flags_as_required(["config"])
    app.run(main)


if __name__ == "__main__":
    cli()
