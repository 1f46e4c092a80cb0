"""`o3video_jax.rl.heldout` moved to `o3video_jax.drivers.heldout`; this alias keeps the old name working."""

import sys

from o3video_jax.drivers import heldout as _impl

sys.modules[__name__] = _impl
