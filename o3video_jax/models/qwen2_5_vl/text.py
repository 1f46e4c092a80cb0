"""The Qwen2 decoder (reference section 3) with M-RoPE, packing and a KV cache.

Pre-norm layers: h = x + o_proj(attn(norm_in(x))); y = h + mlp(norm_post(h)). q/k/v have
biases, o_proj and the MLP do not. Attention is the segment-id primitive: causal within equal
non-zero segment ids, which covers left padding and packed rows alike.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from .attention import attention, cached_attention
from .cache import KVCache
from .config import TextConfig
from .layers import Dense, Embed, RMSNorm, remat_module
from .rope import apply_rotary, mrope

ACT_TEXT = ("batch", "length", "act_embed")


class TextAttention(nn.Module):
    config: TextConfig
    backend: str
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, cos, sin, segment_ids, kv, kv_segment_ids, cache_index):
        """x: [B, T, D]; cos/sin: [B, T, H]; segment_ids: int32[B, T].

        Without a cache (kv None) attends to its own keys and returns them as (k, v)
        [B, T, K, H]. With one, kv = (k, v) [B, K, S, H] cache arrays: the new keys are written
        at slot cache_index and the queries attend to the whole cache under kv_segment_ids
        int32[B, S]; returns the updated cache arrays. Returns (out [B, T, D], (k, v)).
        """
        cfg = self.config
        b, t, _ = x.shape
        n, kh, h = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        q = Dense(n * h, ("embed", "heads"), name="q_proj", **dense)(x).reshape(b, t, n, h)
        k = Dense(kh * h, ("embed", "kv_heads"), name="k_proj", **dense)(x).reshape(b, t, kh, h)
        v = Dense(kh * h, ("embed", "kv_heads"), name="v_proj", **dense)(x).reshape(b, t, kh, h)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv is None:
            out = attention(
                q,
                k,
                v,
                segment_ids,
                segment_ids,
                causal=True,
                scale=h**-0.5,
                backend=self.backend,
                chunk=cfg.attention_chunk,
            )
        else:
            # The cache is heads-major [B, K, S, H]: write the new keys in place at the slot.
            slot = (0, 0, cache_index, 0)
            k_new = k.transpose(0, 2, 1, 3).astype(kv[0].dtype)  # [B, K, T, H]
            v_new = v.transpose(0, 2, 1, 3).astype(kv[1].dtype)
            k = jax.lax.dynamic_update_slice(kv[0], k_new, slot)
            v = jax.lax.dynamic_update_slice(kv[1], v_new, slot)
            # Decoding is memory-bound with T == 1: the portable kernel serves every platform.
            out = cached_attention(
                q,
                k.astype(q.dtype),
                v.astype(q.dtype),
                segment_ids,
                kv_segment_ids,
                scale=h**-0.5,
                q_offset=cache_index,
            )
        out = Dense(cfg.hidden_size, ("heads", "embed"), use_bias=False, name="o_proj", **dense)(
            out.reshape(b, t, n * h)
        )
        return out, (k, v)


class TextMLP(nn.Module):
    config: TextConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        dense = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
        gate = Dense(cfg.intermediate_size, ("embed", "mlp"), name="gate_proj", **dense)
        up = Dense(cfg.intermediate_size, ("embed", "mlp"), name="up_proj", **dense)
        down = Dense(cfg.hidden_size, ("mlp", "embed"), name="down_proj", **dense)
        return down(jax.nn.silu(gate(x)) * up(x))


class DecoderLayer(nn.Module):
    config: TextConfig
    backend: str
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, cos, sin, segment_ids, kv=None, kv_segment_ids=None, cache_index=None):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        with jax.named_scope("text/layer"):
            with jax.named_scope("text/attn"):
                h = RMSNorm(cfg.rms_norm_eps, self.param_dtype, name="input_layernorm")(x)
                attn = TextAttention(cfg, self.backend, name="self_attn", **kw)
                out, new_kv = attn(h, cos, sin, segment_ids, kv, kv_segment_ids, cache_index)
                x = x + out
            with jax.named_scope("text/mlp"):
                h = RMSNorm(cfg.rms_norm_eps, self.param_dtype, name="post_attention_layernorm")(x)
                x = x + TextMLP(cfg, name="mlp", **kw)(h)
        return nn.with_logical_constraint(x, ACT_TEXT), new_kv


class TextModel(nn.Module):
    """embed_tokens, layers_{i}, norm (HF `model.language_model`)."""

    config: TextConfig
    backend: str = "xla"
    remat: str = "none"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, **kw)
        layer_cls = remat_module(DecoderLayer, self.remat)
        self.layers = [layer_cls(cfg, self.backend, **kw) for _ in range(cfg.num_hidden_layers)]
        self.norm = RMSNorm(cfg.rms_norm_eps, self.param_dtype)

    def embed(self, input_ids, features=None, feature_index=None):
        """input_ids int32[B, L] -> [B, L, D]; features [B, F, D] are written where
        feature_index int32[B, L] >= 0 (index into the row's features; -1 keeps the token)."""
        x = self.embed_tokens(input_ids)
        if features is not None:
            idx = jnp.clip(feature_index, 0, features.shape[1] - 1)
            picked = jnp.take_along_axis(features.astype(x.dtype), idx[:, :, None], axis=1)
            x = jnp.where((feature_index >= 0)[:, :, None], picked, x)
        return nn.with_logical_constraint(x, ACT_TEXT)

    def rotary(self, positions):
        cfg = self.config
        return mrope(positions, cfg.head_dim, cfg.rope_theta, cfg.mrope_section, self.dtype)

    def __call__(self, x, positions, segment_ids):
        """x: [B, L, D] embeddings; positions int32[3, B, L]; segment_ids int32[B, L].
        Returns (hidden after the final norm [B, L, D], per-layer (k, v) [B, L, K, H])."""
        cos, sin = self.rotary(positions)
        kvs = []
        for layer in self.layers:
            x, kv = layer(x, cos, sin, segment_ids)
            kvs.append(kv)
        return self.norm(x), kvs

    def decode(self, x, cache: KVCache):
        """One token per row against the cache. x: [B, 1, D] -> ([B, 1, D], new cache)."""
        b = x.shape[0]
        positions = jnp.broadcast_to(cache.next_pos[None, :, None], (3, b, 1))
        cos, sin = self.rotary(positions)
        seg = cache.decode_segment_ids()[:, None]  # [B, 1]
        kv_seg = jax.lax.dynamic_update_slice(cache.segment_ids, seg, (0, cache.index))
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            x, (k, v) = layer(x, cos, sin, seg, (cache.k[i], cache.v[i]), kv_seg, cache.index)
            ks.append(k)
            vs.append(v)
        new_cache = KVCache(
            k=tuple(ks),
            v=tuple(vs),
            segment_ids=kv_seg,
            index=cache.index + 1,
            next_pos=cache.next_pos + 1,
        )
        return self.norm(x), new_cache

    def attend(self, x):
        """Tied unembedding: float32[..., V]."""
        return self.embed_tokens.attend(x)
