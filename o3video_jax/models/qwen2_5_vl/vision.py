"""The Qwen2.5-VL vision tower (docs/qwen2_5_vl.md §2), batched over rows.

Each row holds up to P patches (the row's images and video frames, processor order, zero
padding at the end). The host prepared everything that depends on the grids (docs/design.md
decision 2): rotary ids, the window permutation of 2x2 merge units, and segment ids for the
windowed and the full-attention blocks (both already in window order). Attention is the
segment-id primitive, so padding (segment 0) never mixes with real patches.

Memory is linear in P on every backend (docs/design.md decision 16). "pallas" runs splash
attention (blockwise). Otherwise window blocks use the banded local segment attention
(local_attention.py; windows have the static bound `max_window_patches`): exact, O(P * band)
scores, and on CPU O(P * Smax) when every segment sits inside one aligned block of Smax
patches. Frame (full-attention) blocks use the same banded path when `max_frame_patches`
bounds a frame tightly enough that the band stays narrow (<= LOCAL_MAX_BAND keys), and
otherwise, for rows longer than FRAME_BLOCK, the tiled attention of flash_attention.py
(`blocked_attention`: [FRAME_BLOCK, FRAME_BLOCK] tiles, only the key blocks a query block's
frames reach). Short rows keep the dense primitive.

Forward per row (docs/qwen2_5_vl.md §2.6): patch matmul -> permute hidden states AND rotary tables into
window order -> blocks (window / per-frame full attention) -> merger on 4 consecutive rows ->
inverse permutation back to processor order.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from .attention import attention
from .config import VisionConfig
from .flash_attention import blocked_attention
from .layers import Dense, RMSNorm, remat_module, scan_stack
from .local_attention import band_width, local_segment_attention, uses_local_path
from .rope import apply_vision_rotary, vision_rotary

VISION_EPS = 1e-6  # hard-coded in HF for every vision norm (docs/qwen2_5_vl.md §7.7)
ACT_VISION = ("batch", "patches", "act_embed")
# The frame blocks' tiled path: [FRAME_BLOCK, FRAME_BLOCK] score tiles (16 MB a row at 16 heads,
# float32), used when the banded path would score more than LOCAL_MAX_BAND keys per query.
FRAME_BLOCK = 512
LOCAL_MAX_BAND = 1024


def frame_attention_path(num_patches: int, config: VisionConfig) -> str:
    """Which kernel a full-attention block of rows of P patches uses on the XLA path:
    "local" (banded), "blocked" (tiles) or "dense"."""
    bound, chunk = config.max_frame_patches, config.attention_chunk
    if uses_local_path(num_patches, chunk, bound) and band_width(chunk, bound) <= LOCAL_MAX_BAND:
        return "local"
    return "blocked" if num_patches > FRAME_BLOCK else "dense"


def permute_units(x: jax.Array, index: jax.Array) -> jax.Array:
    """Gathers whole merge units: x [B, P, ...], index int32[B, P // 4] -> [B, P, ...]."""
    b, p = x.shape[:2]
    units = x.reshape(b, p // 4, 4, *x.shape[2:])
    idx = index.reshape(b, p // 4, *([1] * (units.ndim - 2)))
    return jnp.take_along_axis(units, idx, axis=1).reshape(x.shape)


class VisionAttention(nn.Module):
    config: VisionConfig
    backend: str
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, window_segment_ids, frame_segment_ids, cos, sin, full):
        """x: [B, P, Dv]; window/frame_segment_ids: int32[B, P]; cos/sin: float32[B, P, Hv].

        `full` (bool, or a traced bool in a scanned tower): attend within frames (a
        full-attention block) instead of windows.
        """
        cfg = self.config
        b, p, d = x.shape
        n, h = cfg.num_heads, cfg.head_dim
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        qkv = Dense(3 * d, ("vision_embed", "vision_qkv"), name="qkv", **dense)(x)
        qkv = qkv.reshape(b, p, 3, n, h)  # q | k | v, each head-major
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q, k = apply_vision_rotary(q, cos, sin), apply_vision_rotary(k, cos, sin)

        def kernel(full: bool, q=q, k=k, v=v):
            with jax.named_scope("vision/full_attn" if full else "vision/window_attn"):
                segment_ids = frame_segment_ids if full else window_segment_ids
                if self.backend == "pallas":
                    return attention(
                        q, k, v, segment_ids, segment_ids, causal=False, scale=h**-0.5,
                        backend=self.backend,
                    )  # fmt: skip
                # cuDNN would take a [B, 1, P, P] mask: the XLA paths serve "cudnn" too.
                if full and frame_attention_path(p, cfg) == "blocked":
                    return blocked_attention(
                        q, k, v, segment_ids, segment_ids, causal=False, scale=h**-0.5,
                        block=FRAME_BLOCK,
                    )  # fmt: skip
                # The static bound on a segment's patches picks the banded kernel's layout;
                # it falls back to the dense path itself when banding saves nothing.
                bound = cfg.max_frame_patches if full else cfg.max_window_patches
                return local_segment_attention(
                    q, k, v, segment_ids, max_segment_len=bound, scale=h**-0.5,
                    chunk=cfg.attention_chunk,
                )  # fmt: skip

        if isinstance(full, bool):
            out = kernel(full)
        else:
            # A scanned block: its kind is data, both kernels are in the body. Each branch is
            # checkpointed: the residuals of a `cond` are the union of both branches', so a
            # frame branch's score tiles would otherwise be allocated for every block (and
            # saved per block without remat); now both save only q, k, v.
            branch = lambda f: jax.checkpoint(lambda q, k, v: kernel(f, q, k, v))
            out = jax.lax.cond(full, branch(True), branch(False), q, k, v)
        return Dense(d, ("vision_qkv", "vision_embed"), name="proj", **dense)(out.reshape(b, p, d))


class VisionMLP(nn.Module):
    """Biased SwiGLU: down(silu(gate(x)) * up(x))."""

    config: VisionConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        gate = Dense(
            cfg.intermediate_size, ("vision_embed", "vision_mlp"), name="gate_proj", **dense
        )
        up = Dense(cfg.intermediate_size, ("vision_embed", "vision_mlp"), name="up_proj", **dense)
        down = Dense(cfg.hidden_size, ("vision_mlp", "vision_embed"), name="down_proj", **dense)
        return down(jax.nn.silu(gate(x)) * up(x))


class VisionBlock(nn.Module):
    """One pre-norm block, written as a scan body: (x, *broadcast, full) -> (x, None).

    full_attention: the block's kind when unrolled; None in a scanned tower, where the
    per-block flag `full` (bool[] scanned input) chooses it.
    """

    config: VisionConfig
    backend: str
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    full_attention: bool | None = None

    @nn.compact
    def __call__(self, x, window_segment_ids, frame_segment_ids, cos, sin, full=None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        full = self.full_attention if self.full_attention is not None else full
        h = RMSNorm(VISION_EPS, self.param_dtype, name="norm1")(x)
        attn = VisionAttention(self.config, self.backend, name="attn", **kw)
        x = x + attn(h, window_segment_ids, frame_segment_ids, cos, sin, full)
        with jax.named_scope("vision/mlp"):
            h = RMSNorm(VISION_EPS, self.param_dtype, name="norm2")(x)
            x = x + VisionMLP(self.config, name="mlp", **kw)(h)
        return nn.with_logical_constraint(x, ACT_VISION), None


class PatchMerger(nn.Module):
    """ln_q per patch, concatenate 4 consecutive rows, Linear -> exact GELU -> Linear."""

    config: VisionConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        """x: [B, P, Dv] in window order -> [B, P // 4, D_text]."""
        cfg = self.config
        b, p, d = x.shape
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = RMSNorm(VISION_EPS, self.param_dtype, name="ln_q")(x).reshape(b, p // 4, 4 * d)
        x = Dense(4 * d, (None, "merger_in"), name="mlp_0", **dense)(x)
        x = jax.nn.gelu(x, approximate=False)
        return Dense(cfg.out_hidden_size, ("merger_in", "embed"), name="mlp_2", **dense)(x)


class VisionTower(nn.Module):
    """pixel rows -> merged features [B, P // 4, D_text] in processor order."""

    config: VisionConfig
    backend: str = "xla"
    remat: str = "none"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    scan_layers: bool = False  # blocks_{i} unrolled, or one scan over stacked `blocks`

    @nn.compact
    def __call__(
        self, pixel_values, vision_pos, window_index, window_segment_ids, frame_segment_ids
    ):
        """pixel_values: float32[B, P, 1176]; vision_pos: int32[B, P, 2]; window_index:
        int32[B, P // 4]; window/frame_segment_ids: int32[B, P] (window order)."""
        cfg = self.config
        p = pixel_values.shape[1]
        if p % 4:
            raise ValueError(f"vision: max_patches {p} is not a multiple of 4 (merge unit)")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        with jax.named_scope("vision/patch_embed"):
            x = Dense(
                cfg.hidden_size,
                ("patch_dim", "vision_embed"),
                use_bias=False,
                name="patch_embed",
                **kw,
            )(pixel_values.astype(self.dtype))
            cos, sin = vision_rotary(vision_pos, cfg.head_dim, cfg.rope_theta)
            # The rotary tables travel with their patches (docs/qwen2_5_vl.md §7.1).
            x = permute_units(x, window_index)
            cos, sin = permute_units(cos, window_index), permute_units(sin, window_index)
            x = nn.with_logical_constraint(x, ACT_VISION)
        block_cls = remat_module(VisionBlock, self.remat, scanned=self.scan_layers)
        segments = (window_segment_ids, frame_segment_ids)
        if self.scan_layers:
            # One scan; the full-attention blocks are chosen per index by a scanned flag.
            b = nn.broadcast
            blocks = scan_stack(block_cls, cfg.depth, (b, b, b, b, 0))
            full = jnp.asarray([i in cfg.fullatt_block_indexes for i in range(cfg.depth)])
            x, _ = blocks(cfg, self.backend, name="blocks", **kw)(x, *segments, cos, sin, full)
        else:
            for i in range(cfg.depth):
                block = block_cls(
                    cfg, self.backend, full_attention=i in cfg.fullatt_block_indexes,
                    name=f"blocks_{i}", **kw,
                )  # fmt: skip
                x, _ = block(x, *segments, cos, sin)
        with jax.named_scope("vision/merger"):
            y = PatchMerger(cfg, name="merger", **kw)(x)  # [B, P // 4, D] window order
            inverse = jnp.argsort(window_index, axis=-1)
            return jnp.take_along_axis(y, inverse[:, :, None], axis=1)
