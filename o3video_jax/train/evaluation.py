"""`o3video_jax.train.evaluation` moved to `o3video_jax.drivers.evaluation`; this alias keeps the old name working."""

import sys

from o3video_jax.drivers import evaluation as _impl

sys.modules[__name__] = _impl
