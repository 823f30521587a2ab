"""The baselines' defining lines (PPO with GAE, SAC, TD3, TD3+BC, BC), each pinned against a hand
computation from the same batch and the same random draws: what `update()` feeds its losses and
targets, and the step it takes."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import OFFLINE_DATA, make_algo

from ctrlrl.algos.a2pr import A2PRConfig
from ctrlrl.algos.ppo import PPOConfig, kl_exceeded, ratio_diagnostics
from ctrlrl.algos.sac import SACConfig
from ctrlrl.algos.td3 import TD3Config, TD3LearnerConfig
from ctrlrl.algos.td3bc import TD3BCConfig
from ctrlrl.core.buffers import RolloutBatch, compute_gae
from ctrlrl.core.errors import UserError

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def snapshot(*modules: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for m in modules for p in m.parameters()]


def close(a, b, **kw) -> bool:
    return torch.allclose(torch.as_tensor(a), torch.as_tensor(b), **{"rtol": 1e-5, "atol": 1e-6, **kw})


def adam_first_step(param: torch.Tensor, grad: torch.Tensor, lr: float, eps: float) -> torch.Tensor:
    """Adam's first step: bias-corrected m̂ = g, v̂ = g², so θ − lr·g/(|g| + eps)."""
    return param - lr * grad / (grad.abs() + eps)


# ---- GAE ----------------------------------------------------------------------------------------
def gae_by_sums(rewards, values, dones, last_values, gamma, lam):
    """Â_t = Σ_l (γλ)^l δ_{t+l} up to the step where the episode ends, δ_t = r_t + γ·V_{t+1}·(1 −
    done_t) − V_t: the definition written out as sums, not as the backward recursion."""
    steps, n_envs = rewards.shape
    next_v = np.concatenate([values[1:], last_values[None]], 0)
    delta = rewards + gamma * next_v * (1 - dones) - values
    adv = np.zeros_like(rewards)
    for e in range(n_envs):
        for t in range(steps):
            for k in range(t, steps):
                adv[t, e] += (gamma * lam) ** (k - t) * delta[k, e]
                if dones[k, e]:
                    break
    return adv


def test_gae_matches_its_definition():
    """Two envs over 5 steps: env 0's episode ends at t=1, env 1's at t=2 and t=4 (the last step),
    so the rollout's bootstrap V(s_T) reaches env 0 only."""
    rng = np.random.default_rng(0)
    rewards, values = rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
    dones = np.zeros((5, 2))
    dones[1, 0] = dones[2, 1] = dones[4, 1] = 1.0
    last_values = np.array([3.0, -7.0])
    adv, ret = compute_gae(rewards, values, dones, last_values, 0.9, 0.8)
    expected = gae_by_sums(rewards, values, dones, last_values, 0.9, 0.8)
    np.testing.assert_allclose(adv, expected, rtol=1e-12)
    np.testing.assert_allclose(ret, expected + values, rtol=1e-12)  # V_targ = Â + V
    # hand check of two entries: the last step of an ended episode is r − V, the last step of a
    # running one bootstraps from last_values
    assert adv[4, 1] == pytest.approx(rewards[4, 1] - values[4, 1])
    assert adv[4, 0] == pytest.approx(rewards[4, 0] + 0.9 * 3.0 - values[4, 0])


def ppo_rollout(algo, monkeypatch, iterations: int = 1):
    """Collect `iterations` rollouts with `update` switched off; returns the env steps taken."""
    steps = []
    real_step = algo.env.step

    def spy(actions):
        out = real_step(actions)
        steps.append(out)
        return out

    monkeypatch.setattr(algo.env, "step", spy)
    monkeypatch.setattr(algo, "update", lambda rollout: {})
    for _ in range(iterations):
        algo.train_iteration()
    return steps


def test_collector_bootstraps_truncations_and_feeds_gae(tmp_path, monkeypatch):
    """Pendulum's 200-step limit falls at t=49 of the second 150-step rollout: that reward gets
    γ·V(final obs) added and the step counts as an episode end; the stored advantages and returns
    are GAE(γ, λ) of the stored rewards with V(s_T) after the rollout."""
    algo = make_algo("ppo", tmp_path, n_steps=150, gamma=0.9, gae_lambda=0.7)
    steps = ppo_rollout(algo, monkeypatch, iterations=2)[150:]
    buf = algo.rollout
    assert steps[49].truncated[0] and not steps[49].terminated[0]
    with torch.no_grad():
        v_final = algo.value(torch.as_tensor(steps[49].next_obs)).numpy()
        last_v = algo.value(torch.as_tensor(algo.obs)).numpy()
    raw = np.array([s.reward for s in steps])
    expected_rewards = raw.copy()
    expected_rewards[49] += 0.9 * v_final
    np.testing.assert_allclose(buf.rewards, expected_rewards, rtol=1e-6)
    assert buf.dones[:, 0].nonzero()[0].tolist() == [49]
    data = buf.all()
    adv = gae_by_sums(buf.rewards.astype(np.float64), buf.values.astype(np.float64), buf.dones,
                      last_v.astype(np.float64), 0.9, 0.7)
    np.testing.assert_allclose(data.advantages.numpy(), adv[:, 0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(data.returns.numpy(), adv[:, 0] + buf.values[:, 0], rtol=1e-4,
                               atol=1e-4)


def test_collector_never_bootstraps_terminations(tmp_path, monkeypatch):
    """CartPole ends by termination: those rewards are stored as they came, marked done."""
    algo = make_algo("ppo", tmp_path, env="CartPole-v1", n_steps=100)
    steps = ppo_rollout(algo, monkeypatch)
    terminated = np.array([s.terminated[0] for s in steps])
    assert terminated.sum() >= 2  # a random policy falls within 100 steps
    np.testing.assert_array_equal(algo.rollout.rewards[:, 0], [s.reward[0] for s in steps])
    np.testing.assert_array_equal(algo.rollout.dones[:, 0], [s.done[0] for s in steps])


# ---- PPO ----------------------------------------------------------------------------------------
def test_ppo_rollout_keeps_the_sampling_policys_log_probs_and_values(tmp_path, monkeypatch):
    """The ratio's denominator is log π_old of the action taken and V_old is the critic's value,
    both of the policy that acted (unchanged here: no update ran)."""
    algo = make_algo("ppo", tmp_path)
    ppo_rollout(algo, monkeypatch)
    buf = algo.rollout
    obs, actions = torch.as_tensor(buf.obs[:, 0]), torch.as_tensor(buf.actions[:, 0])
    with torch.no_grad():
        mean, log_std = algo.policy.dist_params(obs)
        log_prob = (-0.5 * ((actions - mean) / log_std.exp()) ** 2 - log_std - LOG_SQRT_2PI).sum(-1)
        value = algo.value_fn(obs).squeeze(-1)
    assert close(torch.as_tensor(buf.log_probs[:, 0]), log_prob, atol=1e-5)
    assert close(torch.as_tensor(buf.values[:, 0]), value)
    assert actions.std() > 0.5  # sampled (log-std 0), not the mean


def test_ppo_learning_rate_annealing(tmp_path, monkeypatch):
    """`anneal_lr`: lr · (fraction of total_steps left when the rollout began), the authors' code's
    `frac = 1 − (update − 1)/nupdates` (openai/baselines `ppo2/ppo2.py`)."""
    algo = make_algo("ppo", tmp_path, anneal_lr=True, total_steps=256, n_epochs=1)
    lrs = []
    real_update = algo.update

    def spy(rollout):
        metrics = real_update(rollout)
        lrs.append(algo.optimizer.param_groups[0]["lr"])
        return metrics

    monkeypatch.setattr(algo, "update", spy)
    for _ in range(4):
        algo.train_iteration()
    lr = algo.cfg.learning_rate
    assert lrs == pytest.approx([lr, lr * 0.75, lr * 0.5, lr * 0.25])


@pytest.fixture
def ppo(tmp_path, monkeypatch):
    """PPO on Pendulum with one rollout collected (not yet used), an entropy bonus on."""
    algo = make_algo("ppo", tmp_path, ent_coef=0.01, n_epochs=3, batch_size=16)
    with monkeypatch.context() as m:
        ppo_rollout(algo, m)
    yield algo
    algo.close()


def ppo_loss_by_hand(algo, b: RolloutBatch):
    """Paper eq. 7 and 9 with the policy's Gaussian written out; returns (loss, pg, value, entropy,
    approx KL)."""
    cfg = algo.cfg
    mean, log_std = algo.policy.dist_params(b.obs)
    log_std = log_std.expand_as(mean)
    log_prob = (-0.5 * ((b.actions - mean) / log_std.exp()) ** 2 - log_std - LOG_SQRT_2PI).sum(-1)
    entropy = (0.5 + LOG_SQRT_2PI + log_std).sum(-1)
    ratio = torch.exp(log_prob - b.log_probs)
    adv = (b.advantages - b.advantages.mean()) / (b.advantages.std() + 1e-8)
    eps = cfg.clip_range
    pg = -torch.minimum(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv).mean()
    value = algo.value_fn(b.obs).squeeze(-1)
    if cfg.clip_range_vf is not None:
        value = b.values + (value - b.values).clamp(-cfg.clip_range_vf, cfg.clip_range_vf)
    value_loss = ((value - b.returns) ** 2).mean()
    loss = pg + cfg.vf_coef * value_loss - cfg.ent_coef * entropy.mean()
    kl = (ratio - 1 - torch.log(ratio)).mean()
    return loss, pg, value_loss, entropy.mean(), kl


def off_policy_batch(algo) -> RolloutBatch:
    """The rollout with old log-probs moved by ±0.6 (ratios on both sides of the clip) and values
    moved by ±1 (so value clipping binds)."""
    b = algo.rollout.all()
    g = torch.Generator().manual_seed(1)
    n = len(b.obs)
    return b._replace(log_probs=b.log_probs + 1.2 * torch.rand(n, generator=g) - 0.6,
                      values=b.values + 2 * torch.rand(n, generator=g) - 1)


def test_ppo_loss_is_the_clipped_surrogate(ppo):
    b = off_policy_batch(ppo)
    loss, stats, log_ratio = ppo.loss(b)
    approx_kl, clip_fraction = ratio_diagnostics([log_ratio], ppo.cfg.clip_range)
    h_loss, h_pg, h_value, h_entropy, h_kl = ppo_loss_by_hand(ppo, b)
    ratio = torch.exp(ppo.policy.log_prob_entropy(b.obs, b.actions)[0] - b.log_probs)
    # guards: clipping binds on both sides, standardised advantages of both signs
    adv = b.advantages - b.advantages.mean()
    assert (ratio > 1.2).any() and (ratio < 0.8).any() and (adv > 0).any() and (adv < 0).any()
    assert close(loss, h_loss) and close(stats[0], h_pg) and close(stats[1], h_value)
    assert close(stats[2], -h_entropy) and close(stats[3], h_loss)
    assert close(clip_fraction[0], ((ratio - 1).abs() > 0.2).float().mean())
    assert close(approx_kl[0], h_kl)


@pytest.fixture
def factor_ppo(tmp_path, monkeypatch):
    """PPO with `ratio: factor` on lot-sizing (MultiDiscrete, 5 components), one rollout collected."""
    algo = make_algo("ppo", tmp_path, env="ctrlrl/LotSizing-15x5-v0", ratio="factor",
                     ent_coef=0.01, n_steps=64, batch_size=32, n_epochs=2, hidden_sizes=[32, 32])
    with monkeypatch.context() as m:
        ppo_rollout(algo, m)
    yield algo
    algo.close()


def test_ppo_factor_ratio_clips_each_action_component(factor_ppo):
    """One clipped ratio per component against π_old's log-probability of that component; the
    surrogate and the entropy are averaged over samples and components."""
    algo, g = factor_ppo, torch.Generator().manual_seed(2)
    b = algo.rollout.all()
    with torch.no_grad():
        logp, entropy = algo.policy.factor_log_prob_entropy(b.obs, b.actions)
    assert logp.shape == (len(b.obs), 5)
    b = b._replace(log_probs=logp + 1.2 * torch.rand(logp.shape, generator=g) - 0.6)
    loss, stats, log_ratio = algo.loss(b)
    ratio = torch.exp(logp - b.log_probs)
    adv = ((b.advantages - b.advantages.mean()) / (b.advantages.std() + 1e-8))[:, None]
    pg = -torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean()
    value_loss = ((algo.value_fn(b.obs).squeeze(-1) - b.returns) ** 2).mean()
    assert (ratio > 1.2).any() and (ratio < 0.8).any()  # guard: the clip binds both ways
    assert close(stats[0], pg) and close(stats[2], -entropy.mean()) and close(stats[1], value_loss)
    assert close(loss, pg - 0.01 * entropy.mean() + algo.cfg.vf_coef * value_loss)
    torch.testing.assert_close(log_ratio, (logp - b.log_probs).reshape(-1))


def test_ppo_factor_ratio_update_feeds_the_acting_policys_component_log_probs(factor_ppo,
                                                                              monkeypatch):
    """Every minibatch the update evaluates carries, per component, the log-probability that the
    policy before this update gave its actions — not the joint log-probability the rollout kept."""
    algo = factor_ppo
    before = copy.deepcopy(algo.policy)
    seen, real_loss = [], algo.minibatch_loss
    monkeypatch.setattr(algo, "minibatch_loss",
                        lambda b, by_hand: seen.append(b) or real_loss(b, by_hand))
    algo.update(algo.rollout)
    assert len(seen) == 4  # 2 epochs of 2 minibatches
    for b in seen:
        with torch.no_grad():
            expected = before.factor_log_prob_entropy(b.obs, b.actions)[0]
        torch.testing.assert_close(b.log_probs, expected)
    assert not close(algo.policy.factor_log_prob_entropy(b.obs, b.actions)[0], expected)  # it learnt


def test_ppo_ratio_is_refused_where_the_policy_is_not_multidiscrete(tmp_path):
    with pytest.raises(UserError, match="cannot use ratio='factor'"):
        make_algo("ppo", tmp_path, ratio="factor")  # Pendulum: a Gaussian policy


def test_ppo_value_clipping_when_configured(ppo):
    b = off_policy_batch(ppo)
    ppo.cfg.clip_range_vf = 0.1
    _, stats, _ = ppo.loss(b)
    h_value = ppo_loss_by_hand(ppo, b)[2]
    assert close(stats[1], h_value)
    unclipped = ((ppo.value_fn(b.obs).squeeze(-1) - b.returns) ** 2).mean()
    assert not close(h_value, unclipped)  # guard: the clip binds


@pytest.mark.parametrize("by_hand", [True, False], ids=["hand-gradients", "autograd"])
def test_ppo_update_steps_on_each_minibatch_loss(ppo, monkeypatch, by_hand):
    """Every optimiser step's gradient is that of the hand loss of the minibatch just drawn, at the
    parameters of that moment, clipped to global norm 0.5; n_epochs passes over the rollout. With
    the gradient written out (`loss_gradients`, the default here) and with autograd's."""
    assert ppo.uses_hand_gradients()
    monkeypatch.setattr(ppo, "uses_hand_gradients", lambda: by_hand)
    batches, grads, params = [], [], []
    real_loss, real_step = ppo.minibatch_loss, ppo.optimizer.step

    def loss_spy(b, by_hand):
        batches.append(b)
        return real_loss(b, by_hand)

    def step_spy(*args, **kwargs):
        grads.append(ppo.flat.param.grad.clone())
        params.append(ppo.flat.param.detach().clone())
        return real_step(*args, **kwargs)

    monkeypatch.setattr(ppo, "minibatch_loss", loss_spy)
    monkeypatch.setattr(ppo.optimizer, "step", step_spy)
    ppo.update(ppo.rollout)
    n = ppo.cfg.n_steps
    assert len(batches) == len(grads) == 3 * n // 16 and ppo.n_updates == len(grads)
    everything = ppo.rollout.all()
    for epoch in range(3):  # each epoch is a permutation of the whole rollout
        obs = torch.cat([b.obs for b in batches[epoch * 4:(epoch + 1) * 4]])
        assert torch.equal(obs[torch.argsort(obs[:, 0])], everything.obs[torch.argsort(everything.obs[:, 0])])
    nets = list(ppo.policy.parameters()) + list(ppo.value_fn.parameters())
    clipped = 0
    for b, grad, param in list(zip(batches, grads, params, strict=True))[:4]:
        with torch.no_grad():
            ppo.flat.param.copy_(param)
        g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(ppo_loss_by_hand(ppo, b)[0], nets)])
        norm = g.norm()
        clipped += int(norm > 0.5)
        assert close(grad, g * min(1.0, 0.5 / (norm.item() + 1e-6)), atol=1e-6), norm
    assert clipped >= 1  # guard: the norm clip binds on some step


def test_ppo_kl_threshold():
    assert kl_exceeded(torch.tensor(1.5 * 0.01 + 1e-6), 0.01)
    assert not kl_exceeded(torch.tensor(1.5 * 0.01 - 1e-6), 0.01)
    assert not kl_exceeded(torch.tensor(1e9), None)
    for bad in ({"target_kl": 0.0}, {"kl_stop": "batch"}):
        with pytest.raises(UserError):
            PPOConfig(**bad)


def run_update(algo, state, monkeypatch, seed=123):
    """`algo.update` from saved module states with the given RNG seed; returns the approx KLs its
    losses reported, the number of optimiser steps and the metrics it returned."""
    for key, module in algo.state_modules().items():
        module.load_state_dict(copy.deepcopy(state[key]))
    algo.n_updates = 0
    kls, n_steps = [], [0]
    real_loss, real_step = algo.minibatch_loss, algo.optimizer.step

    def loss_spy(b, by_hand):
        out = real_loss(b, by_hand)
        kls.append(ratio_diagnostics([out[2]], algo.cfg.clip_range)[0].item())
        return out

    def step_spy(*args, **kwargs):
        n_steps[0] += 1
        return real_step(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(algo, "minibatch_loss", loss_spy)
        m.setattr(algo.optimizer, "step", step_spy)
        torch.manual_seed(seed)
        metrics = algo.update(algo.rollout)
    return kls, n_steps[0], metrics


def test_ppo_target_kl_stops_before_the_minibatch_past_it(ppo, monkeypatch):
    """stable-baselines3's rule: the first minibatch whose approximate KL exceeds 1.5·target_kl
    takes no step and ends the update; train/approx_kl is the mean over every minibatch evaluated."""
    state = {k: copy.deepcopy(m.state_dict()) for k, m in ppo.state_modules().items()}
    free_kls, free_steps, _ = run_update(ppo, state, monkeypatch)
    assert free_steps == len(free_kls) == 12
    # the first minibatch after the first epoch's whose KL is a new maximum; the threshold just
    # below it
    j = next(i for i in range(5, 12) if free_kls[i] > 1.01 * max(free_kls[:i]))
    ppo.cfg.target_kl = free_kls[j] * 0.999 / 1.5
    kls, n_steps, metrics = run_update(ppo, state, monkeypatch)
    assert np.allclose(kls, free_kls[:j + 1])
    assert n_steps == ppo.n_updates == j
    assert metrics["approx_kl"].item() == pytest.approx(np.mean(kls), rel=1e-5)
    # `kl_stop="epoch"`: the epoch's mean KL, checked after its steps
    ppo.cfg.kl_stop, ppo.cfg.target_kl = "epoch", np.mean(free_kls[:4]) * 0.999 / 1.5
    kls, n_steps, _ = run_update(ppo, state, monkeypatch)
    assert n_steps == len(kls) == 4


# ---- SAC ----------------------------------------------------------------------------------------
def fill_replay(algo, n: int = 256, seed: int = 0) -> None:
    """Synthetic transitions, a third of them terminal."""
    rng = np.random.default_rng(seed)
    obs_dim, act_dim = algo.obs_dim, algo.act_dim
    algo.replay.add(rng.normal(size=(n, obs_dim)), rng.uniform(-1, 1, (n, act_dim)),
                    rng.normal(size=n), rng.normal(size=(n, obs_dim)),
                    (rng.uniform(size=n) < 0.33).astype(np.float32))


def perturb(*modules: torch.nn.Module, scale: float = 0.3) -> None:
    """Move target networks away from their online twins, so mixing them up shows."""
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                p.add_(scale * torch.randn(p.shape, generator=g))


def tanh_gaussian(actor, obs, eps):
    """(tanh(u), log π) for u = μ + σ·eps, the change of variables written out."""
    mean, log_std = actor.dist_params(obs)
    u = mean + log_std.exp() * eps
    log_prob = (-0.5 * eps ** 2 - log_std - LOG_SQRT_2PI).sum(-1) \
        - torch.log(1 - torch.tanh(u) ** 2 + 1e-12).sum(-1)
    return torch.tanh(u), log_prob


@pytest.fixture
def sac(tmp_path):
    algo = make_algo("sac", tmp_path, env="Hopper-v5")  # 3-dim actions
    fill_replay(algo)
    perturb(algo.critic_target)
    yield algo
    algo.close()


@pytest.mark.parametrize("variant", ["paper", "sb3"])
def test_sac_update(sac, variant):
    """One update against eq. 3, 5, 7, 18: the soft target at a' ~ π(·|s') with min of the target
    Qs and (1 − d); the actor's α log π − min Q at the critic just stepped; α's loss and the sign
    of its step; Polyak τ. `paper` steps α last on fresh samples of the new policy, `sb3` first."""
    sac.cfg.alpha_update = variant
    sac.log_alpha.data.fill_(math.log(0.3))
    actor0, critic0, target0 = (copy.deepcopy(m) for m in (sac.actor, sac.critic, sac.critic_target))
    log_alpha0 = sac.log_alpha.item()
    torch.manual_seed(5)
    m = sac.update(sac.replay.sample(sac.cfg.batch_size))

    torch.manual_seed(5)
    b = sac.replay.sample(sac.cfg.batch_size)
    shape = b.actions.shape
    eps_pi, eps_next = torch.randn(shape), torch.randn(shape)
    alpha, gamma, h_target = 0.3, 0.99, -3.0
    assert sac.target_entropy == h_target
    assert (b.terminated == 1).any() and (b.terminated == 0).any()
    with torch.no_grad():
        a_pi, logp_pi = tanh_gaussian(actor0, b.obs, eps_pi)
        a_next, logp_next = tanh_gaussian(actor0, b.next_obs, eps_next)
        soft_v = target0(b.next_obs, a_next).min(0).values - alpha * logp_next
        y = b.rewards + gamma * (1 - b.terminated) * soft_v
        critic_loss = 0.5 * ((critic0(b.obs, b.actions) - y) ** 2).mean(1).sum()
        actor_loss = (alpha * logp_pi - sac.critic(b.obs, a_pi).min(0).values).mean()
        if variant == "paper":
            logp_alpha = tanh_gaussian(sac.actor, b.obs, torch.randn(shape))[1]
            alpha_loss = -(alpha * (logp_alpha + h_target)).mean()
            grad = -(alpha * (logp_alpha + h_target)).mean()
        else:
            alpha_loss = -(log_alpha0 * (logp_pi + h_target)).mean()
            grad = -(logp_pi + h_target).mean()
    assert close(m["critic_loss"], critic_loss, rtol=1e-4)
    assert close(m["actor_loss"], actor_loss, rtol=1e-4)
    assert close(m["ent_coef"], alpha) and close(m["ent_coef_loss"], alpha_loss, rtol=1e-4)
    assert sac.log_alpha.item() == pytest.approx(
        adam_first_step(torch.tensor(log_alpha0), grad, 3e-4, 1e-8).item(), abs=1e-7)
    for old, new, tgt in zip(snapshot(target0), snapshot(sac.critic), snapshot(sac.critic_target),
                             strict=True):
        assert close(tgt, 0.995 * old + 0.005 * new, atol=1e-7)


def test_sac_acts_with_a_policy_sample(sac):
    """Exploration draws ã = tanh(μ + σ·ε) from the current policy; evaluation takes tanh(μ)."""
    obs = torch.randn(64, sac.obs_dim)
    torch.manual_seed(3)
    action = sac.exploration_action(obs)
    torch.manual_seed(3)
    with torch.no_grad():
        hand = tanh_gaussian(sac.actor, obs, torch.randn(64, sac.act_dim))[0]
        assert close(action, hand)
        assert close(sac.deterministic_action(obs), torch.tanh(sac.actor.dist_params(obs)[0]))


def test_sac_defaults_follow_the_paper():
    cfg = SACConfig()
    assert (cfg.learning_rate, cfg.batch_size, cfg.buffer_size, cfg.tau, cfg.gamma,
            tuple(cfg.hidden_sizes), cfg.gradient_steps, cfg.ent_coef, cfg.alpha_update) == \
        (3e-4, 256, 1_000_000, 0.005, 0.99, (256, 256), 1, 1.0, "paper")
    assert cfg.autotune and cfg.target_entropy is None
    with pytest.raises(UserError):
        SACConfig(alpha_update="first")


# ---- TD3 ----------------------------------------------------------------------------------------
@pytest.fixture
def td3(tmp_path):
    # target noise wide enough that its clip binds often; targets moved so that the target
    # actor's actions spread over the box and the action clip binds too
    algo = make_algo("td3", tmp_path, env="Hopper-v5", target_policy_noise=0.6)
    fill_replay(algo)
    perturb(algo.actor_target, algo.critic_target)
    yield algo
    algo.close()


def td3_target_by_hand(algo, actor_target, critic_target, b, eps):
    noise = (algo.cfg.target_policy_noise * eps).clamp(-algo.cfg.target_noise_clip,
                                                       algo.cfg.target_noise_clip)
    raw = actor_target(b.next_obs) + noise
    next_q = critic_target(b.next_obs, raw.clamp(-1, 1)).min(0).values
    return b.rewards + algo.cfg.gamma * (1 - b.terminated) * next_q, noise, raw


def test_td3_update(td3):
    """Four updates: each critic step against the clipped double-Q target with smoothed target
    actions (noise clip, action clip) and (1 − d); the actor and both targets move on updates 2
    and 4 only, the actor by −Q1(s, π(s)) at the just-stepped critic, the targets by Polyak τ."""
    cfg = td3.cfg
    for k in range(1, 5):
        actor0, critic0 = copy.deepcopy(td3.actor), copy.deepcopy(td3.critic)
        a_targ0, c_targ0 = copy.deepcopy(td3.actor_target), copy.deepcopy(td3.critic_target)
        torch.manual_seed(k)
        m = td3.update(td3.replay.sample(cfg.batch_size))
        td3.n_updates += 1  # as the training loop counts

        torch.manual_seed(k)
        b = td3.replay.sample(cfg.batch_size)
        with torch.no_grad():
            y, noise, raw = td3_target_by_hand(td3, a_targ0, c_targ0, b, torch.randn_like(b.actions))
            critic_loss = ((critic0(b.obs, b.actions) - y) ** 2).mean(1).sum()
            clipped_noise = noise.abs() == cfg.target_noise_clip
            assert (clipped_noise & (raw.abs() < 1)).any() and (raw.abs() > 1).any()
            assert (b.terminated == 1).any()
        assert close(m["critic_loss"], critic_loss, rtol=1e-4)
        delayed = k % 2 == 0
        assert delayed == ("actor_loss" in m)
        assert delayed != all(torch.equal(p, q) for p, q in zip(snapshot(actor0), snapshot(td3.actor),
                                                                 strict=True))
        if delayed:
            with torch.no_grad():
                actor_loss = -td3.critic(b.obs, actor0(b.obs))[0].mean()
            assert close(m["actor_loss"], actor_loss, rtol=1e-4)
            pairs = ((a_targ0, td3.actor, td3.actor_target), (c_targ0, td3.critic, td3.critic_target))
        else:
            pairs = ((a_targ0, a_targ0, td3.actor_target), (c_targ0, c_targ0, td3.critic_target))
        for old, new, tgt in pairs:
            for o, n, t in zip(snapshot(old), snapshot(new), snapshot(tgt), strict=True):
                assert close(t, 0.995 * o + 0.005 * n, atol=1e-7)


def test_td3_bellman_target_and_exploration(td3):
    torch.manual_seed(0)
    b = td3.replay.sample(64)
    torch.manual_seed(1)
    next_action, y = td3.bellman_target(b)
    torch.manual_seed(1)
    with torch.no_grad():
        y_hand, noise, raw = td3_target_by_hand(td3, td3.actor_target, td3.critic_target, b,
                                                torch.randn_like(b.actions))
    # guards: the noise clip binds inside the box, the box binds elsewhere
    assert ((noise.abs() == td3.cfg.target_noise_clip) & (raw.abs() < 1)).any() and (raw.abs() > 1).any()
    assert close(y, y_hand) and close(next_action, raw.clamp(-1, 1))
    torch.manual_seed(2)
    explore = td3.exploration_action(b.obs)
    torch.manual_seed(2)
    with torch.no_grad():
        hand = (td3.actor(b.obs) + 0.1 * torch.randn_like(b.actions)).clamp(-1, 1)
    assert close(explore, hand)


def test_td3_defaults_follow_the_authors():
    cfg = TD3Config()
    assert (cfg.learning_rate, cfg.batch_size, cfg.tau, cfg.gamma, cfg.policy_delay,
            cfg.target_policy_noise, cfg.target_noise_clip, cfg.exploration_noise,
            cfg.learning_starts, tuple(cfg.hidden_sizes)) == \
        (3e-4, 256, 0.005, 0.99, 2, 0.2, 0.5, 0.1, 25_000, (256, 256))


# ---- TD3+BC and BC ------------------------------------------------------------------------------
@pytest.fixture
def td3bc(tmp_path):
    algo = make_algo("td3bc", tmp_path)
    algo.load_dataset()
    yield algo
    algo.close()


def test_offline_states_are_standardised_by_the_dataset(td3bc):
    """(s − mean)/(std + 1e-3) with the dataset's population std (TD3+BC's `normalize_states`)."""
    from ctrlrl.data import load

    obs = load(str(OFFLINE_DATA), "Hopper-v5").observations.astype(np.float64)
    mean, std = obs.mean(0), obs.std(0) + 1e-3
    np.testing.assert_allclose(td3bc.obs_stats.mean.numpy(), mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(td3bc.obs_stats.std.numpy(), std, rtol=1e-4)
    np.testing.assert_allclose(td3bc.replay.storage[:len(obs), :obs.shape[1]].numpy(),
                               (obs - mean) / std, rtol=1e-3, atol=1e-4)


def test_td3bc_actor_loss(td3bc):
    """−λ·mean Q1(s, π(s)) + mean (π(s) − a)², λ = α / mean|Q1| with no gradient through λ; and
    update() feeds it the batch and the just-stepped critic on the delayed step."""
    torch.manual_seed(0)
    b = td3bc.replay.sample(64)
    params = list(td3bc.actor.parameters())

    def hand(detach_lambda: bool):
        pi = td3bc.actor(b.obs)
        q = td3bc.critic(b.obs, pi)[0]
        scale = q.abs().mean()
        lam = 2.5 / (scale.detach() if detach_lambda else scale)
        return -lam * q.mean() + ((pi - b.actions) ** 2).mean(), lam

    loss, info = td3bc.actor_loss(b)
    h_loss, h_lam = hand(True)
    assert close(loss, h_loss) and close(info["lambda"], h_lam)
    grads = torch.autograd.grad(loss, params)
    h_grads = torch.autograd.grad(h_loss, params)
    other = torch.autograd.grad(hand(False)[0], params)
    assert all(close(g, h) for g, h in zip(grads, h_grads, strict=True))
    assert not all(close(g, h) for g, h in zip(other, h_grads, strict=True))  # guard

    td3bc.n_updates = 1  # the next update is a delayed one
    actor0 = copy.deepcopy(td3bc.actor)
    torch.manual_seed(3)
    m = td3bc.update(td3bc.replay.sample(td3bc.cfg.batch_size))
    torch.manual_seed(3)
    b = td3bc.replay.sample(td3bc.cfg.batch_size)
    with torch.no_grad():
        pi = actor0(b.obs)
        q = td3bc.critic(b.obs, pi)[0]
        lam = 2.5 / q.abs().mean()
        bc = ((pi - b.actions) ** 2).mean()
    assert close(m["lambda"], lam, rtol=1e-4) and close(m["bc_loss"], bc, rtol=1e-4)
    assert close(m["actor_loss"], -lam * q.mean() + bc, rtol=1e-4)


def test_td3bc_defaults_follow_the_paper():
    cfg = TD3BCConfig()
    assert (cfg.alpha, cfg.normalize_states, cfg.learning_rate, cfg.batch_size, cfg.tau,
            cfg.policy_delay, cfg.target_policy_noise, cfg.target_noise_clip) == \
        (2.5, True, 3e-4, 256, 0.005, 2, 0.2, 0.5)


@pytest.mark.parametrize("config", [TD3Config, TD3BCConfig, A2PRConfig])
def test_td3_learner_settings_are_shared_and_checked(config):
    """TD3+BC and A2PR inherit TD3's learner settings: one definition, one range check."""
    assert issubclass(config, TD3LearnerConfig)
    shared = {f.name: f.default for f in dataclasses.fields(TD3LearnerConfig)}
    assert {key: getattr(config(), key) for key in shared} == shared
    for bad in ({"policy_delay": 0}, {"gamma": 1.5}, {"target_noise_clip": -1.0}):
        with pytest.raises(UserError, match=next(iter(bad))):
            config(**bad)


def test_bc_update(tmp_path):
    """One step of Adam on mean (π(s) − a)² over the sampled batch."""
    algo = make_algo("bc", tmp_path)
    algo.load_dataset()
    actor0 = copy.deepcopy(algo.actor)
    torch.manual_seed(4)
    metrics = algo.update(algo.replay.sample(algo.cfg.batch_size))
    torch.manual_seed(4)
    b = algo.replay.sample(algo.cfg.batch_size)
    loss = ((actor0(b.obs) - b.actions) ** 2).mean()
    grads = torch.autograd.grad(loss, list(actor0.parameters()))
    assert close(metrics["bc_loss"], loss)
    for p0, g, p in zip(actor0.parameters(), grads, algo.actor.parameters(), strict=True):
        assert close(p, adam_first_step(p0.detach(), g, 3e-4, 1e-8), atol=1e-7)
    algo.close()
