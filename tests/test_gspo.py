"""GSPO: advantages, loss and gradient against numpy references, clipping on a tiny model."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from toy_lm import ToyLM

from o3video_jax.models.qwen2_5_vl.inputs import text_only_inputs
from o3video_jax.rl import gspo
from o3video_jax.train import losses, sharding, state

EPS_LOW, EPS_HIGH, BETA = 0.2, 0.25, 0.04


# ---- numpy reference (float64), written from docs/open_o3_video.md §4 ---------------------------------


def np_loss(lp, old, ref, adv, mask, ratio, beta=BETA, lo=1 - EPS_LOW, hi=1 + EPS_HIGH):
    n = np.maximum(mask.sum(1), 1.0)
    if ratio == "sequence":
        r = np.exp((mask * (lp - old)).sum(1) / n)[:, None] * np.ones_like(lp)
    else:
        r = np.exp(lp - old)
    a = adv[:, None]
    pg = -np.minimum(r * a, np.clip(r, lo, hi) * a)
    x = np.clip(ref - lp, -10, 10)
    kl = np.exp(x) - x - 1
    return ((mask * (pg + beta * kl)).sum(1) / n).mean()


def np_grad(lp, old, ref, adv, mask, ratio, beta=BETA, lo=1 - EPS_LOW, hi=1 + EPS_HIGH):
    """d loss / d lp by hand: the unclipped branch passes -A dr, the clipped one nothing."""
    b = lp.shape[0]
    n = np.maximum(mask.sum(1), 1.0)[:, None]
    a = adv[:, None]
    if ratio == "sequence":
        s = np.exp((mask * (lp - old)).sum(1, keepdims=True) / n)
        live = s * a <= np.clip(s, lo, hi) * a
        # loss_i = (Σm/n) pg(s_i) + ...;  ds_i/dlp_t = s_i m_t / n
        g_pg = -a * live * (mask.sum(1, keepdims=True) / n) * s * mask / n
    else:
        r = np.exp(lp - old)
        live = r * a <= np.clip(r, lo, hi) * a
        g_pg = -a * live * r * mask / n
    d = ref - lp
    g_kl = np.where(np.abs(d) < 10, -(np.exp(d) - 1), 0.0) * mask / n
    return (g_pg + beta * g_kl) / b


def random_rollouts(seed=0, b=6, length=9):
    rs = np.random.RandomState(seed)
    lp = -rs.rand(b, length) * 3
    # per-row shifts put sequence ratios on both sides of the clip range
    old = lp + rs.randn(b, 1) * 0.4 + rs.randn(b, length) * 0.3
    ref = lp + rs.randn(b, length) * 0.5
    ref[0, 2] = lp[0, 2] + 12.0  # KL clamp engaged (x > 10)
    ref[1, 3] = lp[1, 3] - 11.0  # (x < -10)
    mask = (rs.rand(b, length) > 0.3).astype(np.float64)
    mask[0, 2] = mask[1, 3] = 1.0
    mask[2] = 0.0  # an empty completion contributes 0
    adv = rs.randn(b)
    return lp, old, ref, adv, mask


def jloss(lp, old, ref, adv, mask, ratio):
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    return gspo.loss(
        lp, f32(old), f32(ref), f32(adv), f32(mask),
        eps_low=EPS_LOW, eps_high=EPS_HIGH, beta=BETA, ratio=ratio,
    )  # fmt: skip


# ---- advantages -----------------------------------------------------------------------------


def test_group_advantages_by_hand():
    adv = gspo.group_advantages(jnp.array([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0]), 4)
    std = np.sqrt((1.5**2 + 0.5**2) * 2 / 3)  # unbiased
    expected = np.array([-1.5, -0.5, 0.5, 1.5]) / (std + 1e-4)
    np.testing.assert_allclose(adv[:4], expected, rtol=1e-6)
    np.testing.assert_array_equal(adv[4:], 0.0)
    assert float(gspo.zero_variance_fraction(adv, 4)) == 0.5
    with pytest.raises(ValueError, match="group_size"):
        gspo.group_advantages(jnp.ones(6), 4)
    with pytest.raises(ValueError, match="group_size"):
        gspo.group_advantages(jnp.ones(4), 1)


# ---- loss and gradient ------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", ["sequence", "token"])
def test_loss_and_gradient_match_numpy(ratio):
    lp, old, ref, adv, mask = random_rollouts()
    value, metrics = jloss(jnp.asarray(lp, jnp.float32), old, ref, adv, mask, ratio)
    np.testing.assert_allclose(value, np_loss(lp, old, ref, adv, mask, ratio), rtol=1e-5)

    grad = jax.grad(lambda x: jloss(x, old, ref, adv, mask, ratio)[0])(jnp.asarray(lp, jnp.float32))
    np.testing.assert_allclose(grad, np_grad(lp, old, ref, adv, mask, ratio), rtol=1e-4, atol=1e-7)
    # ... and the hand formula agrees with finite differences of the numpy loss.
    fd = np.zeros_like(lp)
    for idx in np.ndindex(*lp.shape):
        e = np.zeros_like(lp)
        e[idx] = 1e-6
        fd[idx] = (
            np_loss(lp + e, old, ref, adv, mask, ratio)
            - np_loss(lp - e, old, ref, adv, mask, ratio)
        ) / 2e-6
    np.testing.assert_allclose(np_grad(lp, old, ref, adv, mask, ratio), fd, atol=1e-7)

    # Metrics: the clip fractions counted by hand.
    n = np.maximum(mask.sum(1), 1)
    if ratio == "sequence":
        r, w = np.exp((mask * (lp - old)).sum(1) / n), np.ones(len(adv))
        low = ((r < 1 - EPS_LOW) & (adv < 0)).sum() / len(adv)
        high = ((r > 1 + EPS_HIGH) & (adv > 0)).sum() / len(adv)
    else:
        r, w = np.exp(lp - old), mask
        low = (mask * ((r < 1 - EPS_LOW) & (adv[:, None] < 0))).sum() / mask.sum()
        high = (mask * ((r > 1 + EPS_HIGH) & (adv[:, None] > 0))).sum() / mask.sum()
    assert low + high > 0  # the random inputs do reach the clipped regime
    np.testing.assert_allclose(metrics["clip_low_frac"], low, rtol=1e-6)
    np.testing.assert_allclose(metrics["clip_high_frac"], high, rtol=1e-6)
    np.testing.assert_allclose(metrics["ratio_max"], r[w > 0].max(), rtol=1e-5)
    np.testing.assert_allclose(metrics["ratio_min"], r[w > 0].min(), rtol=1e-5)


@pytest.mark.parametrize("ratio", ["sequence", "token"])
def test_on_policy_equals_original_formula(ratio):
    """old_logp = sg(logp): s_i = 1 in value, and the gradient is the length-normalised policy
    gradient -A_i m_t / |o_i| (GSPO and GRPO coincide) plus the k3 KL term (docs/open_o3_video.md §4)."""
    lp, _, ref, adv, mask = random_rollouts(seed=3)
    f = lambda x: jloss(x, jax.lax.stop_gradient(x), ref, adv, mask, ratio)
    (value, metrics), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(lp, jnp.float32))
    n = np.maximum(mask.sum(1), 1)
    x = np.clip(ref - lp, -10, 10)
    kl = (mask * (np.exp(x) - x - 1)).sum(1) / n
    has_tokens = mask.sum(1) > 0
    np.testing.assert_allclose(value, (-adv * has_tokens + BETA * kl).mean(), rtol=1e-5)
    expected = (-adv[:, None] * mask / n[:, None]) / len(adv)
    d = ref - lp
    expected += BETA * np.where(np.abs(d) < 10, -(np.exp(d) - 1), 0) * mask / n[:, None] / len(adv)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)
    assert float(metrics["clip_frac"]) == 0.0
    assert float(metrics["ratio_min"]) == float(metrics["ratio_max"]) == 1.0


def test_beta_zero_needs_no_reference_and_bad_ratio_raises():
    lp, old, _, adv, mask = random_rollouts()
    v0, _ = gspo.loss(lp, old, None, adv, mask, eps_low=0.2, eps_high=0.2, beta=0.0)
    np.testing.assert_allclose(
        v0, np_loss(lp, old, lp, adv, mask, "sequence", beta=0.0, hi=1.2), rtol=1e-5
    )
    with pytest.raises(ValueError, match="ref_logp"):
        gspo.loss(lp, old, None, adv, mask, eps_low=0.2, eps_high=0.2, beta=0.1)
    with pytest.raises(ValueError, match="ratio"):
        gspo.loss(lp, old, lp, adv, mask, eps_low=0.2, eps_high=0.2, beta=0.0, ratio="seq")


def test_presets():
    p = gspo.presets()
    paper, o3 = p["gspo_paper"], p["open_o3_video"]
    assert (paper.eps_low, paper.eps_high, paper.beta, paper.minibatches) == (3e-4, 4e-4, 0.0, 4)
    assert (o3.eps_low, o3.eps_high, o3.beta, o3.minibatches, o3.group_size) == (
        0.2,
        0.2,
        0.04,
        1,
        4,
    )
    assert (o3.temperature, o3.top_p, o3.kl_clamp, o3.old_logp) == (1.0, 0.95, 10.0, "current")


# ---- updates on a tiny model ------------------------------------------------------------------


def rollout_batch(model, params, b=8, length=12, vocab=32, seed=0):
    """Prompt (4 tokens) + completion rows with old/ref log-probs from `params`."""
    rs = np.random.RandomState(seed)
    ids = rs.randint(0, vocab, (b, length)).astype(np.int32)
    inputs = text_only_inputs(ids)
    targets = np.roll(ids, -1, axis=1)
    mask = np.zeros((b, length), np.float32)
    for r in range(b):
        mask[r, 3 : length - 1 - r % 4] = 1.0  # completions of different lengths
    hidden = model.apply({"params": params}, inputs, method="hidden_states")
    unembed = lambda h: model.apply({"params": params}, h, method="unembed")
    logp, _ = losses.token_logprobs(hidden, jnp.asarray(targets), unembed, chunk=5)
    rewards = rs.rand(b).astype(np.float32)
    return {
        "inputs": inputs,
        "targets": targets,
        "mask": mask,
        "advantages": np.asarray(gspo.group_advantages(rewards, 4)),
        "old_logp": np.asarray(logp),
        "ref_logp": np.asarray(logp),
    }


def gspo_cfg(preset, lr, microbatches=1):
    optimizer = dict(
        lr=lr, schedule="constant", warmup_steps=0, total_steps=10, weight_decay=0.0,
        b1=0.9, b2=0.999, eps=1e-8, grad_clip=0.0, freeze_regex="", microbatches=microbatches,
    )  # fmt: skip
    return ml_collections.ConfigDict(
        dict(
            gspo=gspo.presets()[preset], optimizer=optimizer, loss=dict(chunk=5), nan_policy="skip"
        )
    )


def setup_update(cfg, seed=0, mesh_shape=None):
    model = ToyLM()
    mesh_shape = mesh_shape or {"data": 2, "fsdp": 2, "tensor": 2}
    mesh = sharding.make_mesh(mesh_shape, jax.devices()[: int(np.prod(list(mesh_shape.values())))])
    tx = state.make_optimizer(cfg.optimizer)
    init = lambda k: model.init(k, text_only_inputs(np.zeros((8, 12), np.int32)))["params"]
    st, shardings = sharding.make_sharded_state(
        init, tx, jax.random.PRNGKey(seed), mesh, sharding.DEFAULT_RULES
    )
    batch = rollout_batch(model, jax.device_get(st.params))
    update = gspo.make_gspo_update(model, cfg, mesh, shardings)
    return st, sharding.shard_batch(batch, mesh), update


def test_several_updates_engage_clipping():
    cfg = gspo_cfg("gspo_paper", lr=3e-2)
    st, batch, update = setup_update(cfg)
    history = []
    for _ in range(cfg.gspo.minibatches):  # paper preset: 4 updates on one rollout batch
        st, m = update(st, batch)
        history.append(jax.device_get(m))
    first, last = history[0], history[-1]
    # First update: the policy is still the rollout policy.
    np.testing.assert_allclose([first["ratio_min"], first["ratio_max"]], [1.0, 1.0], atol=1e-5)
    assert first["clip_frac"] == 0.0 and first["skipped"] == 0
    # Later updates: ratios leave [1 - 3e-4, 1 + 4e-4] and clipping is reported.
    assert last["clip_frac"] > 0
    assert last["ratio_max"] > 1 + 4e-4 or last["ratio_min"] < 1 - 3e-4
    assert all(np.isfinite(h["loss"]) for h in history)


def test_gspo_update_microbatches_equal_one_batch():
    results = []
    for m in (1, 2):
        # eps = 1 (see test_train_steps): Adam's first update ~ lr * g.
        cfg = gspo_cfg("open_o3_video", lr=0.1, microbatches=m)
        cfg.optimizer.eps = 1.0
        st, batch, update = setup_update(cfg)
        st, metrics = update(st, batch)
        results.append((jax.device_get(st.params), jax.device_get(metrics)))
    (p1, m1), (p2, m2) = results
    diff = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), p1, p2)
    assert max(jax.tree.leaves(diff)) < 1e-6
    for key in ("loss", "grad_norm", "kl_mean", "ratio_mean"):
        np.testing.assert_allclose(m1[key], m2[key], rtol=1e-5, atol=1e-7)


def test_gspo_update_sharded_equals_single_device():
    """One GSPO update on the fake 8-device mesh (data=2, fsdp=2, tensor=2) == on one device."""
    results = []
    for shape in ({"data": 1, "fsdp": 1, "tensor": 1}, {"data": 2, "fsdp": 2, "tensor": 2}):
        cfg = gspo_cfg("open_o3_video", lr=0.1)
        cfg.optimizer.eps = 1.0  # see test_train_steps: Adam's first step is then ~ lr * g
        st, batch, update = setup_update(cfg, mesh_shape=shape)
        st, metrics = update(st, batch)
        results.append((jax.device_get(st.params), jax.device_get(metrics)))
    (p1, m1), (p8, m8) = results
    diff = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), p1, p8))
    assert max(diff) < 1e-5
    assert m1["update_norm"] > 1e-3  # the update did move the parameters
    for key in ("loss", "grad_norm", "kl_mean"):
        np.testing.assert_allclose(m1[key], m8[key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("ratio", ["sequence", "token"])
def test_garbage_outside_the_mask_is_ignored(ratio):
    lp, old, ref, adv, mask = random_rollouts(seed=5)
    clean, _ = jloss(jnp.asarray(lp, jnp.float32), old, ref, adv, mask, ratio)
    old_bad = np.where(mask > 0, old, -np.inf)  # e.g. padding log-probs from a sampler
    ref_bad = np.where(mask > 0, ref, np.nan)
    f = lambda x: jloss(x, old_bad, ref_bad, adv, mask, ratio)[0]
    value, grad = jax.value_and_grad(f)(jnp.asarray(lp, jnp.float32))
    np.testing.assert_allclose(value, clean, rtol=1e-6)
    assert np.isfinite(np.asarray(grad)).all()
