"""Host-side data: video decoding, pixel preprocessing, synthetic data, records and batches.

Modules are imported as `from o3video_jax.data import video, vision`; the names below are the
few that users call directly. Append new re-exports at the end, one block per module.
"""

from o3video_jax.data import synthetic, video, vision
from o3video_jax.data.synthetic import generate_dataset, make_video, write_corrupt_files
from o3video_jax.data.video import Clip, VideoDecodeError, read_video
from o3video_jax.data.vision import (
    preprocess_image,
    preprocess_video,
    second_per_grid,
    smart_resize,
)

__all__ = [
    "synthetic",
    "video",
    "vision",
    "generate_dataset",
    "make_video",
    "write_corrupt_files",
    "Clip",
    "VideoDecodeError",
    "read_video",
    "preprocess_image",
    "preprocess_video",
    "second_per_grid",
    "smart_resize",
]

# isort: split
# ---- records / pipeline (helper "records"): append imports and `__all__ += [...]` here ----
