"""Qwen2.5-VL in Flax."""

from o3video_jax.models.qwen2_5_vl.config import Qwen25VLConfig, TextConfig, VisionConfig
from o3video_jax.models.qwen2_5_vl.hf_inputs import inputs_from_hf
from o3video_jax.models.qwen2_5_vl.inputs import ModelInputs

# isort: split
# ---- model (helper "model" appends `Qwen25VL` below) ----
from o3video_jax.models.qwen2_5_vl.cache import KVCache
from o3video_jax.models.qwen2_5_vl.model import Qwen25VL

__all__ = [
    "KVCache",
    "ModelInputs",
    "Qwen25VL",
    "Qwen25VLConfig",
    "TextConfig",
    "VisionConfig",
    "inputs_from_hf",
]
