"""`o3video_jax.data.vision_layout` moved to `o3video_jax.models.qwen2_5_vl.vision_layout`; this alias keeps the old name working."""

import sys

from o3video_jax.models.qwen2_5_vl import vision_layout as _impl

sys.modules[__name__] = _impl
