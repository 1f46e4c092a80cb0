"""`o3video_jax.train.preflight` moved to `o3video_jax.drivers.preflight`; this alias keeps the old name working."""

import sys

from o3video_jax.drivers import preflight as _impl

sys.modules[__name__] = _impl
