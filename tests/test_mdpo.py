"""MDPO (Tomar et al., ICLR 2022): the properties that pin the update rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_algo

from ctrlrl.algos.mdpo import MDPOConfig, MDPOOffConfig, mirror_actor_loss, output_regulariser, step_size
from ctrlrl.core.buffers import RolloutBatch, standardize
from ctrlrl.core.nets import CategoricalPolicy, GaussianPolicy


def policy_grad(policy, loss, retain_graph: bool = False) -> torch.Tensor:
    grads = torch.autograd.grad(loss, list(policy.parameters()), retain_graph=retain_graph)
    return torch.cat([g.reshape(-1) for g in grads])


def perturb(module, scale: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


def on_policy_batch(algo, n: int = 64) -> tuple[RolloutBatch, torch.Tensor]:
    """A batch collected by the current policy (θ = θ_k), with arbitrary advantages."""
    obs = torch.randn(n, algo.obs_dim)
    with torch.no_grad():
        actions, log_probs = algo.policy.sample(obs)
    adv = torch.randn(n)
    zeros = torch.zeros(n)
    return RolloutBatch(obs, actions, log_probs, zeros, adv, zeros), adv


def test_first_step_is_the_policy_gradient(tmp_path):
    algo = make_algo("mdpo", tmp_path)
    b, adv = on_policy_batch(algo)
    old = algo.policy.dist_params(b.obs)
    old = tuple(t.detach() for t in old)
    mdpo_grad = policy_grad(algo.policy, algo.policy_loss(b, adv, old, kl_weight=7.0)[0])
    log_prob, _ = algo.policy.log_prob_entropy(b.obs, b.actions)
    pg_grad = policy_grad(algo.policy, -(log_prob * adv).mean())  # ∇ log π · Â at θ_k
    assert mdpo_grad.abs().max() > 1e-3
    torch.testing.assert_close(mdpo_grad, pg_grad, rtol=1e-5, atol=1e-7)
    # away from θ_k the KL term pulls: the same comparison must then fail
    perturb(algo.policy, 0.05, seed=1)
    moved = policy_grad(algo.policy, algo.policy_loss(b, adv, old, kl_weight=7.0)[0])
    no_kl = policy_grad(algo.policy, algo.policy_loss(b, adv, old, kl_weight=0.0)[0])
    assert not torch.allclose(moved, no_kl, rtol=1e-3, atol=1e-5)
    algo.close()


def test_gaussian_kl_is_new_given_old_and_matches_monte_carlo():
    torch.manual_seed(0)
    new, old = GaussianPolicy(3, 2, [16]), GaussianPolicy(3, 2, [16])
    with torch.no_grad():
        new.log_std.copy_(torch.tensor([-0.7, 0.4]))
        old.log_std.copy_(torch.tensor([0.3, -0.2]))
    obs = torch.randn(1, 3).expand(200_000, 3)
    with torch.no_grad():
        closed = new.kl(new.dist_params(obs[:1]), old.dist_params(obs[:1])).item()
        reverse = new.kl(old.dist_params(obs[:1]), new.dist_params(obs[:1])).item()
        a, logp_new = new.sample(obs)  # E_{π_θ}[log π_θ − log π_k]
        logp_old, _ = old.log_prob_entropy(obs, a)
        mc = (logp_new - logp_old).mean().item()
        se = (logp_new - logp_old).std().item() / np.sqrt(len(obs))
    assert abs(mc - closed) < 4 * se
    assert abs(mc - reverse) > 20 * se  # the other direction is far off: direction pinned


def test_categorical_kl_matches_monte_carlo():
    torch.manual_seed(0)
    new, old = CategoricalPolicy(3, 4, [16]), CategoricalPolicy(3, 4, [16])
    perturb(new, 0.5, seed=2)
    obs = torch.randn(1, 3).expand(200_000, 3)
    with torch.no_grad():
        closed = new.kl(new.dist_params(obs[:1]), old.dist_params(obs[:1])).item()
        a, logp_new = new.sample(obs)
        logp_old, _ = old.log_prob_entropy(obs, a)
        diff = logp_new - logp_old
    assert abs(diff.mean().item() - closed) < 4 * diff.std().item() / np.sqrt(len(obs))


def gaussian_kl(mean_p, log_std_p, mean_q, log_std_q) -> torch.Tensor:
    """KL(N_p ‖ N_q) per row, diagonal Gaussians, written out independently of the library's."""
    var_p, var_q = torch.exp(2 * log_std_p), torch.exp(2 * log_std_q)
    return (log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5).sum(-1)


def test_loss_is_ratio_surrogate_plus_weighted_kl_new_given_old(tmp_path):
    algo = make_algo("mdpo", tmp_path)
    b, adv = on_policy_batch(algo)
    with torch.no_grad():
        old_mean, old_log_std = (t.clone() for t in algo.policy.dist_params(b.obs))
    perturb(algo.policy, 0.2, seed=4)  # θ away from θ_k: ratio ≠ 1 and KL > 0
    with torch.no_grad():
        mean, log_std = algo.policy.dist_params(b.obs)
        loss, stats = algo.policy_loss(b, adv, (old_mean, old_log_std), kl_weight=3.0)
        new_logp = (-0.5 * ((b.actions - mean) / log_std.exp()) ** 2 - log_std
                    - 0.5 * np.log(2 * np.pi)).sum(-1)
        ratio = torch.exp(new_logp - b.log_probs)
        kl = gaussian_kl(mean, log_std, old_mean, old_log_std).mean()
        reverse = gaussian_kl(old_mean, old_log_std, mean, log_std).mean()
    assert abs(kl - reverse) > 1e-3  # the directions differ here, so the check below pins one
    torch.testing.assert_close(loss, -(ratio * adv).mean() + 3.0 * kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats[1], kl, rtol=1e-5, atol=1e-7)
    algo.close()


def record_policy_loss_calls(monkeypatch, algo) -> list[dict]:
    """Spy on the loss `update()` really calls: its inputs, the optimisers' lr, the current π."""
    calls, loss_fn = [], algo._policy_loss

    def spy(b, adv, old_params, kl_weight):
        with torch.no_grad():
            current = tuple(t.clone() for t in algo.policy.dist_params(b.obs))  # log-std: a view
            logp_now, _ = algo.policy.log_prob_entropy(b.obs, b.actions)
        calls.append({"kl_weight": float(kl_weight), "adv": adv.clone(), "advantages": b.advantages,
                      "old": tuple(t.clone() for t in old_params), "current": current,
                      "log_probs": b.log_probs, "logp_now": logp_now,
                      "lr": algo.policy_opt.param_groups[0]["lr"],
                      "vf_lr": algo.value_opt.param_groups[0]["lr"]})
        return loss_fn(b, adv, old_params, kl_weight)

    monkeypatch.setattr(algo, "_policy_loss", spy)
    return calls


@pytest.mark.parametrize(("settings", "weights"), [
    ({}, [4 / 5, 1.0, 4 / 3, 2.0]),  # t_k = 1 − (k − 1)/K, K = 4: 5/4, 1, 3/4, 1/2
    ({"step_size_offset": 0}, [1.0, 4 / 3, 2.0, 4.0]),  # t_k = 1 − k/K: 1, 3/4, 1/2, 1/4
    ({"anneal_step_size": False}, [1.0, 1.0, 1.0, 1.0]),
])
def test_update_weights_the_kl_by_one_over_t_k(settings, weights, monkeypatch, tmp_path):
    algo = make_algo("mdpo", tmp_path, total_steps=64 * 4, **settings)
    calls = record_policy_loss_calls(monkeypatch, algo)
    algo.learn()
    m = algo.cfg.sgd_steps
    assert len(calls) == 4 * m
    assert [c["kl_weight"] for c in calls] == pytest.approx([w for w in weights for _ in range(m)])
    algo.close()


def test_step_size_schedule_is_the_references():
    n_iter = 25
    for k in range(n_iter):  # mdpo_on l.400: 1 − (iters_so_far − 1)/n_updates
        assert step_size(k, n_iter) == pytest.approx(1 - (k - 1) / n_iter)
        assert step_size(k, n_iter, offset=0) == pytest.approx(1 - k / n_iter)
    assert step_size(0, n_iter) == pytest.approx(1 + 1 / n_iter)
    assert step_size(n_iter - 1, n_iter) == pytest.approx(2 / n_iter)
    assert MDPOConfig().step_size_offset == 1 and MDPOConfig().anneal_step_size


def test_inverse_step_size_is_non_decreasing():
    n_iter = 25
    t = [step_size(k, n_iter) for k in range(n_iter + 10)]  # past K: a resumed, longer run
    assert t[n_iter] == pytest.approx(1 / n_iter) and t[-1] == pytest.approx(1 / n_iter)  # the floor
    inv = 1 / np.array(t)
    assert np.all(np.diff(inv) >= 0) and np.all(np.isfinite(inv))


@pytest.mark.parametrize("anneal", [False, True])
def test_learning_rate_is_constant_unless_annealed(anneal, monkeypatch, tmp_path):
    settings = {"anneal_lr": True} if anneal else {}  # constant: the default
    algo = make_algo("mdpo", tmp_path, total_steps=64 * 4, learning_rate=1e-3, **settings)
    calls = record_policy_loss_calls(monkeypatch, algo)
    algo.learn()
    m = algo.cfg.sgd_steps
    expected = [1e-3 * (1 - k / 4) if anneal else 1e-3 for k in range(4)]
    assert [c["lr"] for c in calls[::m]] == pytest.approx(expected)
    assert [c["vf_lr"] for c in calls[::m]] == pytest.approx(expected)
    assert algo.policy_opt.param_groups[0]["lr"] == pytest.approx(expected[-1])
    algo.close()


def test_update_feeds_pi_k_and_standardised_advantages(monkeypatch, tmp_path):
    algo = make_algo("mdpo", tmp_path, total_steps=64 * 2)
    calls = record_policy_loss_calls(monkeypatch, algo)
    algo.learn()
    m = algo.cfg.sgd_steps
    for start in (0, m):  # each iteration: π_k is the policy that collected the rollout
        first = calls[start]
        for old, now in zip(first["old"], first["current"], strict=True):
            torch.testing.assert_close(old, now, rtol=0, atol=0)
        torch.testing.assert_close(first["log_probs"], first["logp_now"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(first["adv"], standardize(first["advantages"]))
        for later in calls[start + 1:start + m]:  # and stays fixed while θ moves
            for old, first_old in zip(later["old"], first["old"], strict=True):
                torch.testing.assert_close(old, first_old, rtol=0, atol=0)
        assert not torch.equal(calls[start + m - 1]["current"][0], first["current"][0])
    algo.close()


def test_value_loss_is_clipped_around_the_rollout_predictions(tmp_path):
    algo = make_algo("mdpo", tmp_path, clip_range_vf=0.2)
    obs = torch.randn(8, algo.obs_dim)
    with torch.no_grad():
        v = algo.value(obs)
    old_values = v + torch.tensor([0.5, -0.5, 0.1, -0.1, 0.3, -0.3, 0.0, 0.05])
    returns = v + torch.tensor([1.0, -1.0, 0.0, 0.2, -2.0, 2.0, 0.5, -0.5])
    zeros = torch.zeros(8)
    b = RolloutBatch(obs, zeros[:, None], zeros, old_values, zeros, returns)
    clipped = old_values + (v - old_values).clamp(-0.2, 0.2)
    expected = torch.maximum((v - returns) ** 2, (clipped - returns) ** 2).mean()
    with torch.no_grad():
        torch.testing.assert_close(algo.value_loss(b), expected)
        algo.cfg.clip_range_vf = None
        torch.testing.assert_close(algo.value_loss(b), ((v - returns) ** 2).mean())
    algo.close()


@pytest.mark.parametrize("vf_max_grad_norm", [None, 0.5])
def test_value_steps_are_plain_adam_unless_clipping_is_asked(vf_max_grad_norm, monkeypatch, tmp_path):
    settings = {} if vf_max_grad_norm is None else {"vf_max_grad_norm": vf_max_grad_norm}  # None: default
    algo = make_algo("mdpo", tmp_path, total_steps=64, **settings)
    clips, clip = [], algo.value_flat.clip_grad_norm_
    monkeypatch.setattr(algo.value_flat, "clip_grad_norm_", lambda n: clips.append(n) or clip(n))
    algo.learn()
    assert algo.value_opt.param_groups[0]["eps"] == 1e-8  # the reference's MpiAdam default
    n_minibatches = algo.cfg.vf_epochs * 64 // algo.cfg.vf_batch_size
    assert clips == ([] if vf_max_grad_norm is None else [0.5] * n_minibatches)
    algo.close()


def test_run_logs_kl_step_size_and_entropy(tmp_path):
    algo = make_algo("mdpo", tmp_path, total_steps=64 * 4).learn()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    t = [r["train/step_size"] for r in rows if "train/step_size" in r]
    assert t == pytest.approx([1.25, 1.0, 0.75, 0.5])  # t_k = 1 − (k − 1)/K with K = 4 rollouts
    assert all(r["train/kl_mirror"] > 0 and "train/entropy" in r for r in rows if "train/kl_mirror" in r)
    algo.close()


# ---- off-policy ---------------------------------------------------------------------------------
def test_mirror_actor_loss_and_regulariser_by_hand():
    log_prob = torch.tensor([-1.0, 0.5])
    old_log_prob = torch.tensor([-2.0, 1.0])
    q = torch.tensor([3.0, -1.0])
    # c = 0.5, λ = 0.2: [0.5·(−1) − 0.3·(−2) − 3, 0.5·0.5 − 0.3·1 + 1] = [−2.9, 0.95]
    assert mirror_actor_loss(log_prob, old_log_prob, q, 0.5, 0.2).item() == pytest.approx(-0.975)
    mean = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    log_std = torch.tensor([[0.5, -0.5], [-1.0, 1.0]])
    assert output_regulariser(mean, log_std).item() == pytest.approx(14 / 4 + 2.5 / 4)
    cfg = MDPOOffConfig()
    assert (cfg.actor_reg_coef, cfg.ent_coef, cfg.bregman_coef, cfg.autotune) == (1e-3, 0.2, 1.0, False)
    assert (cfg.old_update_every, cfg.old_update_phase) == (1000, 1)


@pytest.mark.parametrize("c", [0.2, 0.5])
def test_off_policy_with_c_equal_lambda_is_sacs_actor_loss(c, tmp_path):
    mdpo = make_algo("mdpo-off", tmp_path / "m", bregman_coef=c, ent_coef=0.2, actor_reg_coef=0.0)
    sac = make_algo("sac", tmp_path / "s", autotune=False, ent_coef=0.2)
    sac.actor.load_state_dict(mdpo.actor.state_dict())
    sac.critic.load_state_dict(mdpo.critic.state_dict())
    perturb(mdpo.old_actor, 0.1, seed=3)  # an old policy far from the current one
    obs = torch.randn(128, mdpo.obs_dim)
    alpha = torch.tensor(0.2)
    losses, grads = [], []
    for algo in (mdpo, sac):
        torch.manual_seed(5)  # the same ε for both
        loss = algo.actor_loss(obs, algo.actor.rsample(obs), alpha)[0]
        losses.append(loss)
        grads.append(policy_grad(algo.actor, loss))
    if c == 0.2:  # c = λ: SAC's loss, to float precision
        torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=1e-6)
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-7)
    else:
        assert not torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-5)
    mdpo.close()
    sac.close()


def expected_actor_loss(algo, obs, pre_tanh, c, lam, eta) -> torch.Tensor:
    """The off-policy actor loss recomputed from its definition, at the same ã = tanh(u)."""
    mean, log_std = algo.actor.dist_params(obs)
    u_std = (pre_tanh - mean) / log_std.exp()
    squash = torch.log(1 - torch.tanh(pre_tanh) ** 2).sum(-1)

    def log_pi(mu, ls):
        return (-0.5 * ((pre_tanh - mu) / ls.exp()) ** 2 - ls - 0.5 * np.log(2 * np.pi)).sum(-1) - squash

    old_mean, old_log_std = algo.old_actor.dist_params(obs)
    q = algo.critic(obs, torch.tanh(pre_tanh)).min(0).values
    assert u_std.abs().max() < 10  # u was drawn from the current policy
    return (c * log_pi(mean, log_std) + (lam - c) * log_pi(old_mean, old_log_std) - q).mean() \
        + eta * (mean.pow(2).mean() + log_std.pow(2).mean())


@pytest.mark.parametrize(("c", "lam", "eta"), [(1.0, 0.2, 1e-3), (0.3, 0.7, 0.05)])
def test_update_minimises_the_mirror_actor_loss(c, lam, eta, monkeypatch, tmp_path):
    settings = {} if eta == 1e-3 else {"actor_reg_coef": eta}  # 1e-3: the default
    algo = make_algo("mdpo-off", tmp_path, total_steps=59, old_update_every=4, bregman_coef=c,
                     ent_coef=lam, **settings)
    checked, actor_loss = [], algo.actor_loss

    def spy(obs, pi, alpha):
        loss, info = actor_loss(obs, pi, alpha)
        expected = expected_actor_loss(algo, obs, pi.pre_tanh, c, lam, eta)
        grad = policy_grad(algo.actor, loss, retain_graph=True)  # the update still backprops it
        expected_grad = policy_grad(algo.actor, expected, retain_graph=True)  # shares ã with it
        moved = any(not torch.equal(o, p) for o, p in zip(algo.old_actor.parameters(),
                                                           algo.actor.parameters(), strict=True))
        with torch.no_grad():
            reg = eta * output_regulariser(*algo.actor.dist_params(obs))
        checked.append((float(alpha), loss.detach(), expected.detach(), grad, expected_grad, moved,
                        float(reg)))
        return loss, info

    monkeypatch.setattr(algo, "actor_loss", spy)
    algo.learn()
    assert len(checked) == 10
    for alpha, loss, expected, grad, expected_grad, _, reg in checked:
        assert alpha == pytest.approx(lam)
        assert reg > 1e-5  # the regulariser is large enough for the comparison to see it
        torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-7)
    assert sum(moved for *_, moved, _ in checked) >= 5  # π_old ≠ π_θ at most steps
    algo.close()


@pytest.mark.parametrize(("phase", "refreshed_after"), [(1, [1, 5, 9]), (0, [4, 8])])
def test_old_policy_refresh_timing(phase, refreshed_after, monkeypatch, tmp_path):
    # learning starts at step 50 and updates once per step: 10 updates by step 59
    settings = {} if phase == 1 else {"old_update_phase": phase}  # 1: the default
    algo = make_algo("mdpo-off", tmp_path, total_steps=59, old_update_every=4, **settings)
    initial = [p.clone() for p in algo.old_actor.parameters()]
    equal_after, update = [], algo.update

    def spy(batch):
        metrics = update(batch)
        equal_after.append(all(torch.equal(o, p) for o, p in zip(
            algo.old_actor.parameters(), algo.actor.parameters(), strict=True)))
        return metrics

    monkeypatch.setattr(algo, "update", spy)
    algo.learn()
    assert [n for n, equal in enumerate(equal_after, start=1) if equal] == refreshed_after
    assert not any(torch.equal(o, i) for o, i in zip(algo.old_actor.parameters(), initial, strict=True))
    # the last (10th) loss saw π_old as refreshed after step 9 (= its θ) or after step 8 (one step behind)
    assert (algo.metrics["kl_mirror"] == 0) if phase == 1 else (algo.metrics["kl_mirror"] > 0)
    algo.close()


def test_critic_regresses_to_the_soft_twin_q_target_with_lambda(monkeypatch, tmp_path):
    algo = make_algo("mdpo-off", tmp_path, total_steps=55, ent_coef=0.3)
    checked, critic_loss = [], algo.critic_loss
    gamma = algo.cfg.gamma

    def spy(b, alpha):
        rng = torch.get_rng_state()
        loss = critic_loss(b, alpha)
        torch.set_rng_state(rng)  # the same a' ~ π(·|s') for the recomputation
        with torch.no_grad():
            next_action, next_log_prob = algo.actor.sample(b.next_obs)
            next_q = algo.critic_target(b.next_obs, next_action).min(0).values
            target = b.rewards + gamma * (1 - b.terminated) * (next_q - 0.3 * next_log_prob)
            q = algo.critic(b.obs, b.actions)
            expected = 0.5 * sum(((q[i] - target) ** 2).mean() for i in range(q.shape[0]))
        checked.append((float(alpha), loss.detach(), expected))
        return loss

    monkeypatch.setattr(algo, "critic_loss", spy)
    algo.learn()
    assert len(checked) == 6  # steps 50, …, 55
    for alpha, loss, expected in checked:
        assert alpha == pytest.approx(0.3)  # λ, fixed: no temperature tuning in MDPO
        torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    algo.close()
