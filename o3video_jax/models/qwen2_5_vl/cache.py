"""The decoder's KV cache: a pytree of fixed-size arrays (static shapes under jit).

Slots [0, index) are written: the left-padded prompt by `prefill`, then one token per
`decode_step`. `segment_ids` marks each slot's segment (0 = padding or not yet written), so
the attention primitive's segment rule masks both padding and the unwritten tail. Keys are
stored after M-RoPE.

The keys and values of all layers are one array each, with a leading layer axis, for both
parameter layouts: a scanned decoder carries it through its scan and a decode step writes one
slot of one layer in place. The logical axes of every field are declared once, here
(`KVCache.logical_axes`); the layer axis maps to no mesh axis, rows and KV heads to whatever
the rule table in use says (the training table, or a serving layout's).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

# Logical axes of the fields (see `o3video_jax.train.sharding` for the rule tables).
KV_AXES = ("layers", "batch", "act_kv_heads", "length", "head_dim")  # k, v [N, B, K, S, H]
SEGMENT_AXES = ("batch", "length")  # segment_ids [B, S]
ROW_AXES = ("batch",)  # next_pos [B]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """k, v:        [N, B, K, S, H] (N layers, S = cache_len slots; heads-major so that a decode
                  step's attention dots read a layer's cache as stored, without a copy).
    segment_ids:  int32[B, S]   segment per slot, 0 = padding / empty.
    index:        int32[]       next slot to write (same for every row: prompts are left-padded).
    next_pos:     int32[B]      M-RoPE position of the next token ("last + 1" rule of generate).
    """

    k: jax.Array
    v: jax.Array
    segment_ids: jax.Array
    index: jax.Array
    next_pos: jax.Array

    @staticmethod
    def logical_axes() -> KVCache:
        """The logical axis names of every field, as a KVCache of tuples (a sharding layout
        maps them with its rule table, e.g. `nn.logical_to_mesh_sharding`)."""
        return KVCache(k=KV_AXES, v=KV_AXES, segment_ids=SEGMENT_AXES, index=(), next_pos=ROW_AXES)

    @staticmethod
    def shape(
        layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int, dtype
    ) -> KVCache:
        """The abstract cache (ShapeDtypeStructs) of these sizes."""
        sds = jax.ShapeDtypeStruct
        kv = sds((layers, batch, kv_heads, max_len, head_dim), jnp.dtype(dtype))
        return KVCache(
            k=kv,
            v=kv,
            segment_ids=sds((batch, max_len), jnp.int32),
            index=sds((), jnp.int32),
            next_pos=sds((batch,), jnp.int32),
        )

    @property
    def num_layers(self) -> int:
        return self.k.shape[0]

    @property
    def batch_size(self) -> int:
        return self.segment_ids.shape[0]

    @property
    def max_len(self) -> int:
        return self.segment_ids.shape[1]

    def constrain(self) -> KVCache:
        """The cache with its logical sharding constraints (no-op outside a rule context)."""
        axes = self.logical_axes()
        return KVCache(
            k=nn.with_logical_constraint(self.k, axes.k),
            v=nn.with_logical_constraint(self.v, axes.v),
            segment_ids=nn.with_logical_constraint(self.segment_ids, axes.segment_ids),
            index=self.index,
            next_pos=nn.with_logical_constraint(self.next_pos, axes.next_pos),
        )

    def repeat(self, g: int) -> KVCache:
        """Each row repeated g times (rows b*g .. b*g+g-1 copy row b): one prefill per prompt
        serves a group of G samples (docs/design.md decision 6)."""
        return KVCache(
            k=jnp.repeat(self.k, g, axis=1),
            v=jnp.repeat(self.v, g, axis=1),
            segment_ids=jnp.repeat(self.segment_ids, g, axis=0),
            index=self.index,
            next_pos=jnp.repeat(self.next_pos, g, axis=0),
        )

    def decode_segment_ids(self) -> jax.Array:
        """int32[B]: the segment new tokens join (that of the last written slot)."""
        return jax.lax.dynamic_index_in_dim(self.segment_ids, self.index - 1, 1, keepdims=False)

    def replace(self, **kwargs) -> KVCache:
        return dataclasses.replace(self, **kwargs)
