"""`o3video_jax.data.positions` moved to `o3video_jax.models.qwen2_5_vl.positions`; this alias keeps the old name working."""

import sys

from o3video_jax.models.qwen2_5_vl import positions as _impl

sys.modules[__name__] = _impl
