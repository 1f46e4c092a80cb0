"""A tiny stand-in language model with the `Qwen25VL` method names, for fast training tests.

Parameter paths mimic the real tree (visual/..., model/embed_tokens, model/norm, lm_head) and
carry logical axis names, so freezing, weight-decay masks and sharding act on it as on the
real model; it compiles in well under a second.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from o3video_jax.models.qwen2_5_vl.inputs import ModelInputs


def _dense(features, axes, name, use_bias=True):
    return nn.Dense(
        features,
        use_bias=use_bias,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.3), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.normal(0.1), axes[1:]),
        name=name,
    )


class ToyVisual(nn.Module):
    dim: int

    @nn.compact
    def __call__(self, x):
        return jnp.tanh(_dense(self.dim, ("embed", "mlp"), "proj")(x))


class ToyText(nn.Module):
    vocab: int
    dim: int

    def setup(self):
        self.embed_tokens = nn.Embed(
            self.vocab,
            self.dim,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(1.0), ("vocab", "embed")
            ),
        )
        self.mlp = _dense(self.dim, ("embed", "mlp"), "mlp")
        self.norm = nn.RMSNorm(
            scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",))
        )

    def __call__(self, ids, extra):
        e = self.embed_tokens(ids)
        return self.norm(e + jnp.tanh(self.mlp(e + extra(e))))


class ToyLM(nn.Module):
    vocab: int = 32
    dim: int = 16

    def setup(self):
        self.visual = ToyVisual(self.dim)
        self.model = ToyText(self.vocab, self.dim)
        self.lm_head = _dense(self.vocab, ("embed", "vocab"), "lm_head", use_bias=False)

    def hidden_states(self, inputs: ModelInputs) -> jax.Array:
        return self.model(inputs.input_ids, self.visual)

    def unembed(self, hidden: jax.Array) -> jax.Array:
        return self.lm_head(hidden).astype(jnp.float32)

    def __call__(self, inputs: ModelInputs) -> jax.Array:
        return self.unembed(self.hidden_states(inputs))
