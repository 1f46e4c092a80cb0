"""`o3video_jax.train.two_stage` moved to `o3video_jax.drivers.two_stage`; this alias keeps the old name working."""

import sys

from o3video_jax.drivers import two_stage as _impl

sys.modules[__name__] = _impl
