"""Benchmark evaluation driver: `python -m o3video_jax.evaluate --config
experiments/configs/eval.py:benchmark=NAME --workdir DIR ...`.

from o3video_jax.evaluate import evaluate
summary = evaluate(config, workdir)   # per-item WORKDIR/items.jsonl (resume log) + summary

Modules: spec (the `Benchmark` record), registry (the one list of benchmarks), bench/ (one
file per benchmark; docs/extending.md adds one), readers and records (what benchmarks share),
benchmarks (`read_benchmark`), prompts (§5 templates), media (frame sampling), generate
(batched sampler calls), judge (V-STaR What), summary (`summarize`), runner (driver).
"""

from o3video_jax.evaluate.benchmarks import BENCHMARKS, read_benchmark
from o3video_jax.evaluate.runner import evaluate, items_path, read_log, write_summary

__all__ = ["BENCHMARKS", "evaluate", "items_path", "read_benchmark", "read_log", "write_summary"]
