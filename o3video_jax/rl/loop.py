"""`o3video_jax.rl.loop` moved to `o3video_jax.drivers.gspo`; this alias keeps the old name working."""

import sys

from o3video_jax.drivers import gspo as _impl

sys.modules[__name__] = _impl
