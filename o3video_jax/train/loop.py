"""`o3video_jax.train.loop` moved to `o3video_jax.drivers.sft`; this alias keeps the old name working."""

import sys

from o3video_jax.drivers import sft as _impl

sys.modules[__name__] = _impl
