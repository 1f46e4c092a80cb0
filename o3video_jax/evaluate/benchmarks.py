"""Benchmark readers: each benchmark's released file format -> validated items + bad items.

| name       | file (`eval.data`)                                   | video (`eval.media_root`)         |
|------------|------------------------------------------------------|-----------------------------------|
| vstar      | V_STaR_test.json (a JSON list)                       | `<vid>.mp4` anywhere below root   |
| videomme   | videomme/test-00000-of-00001.parquet                 | data/<videoID>.mp4 (.MP4, .mkv)   |
| worldsense | WorldSense.tsv                                       | <video>.mp4                       |
| videommmu  | a directory of {Perception,Comprehension,Adaptation}/test-00000-of-00001.parquet, or one such parquet | <Art|Science|...>/<id>.mp4 |
| tvg        | a JSON list of {video, query, span: [s, e], [duration]} (TVGBench style; aliases vid/sentence/timestamps), or Charades-STA's native `vid start end##sentence` lines (charades_sta_test.txt) | <video> (".mp4" added if it has no extension) |

Every item is a dict with `key` (its position in the file, the resume key), `video` (resolved
path) and the benchmark's own fields. An item whose fields are malformed or whose video is
missing is not fatal: it becomes a `BadItem` (index, id, reason, detail) that the runner
counts and lists.

Each reader lives in its benchmark's module under `evaluate/bench/` (`read`, `check`); the
shared checks and file formats are in `readers`, and the list of benchmarks in `registry`.
"""

from __future__ import annotations

from o3video_jax.evaluate import readers, registry
from o3video_jax.evaluate.bench.videommmu import subject_dir as videommmu_subject_dir
from o3video_jax.evaluate.readers import BadItem, Loaded

__all__ = ["BENCHMARKS", "BadItem", "Loaded", "read_benchmark", "videommmu_subject_dir"]

# The benchmarks of the repository (`registry.names()` also lists any registered at run time).
BENCHMARKS = registry.BUILTIN_NAMES


def read_benchmark(name: str, data: str, media_root: str, limit: int = 0) -> Loaded:
    """Reads and validates the first `limit` (0 = all) items of benchmark `name`.

    Raises FileNotFoundError / ValueError for an unreadable file (nothing to evaluate); items
    with bad fields or missing videos are returned in `Loaded.bad`, never raised.
    """
    return readers.read_items(registry.get(name), data, media_root, limit)
