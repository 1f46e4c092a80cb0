"""`o3video_jax.train.synthetic_data` moved to `o3video_jax.data.synthetic_runs`; this alias keeps the old name working."""

import sys

from o3video_jax.data import synthetic_runs as _impl

sys.modules[__name__] = _impl
