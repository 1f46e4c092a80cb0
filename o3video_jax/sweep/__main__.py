r"""Command line: run a sweep of config overrides, one workdir per run.

  python -m o3video_jax.sweep --config CONFIG.py[:arg] --sweep SWEEP.py --workdir ROOT \
      [--launch local|print] [--dry_run] [--config.x.y=value ...] [--tpu_names a,b,...]

SWEEP.py defines get_sweep() -> list of {dotted.config.path: value} (see o3video_jax.sweep).
`--config.x.y=value` flags fix a field for every run (checked like the train command's). Each
run's workdir is ROOT/NAME, NAME from its overrides. `local` runs them one after another as
`python -m o3video_jax.train` subprocesses (a finished run is skipped, a partial one resumes);
`print` prints one tpu_scripts/launch.sh command per run. Then:
  python -m o3video_jax.sweep.results ROOT
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from o3video_jax.sweep.spec import fixed_argv

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config", lock_config=True)
_SWEEP = flags.DEFINE_string("sweep", None, "sweep file defining get_sweep()")
_WORKDIR = flags.DEFINE_string("workdir", None, "sweep root: one folder per run")
_LAUNCH = flags.DEFINE_enum("launch", "local", ["local", "print"], "run here, or print commands")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "show what would run; start and write nothing")
_TPU_NAMES = flags.DEFINE_list("tpu_names", [], "with --launch print: one TPU VM per run")
flags.mark_flags_as_required(["config", "sweep", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    from o3video_jax.sweep import runner, spec

    config_name = config_flags.get_config_filename(flags.FLAGS["config"])
    fixed = config_flags.get_override_values(flags.FLAGS["config"])
    forwarded = fixed_argv(sys.argv[1:])
    try:
        runs = runner.plan(_CONFIG.value, spec.load(_SWEEP.value), _WORKDIR.value, fixed)
    except (ValueError, TypeError, KeyError, FileNotFoundError) as e:
        print(f"sweep: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        sys.exit(2)
    print(f"sweep: {len(runs)} runs under {_WORKDIR.value}", flush=True)
    try:
        if _LAUNCH.value == "print":
            runner.print_launch(
                runs,
                config_name,
                fixed,
                forwarded,
                tpu_names=_TPU_NAMES.value,
                dry_run=_DRY_RUN.value,
            )
            return
        failed = runner.run_local(runs, config_name, fixed, forwarded, dry_run=_DRY_RUN.value)
    except ValueError as e:  # a run folder that belongs to other overrides, --tpu_names
        print(f"sweep: {e}", file=sys.stderr)
        sys.exit(2)
    if failed:
        print(
            f"sweep: {len(failed)} run(s) not done (failed or preempted): {', '.join(failed)}",
            file=sys.stderr,
        )
        sys.exit(1)
    if not _DRY_RUN.value:
        print(
            f"sweep: all runs done; results: python -m o3video_jax.sweep.results {_WORKDIR.value}"
        )


if __name__ == "__main__":
    app.run(main)
