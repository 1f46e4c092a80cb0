"""Basic layers with logically partitioned parameters: RMSNorm, Dense, Embed.

Every parameter carries logical axis names (`o3video_jax.train.sharding` lists them) next to
its shape and initialiser, so the one rule table decides where it lives (docs/design.md decision 4).
Parameter names follow the Flax/HF mirror of docs/design.md ("The Flax parameter tree"): Dense {kernel [in, out], bias [out]},
RMSNorm {scale [D]}, Embed {embedding [V, D]}.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Axes = Sequence[str | None]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def as_dtype(name: str) -> jnp.dtype:
    """Config dtype string ("float32" | "bfloat16") -> jnp dtype."""
    return DTYPES[name]


def _init(init_fn, axes: Axes):
    return nn.with_logical_partitioning(init_fn, tuple(axes))


class RMSNorm(nn.Module):
    """HF Qwen2 RMSNorm: fp32 mean(x^2) and rsqrt, cast to the input dtype, then * scale.

    The scale multiply happens after the cast, so in bfloat16 it sees the rounded value
    (docs/qwen2_5_vl.md §7.7).
    """

    eps: float
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", _init(nn.initializers.ones, ("norm",)), (x.shape[-1],))
        scale = scale.astype(self.param_dtype)
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = (x32 * jax.lax.rsqrt(var + self.eps)).astype(x.dtype)
        return scale.astype(x.dtype) * y


class Dense(nn.Module):
    """y = x @ kernel (+ bias); kernel [in, out] with logical axes `axes` = (in_axis, out_axis).

    `out_dtype` (default: dtype) sets the matmul's result type, e.g. float32 logits from
    bfloat16 activations without an intermediate rounding.
    """

    features: int
    axes: tuple[str | None, str | None]
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    out_dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            _init(nn.initializers.normal(0.02), self.axes),
            (x.shape[-1], self.features),
            self.param_dtype,
        )
        y = jnp.einsum(
            "...i,io->...o",
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            preferred_element_type=self.out_dtype or self.dtype,
        )
        if self.use_bias:
            bias = self.param(
                "bias",
                _init(nn.initializers.zeros, self.axes[1:]),
                (self.features,),
                self.param_dtype,
            )
            y = y + bias.astype(y.dtype)
        return y


class Embed(nn.Module):
    """Token embedding table [V, D] ("vocab", "embed"); `attend` is the tied unembedding."""

    num_embeddings: int
    features: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.embedding = self.param(
            "embedding",
            _init(nn.initializers.normal(0.02), ("vocab", "embed")),
            (self.num_embeddings, self.features),
            self.param_dtype,
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        """int[...] -> dtype[..., D]."""
        return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """dtype[..., D] -> float32[..., V] (x @ embedding.T)."""
        return jnp.einsum(
            "...d,vd->...v",
            x.astype(self.dtype),
            self.embedding.astype(self.dtype),
            preferred_element_type=jnp.float32,
        )


REMAT_POLICIES = ("none", "full", "save_dots")


def remat_module(cls: type[nn.Module], policy: str, scanned: bool = False) -> type[nn.Module]:
    """Wraps a block class in `nn.remat` per config.remat ("none" | "full" | "save_dots").

    `scanned`: the block is a scan body; the scan already keeps XLA from merging the
    recomputation into the forward, so the CSE barriers are dropped (as in MaxText).
    """
    if policy == "none":
        return cls
    if policy == "full":
        return nn.remat(cls, prevent_cse=not scanned)
    if policy == "save_dots":
        return nn.remat(
            cls,
            policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
            prevent_cse=not scanned,
        )
    raise ValueError(f"remat policy {policy!r} is not one of {REMAT_POLICIES}")


def scan_stack(layer_cls: type[nn.Module], length: int, in_axes: tuple) -> type[nn.Module]:
    """`layer_cls` under `nn.scan` over `length` layers: parameters stacked on a leading
    "layers" axis (no mesh axis shards it), a fresh init rng per layer."""
    return nn.scan(
        layer_cls,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=in_axes,
        length=length,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
