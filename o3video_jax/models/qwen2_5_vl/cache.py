"""The decoder's KV cache: a pytree of fixed-size arrays (static shapes under jit).

Slots [0, index) are written: the left-padded prompt by `prefill`, then one token per
`decode_step`. `segment_ids` marks each slot's segment (0 = padding or not yet written), so
the attention primitive's segment rule masks both padding and the unwritten tail. Keys are
stored after M-RoPE.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """k, v:        tuple over layers of [B, K, S, H] (S = cache_len slots; heads-major so that
                  a decode step's attention dots read the cache as stored, without a copy).
    segment_ids:  int32[B, S]   segment per slot, 0 = padding / empty.
    index:        int32[]       next slot to write (same for every row: prompts are left-padded).
    next_pos:     int32[B]      M-RoPE position of the next token ("last + 1" rule of generate).
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    segment_ids: jax.Array
    index: jax.Array
    next_pos: jax.Array

    @property
    def batch_size(self) -> int:
        return self.segment_ids.shape[0]

    @property
    def max_len(self) -> int:
        return self.segment_ids.shape[1]

    def repeat(self, g: int) -> KVCache:
        """Each row repeated g times (rows b*g .. b*g+g-1 copy row b): one prefill per prompt
        serves a group of G samples (DESIGN decision 6)."""
        rep = lambda x: jnp.repeat(x, g, axis=0)
        return KVCache(
            k=tuple(rep(x) for x in self.k),
            v=tuple(rep(x) for x in self.v),
            segment_ids=rep(self.segment_ids),
            index=self.index,
            next_pos=rep(self.next_pos),
        )

    def decode_segment_ids(self) -> jax.Array:
        """int32[B]: the segment new tokens join (that of the last written slot)."""
        return jax.lax.dynamic_index_in_dim(self.segment_ids, self.index - 1, 1, keepdims=False)

    def replace(self, **kwargs) -> KVCache:
        return dataclasses.replace(self, **kwargs)
