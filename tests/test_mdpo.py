"""MDPO (ALGORITHMS.md §1): the properties that pin the update rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_algo

from ctrlrl.algos.mdpo import step_size
from ctrlrl.core.buffers import RolloutBatch
from ctrlrl.core.nets import CategoricalPolicy, GaussianPolicy


def policy_grad(policy, loss) -> torch.Tensor:
    grads = torch.autograd.grad(loss, list(policy.parameters()))
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


@pytest.mark.parametrize("c", [0.2, 0.5])
def test_off_policy_with_c_equal_lambda_is_sacs_actor_loss(c, tmp_path):
    mdpo = make_algo("mdpo-off", tmp_path / "m", bregman_coef=c, ent_coef=0.2)
    sac = make_algo("sac", tmp_path / "s", autotune=False, ent_coef=0.2)
    sac.actor.load_state_dict(mdpo.actor.state_dict())
    sac.critic.load_state_dict(mdpo.critic.state_dict())
    perturb(mdpo.old_actor, 0.1, seed=3)  # an old policy far from the current one
    obs = torch.randn(128, mdpo.obs_dim)
    alpha = torch.tensor(0.2)
    losses, grads = [], []
    for algo in (mdpo, sac):
        torch.manual_seed(5)  # the same ε for both
        action, log_prob, u = algo.actor.rsample(obs)
        loss = algo.actor_loss(obs, action, log_prob, u, alpha)
        losses.append(loss)
        grads.append(policy_grad(algo.actor, loss))
    if c == 0.2:  # c = λ: SAC's loss, to float precision
        torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=1e-6)
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-7)
    else:
        assert not torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-5)
    mdpo.close()
    sac.close()


def test_old_policy_equals_current_right_after_a_refresh(tmp_path):
    # learning starts at step 50 and updates once per step: 7 updates at step 56
    algo = make_algo("mdpo-off", tmp_path, total_steps=56, old_update_every=7)
    initial = [p.clone() for p in algo.old_actor.parameters()]
    algo.learn()
    assert algo.n_updates == 7
    for old, cur, first in zip(algo.old_actor.parameters(), algo.actor.parameters(), initial,
                               strict=True):
        assert torch.equal(old, cur)
        assert not torch.equal(old, first)  # it really moved with the actor
    algo.learn(58)  # two more gradient steps: the copy stays behind
    assert any(not torch.equal(o, c) for o, c in zip(algo.old_actor.parameters(),
                                                     algo.actor.parameters(), strict=True))
    assert algo.metrics["kl_mirror"] > 0  # measured at the second: the first saw old = current
    algo.close()


def test_inverse_step_size_is_non_decreasing():
    n_iter = 25
    t = [step_size(k, n_iter) for k in range(n_iter + 10)]  # past K: a resumed, longer run
    assert t[0] == 1.0 and t[n_iter - 1] == pytest.approx(1 / n_iter)
    inv = 1 / np.array(t)
    assert np.all(np.diff(inv) >= 0) and np.all(np.isfinite(inv))


def test_run_logs_kl_step_size_and_entropy(tmp_path):
    algo = make_algo("mdpo", tmp_path, total_steps=64 * 4).learn()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    t = [r["train/step_size"] for r in rows if "train/step_size" in r]
    assert t == pytest.approx([1.0, 0.75, 0.5, 0.25])  # t_k = 1 − k/K with K = 4 rollouts
    assert all(r["train/kl_mirror"] > 0 and "train/entropy" in r for r in rows if "train/kl_mirror" in r)
    algo.close()
