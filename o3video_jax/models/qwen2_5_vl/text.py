"""The Qwen2 decoder (docs/qwen2_5_vl.md §3) with M-RoPE, packing and a KV cache.

Pre-norm layers: h = x + o_proj(attn(norm_in(x))); y = h + mlp(norm_post(h)). q/k/v have
biases, o_proj and the MLP do not. Attention is the segment-id primitive: causal within equal
non-zero segment ids, which covers left padding and packed rows alike.

Two parameter layouts (`config.scan_layers`): unrolled, `layers_{i}/...` per layer, or one
`nn.scan` over the layers with every parameter stacked on a leading "layers" axis
(`layers/...`, [N, ...]); the same layer body runs in both, so their numerics agree. The
one-token decode step runs unrolled over the stacked parameters in either layout. The KV
cache is stacked by layer in both (cache.py).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from .attention import attention, cached_attention
from .cache import KVCache
from .config import TextConfig
from .layers import Dense, Embed, RMSNorm, remat_module, scan_stack
from .rope import apply_rotary, mrope

ACT_TEXT = ("batch", "length", "act_embed")


class TextAttention(nn.Module):
    config: TextConfig
    backend: str
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, cos, sin, segment_ids, cache=None, kv_segment_ids=None, slot=None):
        """x: [B, T, D]; cos/sin: [B, T, H]; segment_ids: int32[B, T].

        Without a cache attends to its own keys and returns them as (k, v) [B, T, K, H]. With
        one, cache = (k, v) [N, B, K, S, H] arrays of all layers and slot = (layer, index): the
        new keys are written in place at that layer's slot `index`, the queries attend to the
        layer's whole cache under kv_segment_ids int32[B, S]; returns the updated arrays.
        Returns (out [B, T, D], (k, v)).
        """
        cfg = self.config
        b, t, _ = x.shape
        n, kh, h = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        q = Dense(n * h, ("embed", "heads"), name="q_proj", **dense)(x).reshape(b, t, n, h)
        k = Dense(kh * h, ("embed", "kv_heads"), name="k_proj", **dense)(x).reshape(b, t, kh, h)
        v = Dense(kh * h, ("embed", "kv_heads"), name="v_proj", **dense)(x).reshape(b, t, kh, h)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is None:
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
            # The cache is heads-major [N, B, K, S, H]: write the new keys in place at the slot.
            layer, index = slot
            at = (layer, 0, 0, index, 0)
            k_new = k.transpose(0, 2, 1, 3)[None].astype(cache[0].dtype)  # [1, B, K, T, H]
            v_new = v.transpose(0, 2, 1, 3)[None].astype(cache[1].dtype)
            k = jax.lax.dynamic_update_slice(cache[0], k_new, at)
            v = jax.lax.dynamic_update_slice(cache[1], v_new, at)
            k_l = jax.lax.dynamic_index_in_dim(k, layer, 0, keepdims=False)  # [B, K, S, H]
            v_l = jax.lax.dynamic_index_in_dim(v, layer, 0, keepdims=False)
            # Decoding is memory-bound with T == 1: the portable kernel serves every platform.
            out = cached_attention(
                q,
                k_l.astype(q.dtype),
                v_l.astype(q.dtype),
                segment_ids,
                kv_segment_ids,
                scale=h**-0.5,
                q_offset=index,
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
    """One pre-norm layer, written as a scan body: (carry, *broadcast, layer) -> (carry, ys).

    carry is x [B, T, D] (a forward over the prompt; ys = this layer's (k, v) [B, T, K, H]),
    or (x, k, v) with the cache arrays [N, B, K, S, H] of all
    layers (a decode step that writes slot cache_index of `layer`; ys = None).
    """

    config: TextConfig
    backend: str
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(
        self, carry, cos, sin, segment_ids, kv_segment_ids=None, cache_index=None, layer=None
    ):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        decoding = isinstance(carry, tuple)
        x, cache = (carry[0], carry[1:]) if decoding else (carry, None)
        slot = (layer, cache_index) if decoding else None
        with jax.named_scope("text/layer"):
            with jax.named_scope("text/attn"):
                h = RMSNorm(cfg.rms_norm_eps, self.param_dtype, name="input_layernorm")(x)
                attn = TextAttention(cfg, self.backend, name="self_attn", **kw)
                out, kv = attn(h, cos, sin, segment_ids, cache, kv_segment_ids, slot)
                x = x + out
            with jax.named_scope("text/mlp"):
                h = RMSNorm(cfg.rms_norm_eps, self.param_dtype, name="post_attention_layernorm")(x)
                x = x + TextMLP(cfg, name="mlp", **kw)(h)
        x = nn.with_logical_constraint(x, ACT_TEXT)
        if decoding:
            return (x, *kv), None
        return x, kv


class TextModel(nn.Module):
    """embed_tokens, layers_{i} (or layers, stacked), norm (HF `model.language_model`)."""

    config: TextConfig
    backend: str = "xla"
    remat: str = "none"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    scan_layers: bool = False

    def setup(self):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, **kw)
        layer_cls = remat_module(DecoderLayer, self.remat, scanned=self.scan_layers)
        n = cfg.num_hidden_layers
        if self.scan_layers:
            # Scanned: (cos, sin, segment_ids, kv_segment_ids, cache_index) broadcast to every
            # layer, the layer index scanned. A forward's unused keys are dropped by XLA (the
            # scan's dead outputs), as the unrolled layout's are.
            b = nn.broadcast
            self.layers = scan_stack(layer_cls, n, (b, b, b, b, b, 0))(cfg, self.backend, **kw)
        else:
            self.layers = [layer_cls(cfg, self.backend, **kw) for _ in range(n)]
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
        Returns (hidden after the final norm [B, L, D], stacked (k, v) [N, B, L, K, H])."""
        cos, sin = self.rotary(positions)
        if self.scan_layers:
            layer_ids = jnp.arange(self.config.num_hidden_layers, dtype=jnp.int32)
            x, kv = self.layers(x, cos, sin, segment_ids, None, None, layer_ids)
        else:
            kvs = []
            for layer in self.layers:
                x, kv = layer(x, cos, sin, segment_ids)
                kvs.append(kv)
            kv = tuple(jnp.stack(a) for a in zip(*kvs, strict=True))
        return self.norm(x), kv

    def decode(self, x, cache: KVCache):
        """One token per row against the cache. x: [B, 1, D] -> ([B, 1, D], new cache)."""
        b = x.shape[0]
        positions = jnp.broadcast_to(cache.next_pos[None, :, None], (3, b, 1))
        cos, sin = self.rotary(positions)
        seg = cache.decode_segment_ids()[:, None]  # [B, 1]
        kv_seg = jax.lax.dynamic_update_slice(cache.segment_ids, seg, (0, cache.index))
        carry = (x, cache.k, cache.v)
        if self.scan_layers:
            # Unrolled over the stacked parameters, not scanned: carried through a layer scan,
            # the cache gets a copy per token (XLA:TPU re-lays the loop-carried buffer out); a
            # decode step is small, so its HLO growing with depth costs little compile time.
            stacked = nn.unbox(self.layers.variables["params"])
            kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
            layer = DecoderLayer(self.config, self.backend, **kw, parent=None)  # unbound
            for i in range(self.config.num_hidden_layers):
                p = jax.tree.map(lambda a, i=i: a[i], stacked)
                carry, _ = layer.apply({"params": p}, carry, cos, sin, seg, kv_seg, cache.index, i)
        else:
            for i, layer in enumerate(self.layers):
                carry, _ = layer(carry, cos, sin, seg, kv_seg, cache.index, i)
        x, k, v = carry
        new_cache = KVCache(
            k=k,
            v=v,
            segment_ids=kv_seg,
            index=cache.index + 1,
            next_pos=cache.next_pos + 1,
        )
        return self.norm(x), new_cache

    def attend(self, x):
        """Tied unembedding: float32[..., V]."""
        return self.embed_tokens.attend(x)
