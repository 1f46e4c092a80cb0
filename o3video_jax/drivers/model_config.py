"""The model's `Qwen25VLConfig` from a run config: the HF checkpoint's config.json, or a preset
with `model.text_overrides` / `model.vision_overrides`, plus the runtime knobs.

Its own module so that preflight (which checks the model's dimensions against the mesh) and the
experiment (which builds the model) both read it from below, not from each other.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from o3video_jax.models.qwen2_5_vl import Qwen25VLConfig
from o3video_jax.models.qwen2_5_vl.config import TextConfig, VisionConfig


def _parse_overrides(text: str, cls) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"bad {cls.__name__} override {item!r}; fields: {sorted(fields)}")
        out[key] = float(value) if "." in value or "e" in value else int(value)
    return out


def _mrope_for(head_dim: int) -> tuple[int, int, int]:
    """Qwen's (16, 24, 24) split of head_dim / 2 rescaled: t gets 1/4, h and w the rest."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return (half - 2 * h, h, h)


def model_config(config: ml_collections.ConfigDict) -> Qwen25VLConfig:
    """The model's config: from the HF checkpoint, or the preset with the overrides."""
    m = config.model
    runtime = dict(
        dtype=m.dtype,
        param_dtype=m.param_dtype,
        remat=m.remat,
        attention=m.attention,
        scan_layers=bool(m.get("scan_layers", False)),
    )
    if m.hf_checkpoint:
        return Qwen25VLConfig.from_hf_json(m.hf_checkpoint, **runtime)
    base = Qwen25VLConfig.preset(m.preset)
    text_kw = _parse_overrides(m.text_overrides, TextConfig)
    vision_kw = _parse_overrides(m.vision_overrides, VisionConfig)
    hidden = text_kw.get("hidden_size", base.text.hidden_size)
    head_dim = hidden // text_kw.get("num_attention_heads", base.text.num_attention_heads)
    if head_dim != base.text.head_dim and "mrope_section" not in text_kw:
        text_kw["mrope_section"] = _mrope_for(head_dim)
    text = dataclasses.replace(base.text, **text_kw)
    vision = dataclasses.replace(base.vision, out_hidden_size=text.hidden_size, **vision_kw)
    return dataclasses.replace(base, text=text, vision=vision, **runtime)
