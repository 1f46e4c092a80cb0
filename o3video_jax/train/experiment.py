"""`o3video_jax.train.experiment` moved to `o3video_jax.drivers.experiment`; this alias keeps the old name working."""

import sys

from o3video_jax.drivers import experiment as _impl

sys.modules[__name__] = _impl
