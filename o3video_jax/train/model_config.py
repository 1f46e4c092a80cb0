"""`o3video_jax.train.model_config` moved to `o3video_jax.drivers.model_config`; this alias keeps the old name working."""

import sys

from o3video_jax.drivers import model_config as _impl

sys.modules[__name__] = _impl
