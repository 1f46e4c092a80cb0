"""GSPO: group advantages, the clipped sequence-ratio loss, presets, and the update step.

docs/design.md decision 8. The Open-o3 Video trainer (docs/open_o3_video.md §4) computes, for completion i with
mask m (tokens up to and including the first EOS) and advantage A_i:

  s_i   = exp( Σ_t m_t (log π_t − sg(log π_t)) / max(Σ_t m_t, 1) )           (≡ 1 in value)
  ℓ_t   = −min(s_i A_i, clip(s_i, 1 − ε_low, 1 + ε_high) A_i) + β kl_t
  kl_t  = e^x − x − 1,  x = clamp(log π_ref,t − log π_t, −10, 10)              (k3 estimator)
  loss  = mean_i Σ_t m_t ℓ_t / max(Σ_t m_t, 1)

Here `old_logp` replaces sg(log π): passing the rollout policy's log-probs gives real GSPO
(several updates per rollout batch, clipping binds); passing `stop_gradient(logp)` gives the
original exactly. `ratio="token"` is the GRPO token-level ratio r_t = exp(log π_t − old_t).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from o3video_jax.rl import rollouts
from o3video_jax.train import losses, steps
from o3video_jax.train.sharding import DEFAULT_RULES, MeshAxes, batch_axis_tree
from o3video_jax.train.state import TrainState, make_optimizer, trainable_mask

RATIOS = ("sequence", "token")


def presets() -> dict[str, ml_collections.ConfigDict]:
    """GSPO hyper-parameters: the GSPO paper and the Open-o3 Video reproduction (docs/open_o3_video.md §4).

    `open_o3_video` reproduces the original, including its thk_spatial time gate
    `spatial_gate="reference"` (a box counts when g - T < 1 s, so any claim *earlier* than the
    annotated time passes). Everywhere else the default is the corrected gate
    `spatial_gate="intended"` (|g - T| < 1 s), which `gspo_paper` keeps.
    """
    paper = ml_collections.ConfigDict(
        dict(
            eps_low=3e-4,
            eps_high=4e-4,
            beta=0.0,
            kl_clamp=10.0,
            ratio="sequence",
            minibatches=4,  # optimiser updates per rollout batch
            group_size=8,
            temperature=1.0,
            top_p=1.0,
            old_logp="rollout",  # "rollout": from the sampling policy; "current": sg(logp)
            spatial_gate="intended",  # rewards.compute_rewards: |g - T| < 1 s
        )
    )
    open_o3 = ml_collections.ConfigDict(
        dict(
            eps_low=0.2,
            eps_high=0.2,
            beta=0.04,
            kl_clamp=10.0,
            ratio="sequence",
            minibatches=1,
            group_size=4,
            temperature=1.0,
            top_p=0.95,
            old_logp="current",
            spatial_gate="reference",  # the original's one-sided g - T < 1 s
        )
    )
    return {"gspo_paper": paper, "open_o3_video": open_o3}


def group_advantages(rewards: jax.Array, group_size: int, eps: float = 1e-4) -> jax.Array:
    """(r − mean_G) / (std_G + eps) within consecutive groups of `group_size` completions.

    rewards: float[N], N = prompts × group_size, the completions of a prompt contiguous.
    std is the unbiased (N − 1) estimator, as torch's default in the reference.
    Returns float32[N].
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (unbiased std), got {group_size}")
    if rewards.ndim != 1 or rewards.shape[0] % group_size:
        raise ValueError(
            f"rewards shape {rewards.shape} is not a flat multiple of group_size={group_size}"
        )
    r_pg = rewards.reshape(-1, group_size)
    mean = r_pg.mean(axis=1, keepdims=True)
    std = r_pg.std(axis=1, ddof=1, keepdims=True)
    return ((r_pg - mean) / (std + eps)).reshape(-1)


def zero_variance_fraction(advantages: jax.Array, group_size: int) -> jax.Array:
    """Fraction of groups whose completions all got the same reward (no learning signal)."""
    a_pg = advantages.reshape(-1, group_size)
    return jnp.all(a_pg == 0, axis=1).mean()


def sequence_terms(
    logp: jax.Array,
    old_logp: jax.Array,
    ref_logp: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    eps_low: float,
    eps_high: float,
    beta: float,
    ratio: str = "sequence",
    kl_clamp: float = 10.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-completion losses float32[B] and per-completion statistics (each float32[B]).

    logp, old_logp, ref_logp: float[B, L] log-probs of the completion tokens (ref_logp may be
    None when beta == 0); advantages: float[B]; mask: float[B, L].
    """
    if ratio not in RATIOS:
        raise ValueError(f"ratio must be one of {RATIOS}, got {ratio!r}")
    if ref_logp is None and beta != 0:
        raise ValueError("ref_logp is required when beta != 0")
    mask = mask.astype(jnp.float32)
    n_b = jnp.maximum(mask.sum(axis=1), 1.0)
    a_b1 = advantages.astype(jnp.float32)[:, None]
    lo, hi = 1.0 - eps_low, 1.0 + eps_high
    # where, not a product: positions outside the mask may hold -inf/NaN (padding).
    on_bl = mask > 0
    d_bl = jnp.where(on_bl, logp - old_logp, 0.0)

    if ratio == "sequence":
        log_s_b = (mask * d_bl).sum(axis=1) / n_b
        r_bl = jnp.broadcast_to(jnp.exp(log_s_b)[:, None], logp.shape)
        weight_bl = jnp.ones_like(mask)[:, :1]  # one ratio per completion for the statistics
        r_stat = r_bl[:, :1]
    else:
        r_bl = jnp.exp(d_bl)
        weight_bl, r_stat = mask, r_bl
    pg_bl = -jnp.minimum(r_bl * a_b1, jnp.clip(r_bl, lo, hi) * a_b1)

    if beta:
        x_bl = jnp.clip(jnp.where(on_bl, ref_logp - logp, 0.0), -kl_clamp, kl_clamp)
        kl_bl = jnp.exp(x_bl) - x_bl - 1.0
    else:
        kl_bl = jnp.zeros_like(logp)
    loss_b = jnp.where(on_bl, mask * (pg_bl + beta * kl_bl), 0.0).sum(axis=1) / n_b

    on = weight_bl > 0
    r_stat = jax.lax.stop_gradient(r_stat)
    stats = {
        "ratio_sum": (weight_bl * r_stat).sum(axis=1),
        "ratio_count": weight_bl.sum(axis=1),
        "ratio_min": jnp.where(on, r_stat, jnp.inf).min(axis=1),
        "ratio_max": jnp.where(on, r_stat, -jnp.inf).max(axis=1),
        "clip_low": (weight_bl * ((r_stat < lo) & (a_b1 < 0))).sum(axis=1),
        "clip_high": (weight_bl * ((r_stat > hi) & (a_b1 > 0))).sum(axis=1),
        "kl": jax.lax.stop_gradient((mask * kl_bl).sum(axis=1) / n_b),
        "advantage": advantages.astype(jnp.float32),
    }
    return loss_b, stats


def summarize(stats: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Batch metrics from the per-completion statistics of `sequence_terms`."""
    count = jnp.maximum(stats["ratio_count"].sum(), 1.0)
    return {
        "clip_low_frac": stats["clip_low"].sum() / count,
        "clip_high_frac": stats["clip_high"].sum() / count,
        "clip_frac": (stats["clip_low"].sum() + stats["clip_high"].sum()) / count,
        "ratio_min": stats["ratio_min"].min(),
        "ratio_mean": stats["ratio_sum"].sum() / count,
        "ratio_max": stats["ratio_max"].max(),
        "kl_mean": stats["kl"].mean(),
        "advantage_mean": stats["advantage"].mean(),
        "advantage_std": stats["advantage"].std(),
    }


def loss(
    logp: jax.Array,
    old_logp: jax.Array,
    ref_logp: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    eps_low: float,
    eps_high: float,
    beta: float,
    ratio: str = "sequence",
    kl_clamp: float = 10.0,
    group_size: int | None = None,
) -> tuple[jax.Array, dict[str, Any]]:
    """GSPO loss float32[] (mean over completions, see the module docstring) and metrics.

    logp: float[B, L] current policy log-probs of the completion tokens (differentiated);
    old_logp: float[B, L] rollout-policy log-probs, or `stop_gradient(logp)` for the
    on-policy original; ref_logp: float[B, L] or None (beta == 0); advantages: float[B];
    mask: float[B, L] completion mask. Metrics: clip fractions (low/high/total), ratio
    min/mean/max, kl_mean, advantage mean/std and, when `group_size` is given (rows of a
    group contiguous), the fraction of zero-variance groups.
    """
    loss_b, stats = sequence_terms(
        logp,
        old_logp,
        ref_logp,
        advantages,
        mask,
        eps_low=eps_low,
        eps_high=eps_high,
        beta=beta,
        ratio=ratio,
        kl_clamp=kl_clamp,
    )
    metrics = summarize(stats)
    if group_size:
        metrics["zero_variance_groups"] = zero_variance_fraction(advantages, group_size)
    return loss_b.mean(), metrics


def make_gspo_update(
    model: nn.Module,
    cfg: Any,
    mesh: Mesh,
    state_shardings: TrainState,
    *,
    rules: Sequence[tuple[str, MeshAxes]] = DEFAULT_RULES,
) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]:
    """One optimiser update on a minibatch of rollouts: `(state, batch) -> (state, metrics)`.

    batch (rows = completions, prompt + completion tokens, placed with `shard_batch`):
      inputs:     ModelInputs [B, L]; the pixels may be shared by groups of G consecutive
                  rows (vision fields with B // G rows, `rollouts.group_minibatches`): the
                  vision tower then runs once per prompt, with the same result
      targets:    int32[B, L]   the token position t predicts (shifted on the host)
      mask:       float32[B, L] 1 where targets[t] is a completion token (up to and including
                                the first EOS)
      advantages: float32[B]
      old_logp:   float32[B, L] rollout-policy log-probs of targets (unused when
                                gspo.old_logp == "current", the on-policy original)
      ref_logp:   float32[B, L] reference-policy log-probs (unused when gspo.beta == 0)
    Config: `cfg.gspo` (see `presets`), `cfg.optimizer` (microbatches included),
    `cfg.loss.chunk`, `cfg.nan_policy`. Log-probs are taken at `gspo.temperature`, which
    must be the one old_logp was computed with. The loss is the mean over the B rows, so
    microbatch accumulation is exact. Metrics: loss, grad/param/update norms, skipped, the
    `summarize` statistics and completion_tokens.
    """
    g = cfg.gspo
    if g.old_logp not in ("rollout", "current"):
        raise ValueError(f"gspo.old_logp must be 'rollout' or 'current', got {g.old_logp!r}")
    if cfg.nan_policy not in steps.NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {steps.NAN_POLICIES}, got {cfg.nan_policy!r}")
    tx = make_optimizer(cfg.optimizer)
    microbatches = int(cfg.optimizer.get("microbatches", 1))
    chunk, temperature = int(cfg.loss.chunk), float(g.temperature)
    terms = dict(
        eps_low=float(g.eps_low),
        eps_high=float(g.eps_high),
        beta=float(g.beta),
        ratio=g.ratio,
        kl_clamp=float(g.kl_clamp),
    )

    def loss_sum(params, mb, rng):
        variables = {"params": params}
        # Only a shared batch passes vision_group, so models without the argument still work.
        vg = rollouts.vision_group(mb["inputs"])
        kw = {"vision_group": vg} if vg > 1 else {}
        hidden = model.apply(
            variables, mb["inputs"], method="hidden_states", rngs={"dropout": rng}, **kw
        )
        unembed = lambda h: model.apply(variables, h, method="unembed")
        logp, _ = losses.token_logprobs(
            hidden, mb["targets"], unembed, chunk=chunk, temperature=temperature
        )
        old = jax.lax.stop_gradient(logp) if g.old_logp == "current" else mb["old_logp"]
        ref = mb["ref_logp"] if terms["beta"] else None
        loss_b, stats = sequence_terms(logp, old, ref, mb["advantages"], mb["mask"], **terms)
        return loss_b.sum(), stats

    def update(state: TrainState, batch: Any):
        rng = jax.random.fold_in(state.rng, state.step)
        rows = batch["advantages"].shape[0]
        batch = _fit_shared_vision(batch, microbatches, rollouts.batch_shards(mesh))
        total, stats, grads = steps.accumulate(
            loss_sum, state.params, batch, rng, microbatches, mesh, state_shardings.params
        )
        grads = jax.tree.map(lambda x: x / rows, grads)
        trainable = trainable_mask(state.params, cfg.optimizer)
        state, metrics = steps.apply_gradients(state, tx, total / rows, grads, trainable)
        metrics.update(summarize(jax.tree.map(lambda x: x.reshape(-1), stats)))
        metrics["completion_tokens"] = batch["mask"].sum()
        return state, metrics

    return steps.jit_step(update, mesh, state_shardings, rules)


def _fit_shared_vision(batch: Any, microbatches: int, shards: int) -> Any:
    """Prepares a batch whose pixels are shared by groups of G rows for `steps.accumulate`
    (under jit; shapes are static).

    `steps.split_microbatches` gives microbatch m the rows m, m + M, ... of every leaf. For
    the vision rows (prompts p) that is prompts j*M + m; the text rows are reordered so that
    microbatch m also gets exactly the G rows of those prompts, in order (a local transpose
    of row blocks [J, M, G] -> [J, G, M]: no data moves between shards). The loss is a sum
    over rows, so the order does not change it. When `rollouts.can_share_vision` rules the
    split out, the pixels are repeated instead (same results).
    """
    g = rollouts.vision_group(batch["inputs"])
    if g == 1:
        return batch
    prompts = batch["inputs"].pixel_values.shape[0]
    if not rollouts.can_share_vision(prompts, shards, microbatches):
        return {**batch, "inputs": rollouts.expand_vision(batch["inputs"])}
    if microbatches == 1:
        return batch

    def reorder(path, x, ax):
        last = path[-1] if path else None
        if ax is None or getattr(last, "name", None) in rollouts.VISION_FIELDS:
            return x
        shape = x.shape[:ax] + (prompts // microbatches, microbatches, g) + x.shape[ax + 1 :]
        x = jnp.swapaxes(x.reshape(shape), ax + 1, ax + 2)
        return x.reshape(x.shape[:ax] + (-1,) + x.shape[ax + 3 :])

    axes = batch_axis_tree(batch)
    return jax.tree_util.tree_map_with_path(reorder, batch, axes, is_leaf=lambda x: x is None)
