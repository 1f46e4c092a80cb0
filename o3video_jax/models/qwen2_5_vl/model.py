"""`Qwen25VL`: vision tower + Qwen2 decoder over fixed-size `ModelInputs`.

Parameter tree (mirrors HF, docs/design.md "The Flax parameter tree"): visual/..., model/embed_tokens, model/layers_{i},
model/norm, lm_head (absent when tie_word_embeddings). With config.scan_layers the decoder
layers are one stacked `model/layers` and the vision blocks one stacked `visual/blocks`
(leading "layers" axis; `o3video_jax.checkpoints.layout` converts). `init` returns parameters boxed with
their logical axes (`nn.LogicallyPartitioned`); `nn.get_partition_spec` on the abstract tree
gives the shardings, `nn.unbox` the plain arrays. `apply` accepts either.

Entry points (all pure; one compile per shape budget):
  __call__(inputs, vision_group=1)    -> float32[B, L, V]   (or (logits, aux) with return_aux)
  hidden_states(inputs, vision_group=1) -> [B, L, D] after the final norm
  unembed(hidden)                     -> float32[..., V]
  vision_features(inputs)             -> [B, P // 4, D] merged features, processor order
  prefill(inputs, cache_len)          -> (KVCache, float32[B, V] logits at position L - 1)
  decode_step(tokens, cache)          -> (float32[B, V], KVCache)

`vision_group` g (static int, docs/design.md decision 6 for the training forward): the text fields
have B rows and the vision fields (pixel_values, vision_pos, window_index, window_segment_ids,
frame_segment_ids) B // g rows; the tower runs once per vision row, and text rows
b*g .. b*g + g - 1 all read the features of vision row b (a G-sample group shares its
prompt's pixels). The gradient of the shared features is then the sum over the g rows, as
for repeated pixels.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from .cache import KVCache
from .config import Qwen25VLConfig
from .inputs import PATCH_DIM, ModelInputs
from .layers import Dense, as_dtype
from .text import TextModel
from .vision import VisionTower


class Qwen25VL(nn.Module):
    config: Qwen25VLConfig

    def setup(self):
        cfg = self.config
        kw = dict(dtype=as_dtype(cfg.dtype), param_dtype=as_dtype(cfg.param_dtype))
        scan = dict(scan_layers=cfg.scan_layers)
        self.visual = VisionTower(cfg.vision, cfg.attention, cfg.remat, **kw, **scan)
        self.model = TextModel(cfg.text, cfg.attention, cfg.remat, **kw, **scan)
        if not cfg.tie_word_embeddings:
            self.lm_head = Dense(
                cfg.vocab_size, ("embed", "vocab"), use_bias=False, out_dtype=jnp.float32, **kw
            )

    # ---- pieces -----------------------------------------------------------------------------
    def vision_features(self, inputs: ModelInputs) -> jax.Array:
        """[B, P // 4, D_text] merged vision tokens of each row, processor order."""
        return self.visual(
            inputs.pixel_values,
            inputs.vision_pos,
            inputs.window_index,
            inputs.window_segment_ids,
            inputs.frame_segment_ids,
        )

    def unembed(self, hidden: jax.Array) -> jax.Array:
        """[..., D] (after the final norm) -> float32[..., V]."""
        if self.config.tie_word_embeddings:
            return self.model.attend(hidden)
        return self.lm_head(hidden).astype(jnp.float32)

    def _embed(self, inputs: ModelInputs, vision_group: int = 1):
        _check_inputs(inputs, vision_group)
        if inputs.max_patches == 0:
            if self.is_initializing():
                # Text-only init still creates the vision parameters (on one dummy unit).
                self.vision_features(_dummy_vision(inputs.batch_size))
            return self.model.embed(inputs.input_ids), None
        feats = self.vision_features(inputs)  # [B // g, P // 4, D]
        # Broadcast after the tower: text row b*g + j reads the features of vision row b.
        per_row = jnp.repeat(feats, vision_group, axis=0) if vision_group > 1 else feats
        return self.model.embed(inputs.input_ids, per_row, inputs.feature_index), feats

    def _forward(self, inputs: ModelInputs, vision_group: int = 1):
        x, feats = self._embed(inputs, vision_group)
        hidden, kvs = self.model(x, inputs.positions, inputs.segment_ids)
        return hidden, kvs, feats

    # ---- public methods -----------------------------------------------------------------------
    def __call__(self, inputs: ModelInputs, return_aux: bool = False, vision_group: int = 1):
        """float32[B, L, V] logits; with return_aux, (logits, {"hidden_states": [B, L, D],
        "vision_features": [B // vision_group, P // 4, D] or None})."""
        hidden, _, feats = self._forward(inputs, vision_group)
        logits = self.unembed(hidden)
        if return_aux:
            return logits, {"hidden_states": hidden, "vision_features": feats}
        return logits

    def hidden_states(self, inputs: ModelInputs, vision_group: int = 1) -> jax.Array:
        """[B, L, D] after the final norm (vision fields of B // vision_group rows, see the
        module docstring)."""
        return self._forward(inputs, vision_group)[0]

    def prefill(self, inputs: ModelInputs, cache_len: int) -> tuple[KVCache, jax.Array]:
        """Runs a LEFT-padded prompt batch; returns the cache (cache_len >= L slots, L written)
        and float32[B, V] logits at position L - 1."""
        b, length = inputs.input_ids.shape
        if cache_len < length:
            raise ValueError(f"prefill: cache_len {cache_len} < prompt length {length}")
        hidden, (k, v), _ = self._forward(inputs)
        # [N, B, L, K, H] -> the cache's heads-major [N, B, K, S, H] (cache.py), once per prompt.
        pad = lambda a: jnp.pad(
            a.transpose(0, 1, 3, 2, 4), ((0, 0), (0, 0), (0, 0), (0, cache_len - length), (0, 0))
        )
        cache = KVCache(
            k=pad(k),
            v=pad(v),
            segment_ids=jnp.pad(inputs.segment_ids, ((0, 0), (0, cache_len - length))),
            index=jnp.asarray(length, jnp.int32),
            # generate's "last + 1" rule; prompts end in text, where the three axes agree.
            next_pos=jnp.max(inputs.positions[:, :, -1], axis=0).astype(jnp.int32) + 1,
        ).constrain()
        return cache, self.unembed(hidden[:, -1])

    def decode_step(self, tokens: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """tokens int32[B] at slot cache.index, M-RoPE position cache.next_pos.
        Returns (float32[B, V], the cache with one more slot written)."""
        x = self.model.embed(tokens[:, None])
        hidden, cache = self.model.decode(x, cache)
        return self.unembed(hidden[:, 0]), cache


def _dummy_vision(batch: int) -> ModelInputs:
    zeros = lambda *s: jnp.zeros(s, jnp.int32)
    return ModelInputs(
        input_ids=zeros(batch, 1),
        segment_ids=zeros(batch, 1),
        positions=zeros(3, batch, 1),
        rope_deltas=zeros(batch),
        pixel_values=jnp.zeros((batch, 4, PATCH_DIM), jnp.float32),
        vision_pos=zeros(batch, 4, 2),
        window_index=zeros(batch, 1),
        window_segment_ids=jnp.ones((batch, 4), jnp.int32),
        frame_segment_ids=jnp.ones((batch, 4), jnp.int32),
        feature_index=zeros(batch, 1),
    )


def _check_inputs(inputs: ModelInputs, vision_group: int = 1) -> None:
    """Static shape checks (trace time): a clear ValueError instead of a broadcasting error."""
    b, length = inputs.input_ids.shape
    p = inputs.max_patches
    if vision_group < 1 or b % vision_group:
        raise ValueError(f"vision_group {vision_group} does not divide the {b} text rows")
    bv = b // vision_group
    expected = {
        "segment_ids": (b, length),
        "positions": (3, b, length),
        "rope_deltas": (b,),
        "pixel_values": (bv, p, PATCH_DIM),
        "vision_pos": (bv, p, 2),
        "window_index": (bv, p // 4),
        "window_segment_ids": (bv, p),
        "frame_segment_ids": (bv, p),
        "feature_index": (b, length),
    }
    for name, shape in expected.items():
        got = tuple(getattr(inputs, name).shape)
        if got != shape:
            raise ValueError(f"ModelInputs.{name} has shape {got}, expected {shape}")
    if p % 4:
        raise ValueError(f"ModelInputs.max_patches {p} is not a multiple of 4 (merge unit)")
