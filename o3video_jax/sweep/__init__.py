"""Config sweeps: SWEEP.py files returning override lists, one workdir per run, a results
table. `python -m o3video_jax.sweep` runs them; `python -m o3video_jax.sweep.results` reads
them (see those modules)."""

from o3video_jax.sweep.spec import load, product, run_name, sweep, zip  # noqa: A004

__all__ = ["load", "product", "run_name", "sweep", "zip"]
