"""Rotary tables: the ViT's 2D rotary (docs/qwen2_5_vl.md §2.4) and the decoder's M-RoPE (4.1).

Both use the non-interleaved NeoX pairing (rotate_half: dim k with k + H/2). Tables are
computed in float32 from integer positions that the host prepared (docs/design.md decision 2).

Dtype rules (docs/qwen2_5_vl.md §7.12): the vision rotation runs in float32 and casts the result back;
the text cos/sin are cast to the activation dtype before the rotation.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def inv_freq(dim: int, theta: float) -> np.ndarray:
    """float32[dim // 2]: 1 / theta ** (arange(0, dim, 2) / dim), as HF builds it.

    The exponent is float32 (as in HF); the power is taken in float64 and rounded once, so the
    table is the same on every platform (XLA's float32 pow differs between backends) and
    matches torch's float32 table to within one ulp.
    """
    exponent = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    power = (np.float64(theta) ** exponent.astype(np.float64)).astype(np.float32)
    return (np.float32(1.0) / power).astype(np.float32)


def rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def vision_rotary(
    vision_pos: jax.Array, head_dim: int, theta: float
) -> tuple[jax.Array, jax.Array]:
    """ViT 2D rotary tables.

    vision_pos: int32[B, P, 2] (h, w) patch ids. Returns cos, sin: float32[B, P, head_dim]
    with the layout [h(H/4) w(H/4) h(H/4) w(H/4)]; frequencies come from dim H/2.
    """
    inv = jnp.asarray(inv_freq(head_dim // 2, theta))  # [H/4]
    pos = vision_pos.astype(jnp.float32)
    freqs = jnp.concatenate([pos[..., 0:1] * inv, pos[..., 1:2] * inv], axis=-1)  # [B, P, H/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_vision_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: [B, P, N, H]; cos/sin: float32[B, P, H]. Rotates in float32, returns x's dtype."""
    x32 = x.astype(jnp.float32)
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    return (x32 * c + rotate_half(x32) * s).astype(x.dtype)


def mrope(
    positions: jax.Array,
    head_dim: int,
    theta: float,
    mrope_section: Sequence[int],
    dtype: jnp.dtype,
) -> tuple[jax.Array, jax.Array]:
    """Multimodal rotary tables.

    positions: int32[3, B, L] (t, h, w). Returns cos, sin: dtype[B, L, H], layout
    [t h w | t h w] with chunk sizes mrope_section (non-interleaved).
    """
    inv = jnp.asarray(inv_freq(head_dim, theta))  # [H/2]
    freqs = positions.astype(jnp.float32)[..., None] * inv  # [3, B, L, H/2]
    bounds = np.cumsum([0, *mrope_section])
    if bounds[-1] != head_dim // 2:
        raise ValueError(f"mrope_section {tuple(mrope_section)} must sum to {head_dim // 2}")
    chunks = [freqs[axis, ..., bounds[axis] : bounds[axis + 1]] for axis in range(3)]
    f = jnp.concatenate(chunks, axis=-1)  # [B, L, H/2]
    emb = jnp.concatenate([f, f], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: [B, L, N, H]; cos/sin: [B, L, H] already in x's dtype (text M-RoPE)."""
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    return x * c + rotate_half(x) * s
