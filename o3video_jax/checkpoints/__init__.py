"""Checkpoints: Hugging Face safetensors import/export (`hf`)."""

from o3video_jax.checkpoints import hf
from o3video_jax.checkpoints.hf import load, save

__all__ = ["hf", "load", "save"]
