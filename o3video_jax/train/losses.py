"""Chunked token log-probabilities and masked cross-entropy.

The vocabulary is large (152k for Qwen2.5), so full logits float32[B, L, V] would dominate
memory at long sequence lengths. `token_logprobs` unembeds `chunk` positions at a time inside a
`lax.map`, with the chunk body rematerialised (`jax.checkpoint`), so at most [B, chunk, V]
logits exist at once, in the forward and in the backward pass. SFT cross-entropy and the GSPO
per-token log-probs both come from it.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMALIZATIONS = ("token", "sequence")


def token_logprobs(
    hidden: jax.Array,
    targets: jax.Array,
    unembed: Callable[[jax.Array], jax.Array],
    *,
    chunk: int = 256,
    temperature: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """Log-probability of each target token and whether it is the arg-max prediction.

    hidden:  float[B, L, D] final hidden states (after the final norm).
    targets: int32[B, L] the token each position predicts (already shifted: position t holds
             token t + 1). Ids outside [0, V) are clamped, so positions that are masked out
             later may hold anything (e.g. -100).
    unembed: float[B, C, D] -> float[B, C, V], e.g.
             `lambda h: model.apply({"params": p}, h, method="unembed")`.
    Returns (logp float32[B, L], correct bool[B, L]).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    b, length, d = hidden.shape
    if targets.shape != (b, length):
        raise ValueError(f"targets shape {targets.shape} does not match hidden {hidden.shape}")
    # Pin the layouts (a no-op without logical axis rules): without this, XLA's partitioner
    # has produced wrong gradients for the chunked unembedding of microbatch-split rows with
    # fsdp/tensor-sharded weights (jax 0.10.2, CPU; see tests/test_gspo.py).
    hidden = nn.with_logical_constraint(hidden, ("batch", "length", "act_embed"))
    targets = nn.with_logical_constraint(targets, ("batch", "length"))
    c = min(chunk, length)
    n = -(-length // c)
    pad = n * c - length
    h_nbcd = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, n, c, d).swapaxes(0, 1)
    t_nbc = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, n, c).swapaxes(0, 1)

    # Rematerialised so that the backward pass also holds one chunk of logits at a time.
    @jax.checkpoint
    def one_chunk(args):
        h_bcd, t_bc = args
        logits_bcv = unembed(h_bcd).astype(jnp.float32) / temperature
        t_bc = jnp.clip(t_bc, 0, logits_bcv.shape[-1] - 1)
        lse_bc = jax.nn.logsumexp(logits_bcv, axis=-1)
        tgt_bc = jnp.take_along_axis(logits_bcv, t_bc[..., None], axis=-1)[..., 0]
        correct_bc = jnp.argmax(logits_bcv, axis=-1) == t_bc
        return tgt_bc - lse_bc, correct_bc

    logp_nbc, correct_nbc = jax.lax.map(one_chunk, (h_nbcd, t_nbc))
    logp = logp_nbc.swapaxes(0, 1).reshape(b, n * c)[:, :length]
    correct = correct_nbc.swapaxes(0, 1).reshape(b, n * c)[:, :length]
    return logp, correct


def loss_weights(
    mask: jax.Array, segment_ids: jax.Array, normalize: str
) -> tuple[jax.Array, jax.Array]:
    """Per-token weights and the denominator of a masked mean: loss = Σ w·nll / denom.

    mask: float[B, L] (1 = the target at t is trained); segment_ids: int32[B, L] (0 = padding).
    "token":    every trained token counts once: w = mask, denom = Σ mask.
    "sequence": every example (segment of a row) counts once, whatever its length:
                w = mask / (trained tokens of its segment), denom = number of segments with at
                least one trained token.
    Computed on the whole batch so gradient accumulation over microbatches is exact.
    Returns (weights float32[B, L], denom float32[]), denom >= 1.
    """
    mask = mask.astype(jnp.float32)
    if normalize == "token":
        return mask, jnp.maximum(mask.sum(), 1.0)
    if normalize != "sequence":
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    length = mask.shape[1]
    seg = jnp.where(mask > 0, segment_ids, 0)
    # counts_bs[b, s]: trained tokens of segment s in row b (segment ids lie in [0, L]).
    counts_bs = jax.vmap(lambda m, s: jax.ops.segment_sum(m, s, num_segments=length + 1))(mask, seg)
    counts_bs = counts_bs.at[:, 0].set(0.0)
    per_token = jnp.take_along_axis(counts_bs, seg, axis=1)
    weights = jnp.where(per_token > 0, mask / jnp.maximum(per_token, 1.0), 0.0)
    return weights, jnp.maximum((counts_bs > 0).sum().astype(jnp.float32), 1.0)


def cross_entropy(
    hidden: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    segment_ids: jax.Array,
    unembed: Callable[[jax.Array], jax.Array],
    *,
    chunk: int = 256,
    normalize: str = "token",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Masked next-token cross-entropy (float32[]) and {"accuracy", "tokens"}; see above."""
    weights, denom = loss_weights(mask, segment_ids, normalize)
    logp, correct = token_logprobs(hidden, targets, unembed, chunk=chunk)
    mask = mask.astype(jnp.float32)
    tokens = mask.sum()
    accuracy = (correct * mask).sum() / jnp.maximum(tokens, 1.0)
    return -jnp.where(weights != 0, weights * logp, 0.0).sum() / denom, {
        "accuracy": accuracy,
        "tokens": tokens,
    }
