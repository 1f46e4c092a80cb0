"""Blocked "local segment" attention: exact segment attention that never builds P x P scores.

The vision tower's segments (windows in window order; frames for the full-attention blocks)
are contiguous runs of at most `max_segment_len` patches. A query at position i can then only
see keys in [i - Smax + 1, i + Smax - 1], so a chunk of C queries [s, s + C) needs only the key
band [s - Smax + 1, s + C + Smax - 1): width W = C + 2 (Smax - 1), rounded up to 8. Queries are
cut into chunks, each chunk's band is cut out of the zero-padded keys with static slices (no
gather), and the dense masking rule (attention.py) runs on [C, W] tiles. Cost O(P W) instead
of O(P^2); the score tensor is float32[B, N, P, W].

Exactness: with every non-zero segment contiguous and at most Smax long, a query's band holds
all of its segment's keys and the masked softmax sees exactly the terms the dense path sees
(only the summation order differs). The precondition is the caller's promise (the host-side
vision layout builds such segments; `check_local_segments` checks them in numpy). Under jit it
is verified per query at O(P) cost: a query whose band holds fewer keys of its segment than the
row does returns NaN, so a violated bound shows up loudly instead of as a silently wrong result.

Aligned fast path (CPU lowering; accelerators keep the bands, see attention.py
`by_lowering_platform`): when no segment of the batch crosses a multiple of Smax (`within_blocks`,
an O(P) test under jit: every window of a frame whose side is a multiple of the window, every
frame of a single video in the full-attention blocks), each segment lies inside one aligned
block of Smax patches and the tiles are those blocks themselves: [Smax, Smax] instead of
[C, W] with W >= 2 Smax, 2.5-4x fewer score entries. `lax.cond` picks the path at run time
(both are compiled; the bound check covers both), so other layouts keep the band path. On the
benchmarks/forward.py model (16 frames of 16 x 16 patches) window attention went 24 -> 7 ms and
frame attention 78 -> 32 ms per block (2-core CPU, interleaved).

When the band is no narrower than the row (short rows, or Smax = 0: no bound known) this falls
back to the dense XLA path of `attention`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import attention as attention_lib
from .attention import _NEG, attention


def band_width(chunk: int, max_segment_len: int) -> int:
    """Static key-band width W of one query chunk: C + 2 (Smax - 1), rounded up to 8."""
    return -(-(chunk + 2 * (max_segment_len - 1)) // 8) * 8


def uses_local_path(num_patches: int, chunk: int, max_segment_len: int) -> bool:
    """Whether `local_segment_attention` takes the blocked path for rows of P patches."""
    if chunk <= 0 or max_segment_len <= 0:
        return False
    return band_width(chunk, max_segment_len) < num_patches


def local_segment_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array,
    *,
    max_segment_len: int,
    scale: float,
    chunk: int = 128,
) -> jax.Array:
    """Bidirectional self-attention within contiguous segments of at most max_segment_len.

    q: [B, P, N, H]; k, v: [B, P, K, H] with N % K == 0; segment_ids: int32[B, P] (0 =
    padding, ids in [0, P]); max_segment_len, chunk: static ints (0 = dense path).
    Returns [B, P, N, H] in q's dtype; equal to `attention(..., causal=False, backend="xla")`
    up to float rounding when the segments obey the bound (NaN rows where they do not).
    """
    b, p, n, h = q.shape
    if k.shape != v.shape or k.shape[:2] != (b, p) or k.shape[3] != h:
        raise ValueError(f"local attention: q {q.shape}, k {k.shape}, v {v.shape} do not match")
    if segment_ids.shape != (b, p):
        raise ValueError(f"local attention: segment ids {segment_ids.shape} vs q {q.shape}")
    if n % k.shape[2]:
        raise ValueError(f"local attention: {n} query heads vs {k.shape[2]} kv heads")
    if not uses_local_path(p, chunk, max_segment_len):
        return attention(q, k, v, segment_ids, segment_ids, causal=False, scale=scale)

    run = functools.partial(_local, chunk=chunk, max_segment_len=max_segment_len, scale=scale)
    out, in_tile = attention_lib.by_lowering_platform(run, q, k, v, segment_ids)

    # The bound check: keys of my segment inside my tile == keys of my segment in the row.
    ids = jnp.clip(segment_ids, 0, p)  # ids > P share a bucket: only ever a false alarm
    counts = jax.vmap(lambda s: jnp.zeros(p + 1, jnp.int32).at[s].add(1))(ids)  # [B, P + 1]
    in_row = jnp.take_along_axis(counts, ids, axis=1)
    ok = (in_tile == in_row) | (segment_ids == 0)
    return jnp.where(ok[:, :, None, None], out, jnp.asarray(jnp.nan, out.dtype))


def _local(q, k, v, segment_ids, *, chunk, max_segment_len, scale, layout):
    """(out [B, P, N, H], int32[B, P] keys of each query's segment inside its tile)."""
    p = segment_ids.shape[1]
    q5, k, v = attention_lib._to_layout(q, k, v, layout)
    tile = functools.partial(_tiles, scale=scale, p=p, layout=layout)
    bands = functools.partial(_band_tiles, chunk=chunk, max_segment_len=max_segment_len)
    banded = lambda *x: tile(*bands(*x, layout=layout))
    if layout == "heads":  # CPU
        blocked = lambda *x: tile(*_block_tiles(*x, block=max_segment_len))
        aligned = within_blocks(segment_ids, max_segment_len)
        out, in_tile = jax.lax.cond(aligned, blocked, banded, q5, k, v, segment_ids)
    else:  # accelerators keep the bands alone (the block path was not measured there)
        out, in_tile = banded(q5, k, v, segment_ids)
    return attention_lib._out_of_layout(out, layout, q.dtype), in_tile


def within_blocks(segment_ids: jax.Array, block: int) -> jax.Array:
    """bool[]: no non-zero segment of any row crosses a multiple of `block` (so with runs of
    at most `block` patches, every segment lies inside one aligned block)."""
    p = segment_ids.shape[1]
    starts_block = (np.arange(1, p) % block) == 0  # position i >= 1 opens a new block
    same = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] != 0)
    return ~jnp.any(same & starts_block[None])


def _block_tiles(qh, kt, vt, segment_ids, *, block):
    """Aligned blocks of `block` patches, heads-major: queries and keys of tile j are patches
    [j block, (j + 1) block). Returns (q [B, K, M, g, C, H], k, v [B, K, M, W, H],
    q_seg [B, M, C], kv_seg [B, M, W]) with C = W = block."""
    b, kh, g, p, h = qh.shape
    m = -(-p // block)
    pad = m * block - p
    qc = jnp.pad(qh, [(0, 0)] * 3 + [(0, pad), (0, 0)]).reshape(b, kh, g, m, block, h)
    keys = lambda x: jnp.pad(x, [(0, 0), (0, 0), (0, pad), (0, 0)]).reshape(b, kh, m, block, h)
    seg = jnp.pad(segment_ids, ((0, 0), (0, pad))).reshape(b, m, block)
    return qc.transpose(0, 1, 3, 2, 4, 5), keys(kt), keys(vt), seg, seg


def _band_tiles(q5, k, v, segment_ids, *, chunk, max_segment_len, layout):
    """Query chunks of `chunk` patches, each with its key band (module docstring). Returns
    (q tiles, k, v bands, q_seg [B, M, C], kv_seg [B, M, W]) with W = band_width(chunk,
    max_segment_len); tiles [B, K, M, g, C, H] and bands [B, K, M, W, H] heads-major, or
    [B, M, C, K, g, H] and [B, M, W, K, H] token-major."""
    heads = layout == "heads"
    b, p = segment_ids.shape
    m = -(-p // chunk)  # query chunks
    pc = m * chunk
    halo = max_segment_len - 1
    width = band_width(chunk, max_segment_len)
    pieces = -(-width // chunk)
    # Band of chunk j = padded[j C : j C + W], built from `pieces` shifted C-blocks:
    # piece i of every chunk at once is padded[i C : i C + P_c] reshaped to [M, C].
    total = (pieces - 1) * chunk + pc

    def pad_to(x, axis, lo, size):  # zero padding along `axis`: lo before, up to `size`
        pad = [(0, 0)] * x.ndim
        pad[axis] = (lo, size - lo - x.shape[axis])
        return jnp.pad(x, pad)

    def split(x, axis):  # axis of length M C -> [M, C]
        return x.reshape(*x.shape[:axis], m, chunk, *x.shape[axis + 1 :])

    def bands(x, axis):  # P on `axis` -> [..., M, W, ...]; keys outside the row are zeros
        xp = pad_to(x, axis, halo, total)
        parts = [
            split(jax.lax.slice_in_dim(xp, i * chunk, i * chunk + pc, axis=axis), axis)
            for i in range(pieces)
        ]
        band = jnp.concatenate(parts, axis=axis + 1)
        return jax.lax.slice_in_dim(band, 0, width, axis=axis + 1)

    p_axis = 3 if heads else 1
    qc = split(pad_to(q5, p_axis, 0, pc), p_axis)
    if heads:
        qc = qc.transpose(0, 1, 3, 2, 4, 5)  # [B, K, g, M, C, H] -> [B, K, M, g, C, H]
    k_axis = 2 if heads else 1
    q_seg = split(pad_to(segment_ids, 1, 0, pc), 1)
    return qc, bands(k, k_axis), bands(v, k_axis), q_seg, bands(segment_ids, 1)


# (q tiles, k tiles) -> scores; (probs, v tiles) -> out, per layout; scores are [B, K, M, g, C,
# W] heads-major and [B, K, g, M, C, W] token-major.
_TILE_SPECS = {
    "heads": ("bkmgch,bkmwh->bkmgcw", "bkmgcw,bkmwh->bkmgch"),
    "tokens": ("bmckgh,bmwkh->bkgmcw", "bkgmcw,bmwkh->bmckgh"),
}


def _tiles(qc, kb, vb, q_seg, kv_seg, *, scale, p, layout):
    """The masking rule on [C, W] tiles. Returns (out in `layout`'s q5 form: [B, K, g, P, H]
    heads-major or [B, P, K, g, H], int32[B, P] keys of each query's segment inside its
    tile). Heads-major, every dot is a plain batched matmul and no score tile is transposed."""
    heads = layout == "heads"
    to_scores, to_out = _TILE_SPECS[layout]
    scores = jnp.einsum(to_scores, qc, kb, preferred_element_type=jnp.float32)
    scores = scores * jnp.float32(scale)
    allowed = (q_seg[..., :, None] == kv_seg[..., None, :]) & (q_seg != 0)[..., None]
    mask = allowed[:, None, :, None] if heads else allowed[:, None, None]
    probs = jax.nn.softmax(jnp.where(mask, scores, _NEG), axis=-1)
    probs = jnp.where(mask, probs, 0.0).astype(vb.dtype)  # empty rows -> exact zeros
    out = jnp.einsum(to_out, probs, vb)
    b, m, c = q_seg.shape
    if heads:  # [B, K, M, g, C, H] -> [B, K, g, P, H]
        _, kh, _, g, _, h = out.shape
        out = out.transpose(0, 1, 3, 2, 4, 5).reshape(b, kh, g, m * c, h)[:, :, :, :p]
    else:  # [B, M, C, K, g, H] -> [B, P, K, g, H]
        out = out.reshape(b, m * c, *out.shape[3:])[:, :p]
    in_tile = jnp.sum(allowed, axis=-1, dtype=jnp.int32).reshape(b, m * c)[:, :p]
    return out, in_tile


def check_local_segments(segment_ids: np.ndarray, max_segment_len: int) -> None:
    """Host-side check of the blocked path's precondition (numpy, int[..., P]).

    Raises ValueError naming the row and segment when a non-zero segment id is split into
    several runs or a run is longer than max_segment_len.
    """
    seg = np.asarray(segment_ids)
    rows = seg.reshape(-1, seg.shape[-1]) if seg.ndim else seg.reshape(1, 1)
    for r, row in enumerate(rows):
        starts = np.flatnonzero(np.diff(row, prepend=row[:1] - 1))  # run starts
        ends = np.append(starts[1:], row.size)
        ids = row[starts]
        real = ids != 0
        ids, lengths = ids[real], (ends - starts)[real]
        uniq, n_runs = np.unique(ids, return_counts=True)
        if np.any(n_runs > 1):
            raise ValueError(f"row {r}: segment {uniq[n_runs > 1][0]} is not contiguous")
        if np.any(lengths > max_segment_len):
            i = int(np.argmax(lengths))
            raise ValueError(
                f"row {r}: segment {ids[i]} has {lengths[i]} patches > max_segment_len "
                f"{max_segment_len}"
            )
