"""PDPPO (ALGORITHMS.md §2): the properties that pin the update rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, make_algo, read_metrics

import ctrlrl
from ctrlrl.core.errors import UserError


def collected(tmp_path, **extra):
    """A PDPPO run on 15×5 lot-sizing with one rollout collected (and its update done)."""
    algo = make_algo("pdppo", tmp_path, total_steps=64, n_envs=2, n_steps=32, **extra)
    algo.learn()
    return algo


def update_inputs(algo):
    """The last rollout, its post-decision states, both advantages under the current critics, and
    the current per-factor log-probabilities."""
    data = algo.rollout.all()
    post_obs = torch.as_tensor(algo.post_obs.reshape(data.obs.shape[0], -1))
    with torch.no_grad():
        pre_adv = data.returns - algo.value(data.obs)
        post_adv = data.returns - algo.post_value(post_obs)
        old_log_prob = algo.log_prob_entropy(data.obs, data.actions)[0]
    return data, post_obs, pre_adv, post_adv, old_log_prob


def test_combined_advantage_is_the_larger_of_both(tmp_path):
    algo = collected(tmp_path)
    data, _, pre_adv, post_adv, _ = update_inputs(algo)
    # λ = 1: the rollout's advantage is the return minus the rollout's V(s)
    torch.testing.assert_close(data.advantages, data.returns - data.values)
    combined = algo.advantages(pre_adv, post_adv)
    assert torch.all(combined >= pre_adv) and torch.all(combined >= post_adv)
    assert torch.all((combined == pre_adv) | (combined == post_adv))
    # the two critics disagree both ways, so the max is not just one of them
    assert (post_adv > pre_adv).any() and (pre_adv > post_adv).any()
    for mode, expected in (("pre", pre_adv), ("post", post_adv)):
        algo.cfg.critics = mode
        assert torch.equal(algo.advantages(pre_adv, post_adv), expected)
    algo.close()


def test_critics_fit_standardised_returns_and_map_back(tmp_path):
    algo = collected(tmp_path)
    returns = algo.rollout.all().returns
    mean, std = algo.return_stats
    torch.testing.assert_close(mean, returns.mean())
    torch.testing.assert_close(std, returns.std(), rtol=1e-5, atol=1e-6)
    obs = torch.as_tensor(algo.rollout.obs[0])
    with torch.no_grad():
        torch.testing.assert_close(algo.value(obs), algo.value_fn(obs).squeeze(-1) * std + mean)
    algo.close()


def test_rollout_records_the_post_decision_state_of_each_step(tmp_path):
    """Row t of `post_obs` is f(s_t, a_t): the next state keeps its setups and has no more stock."""
    algo = collected(tmp_path)
    n = algo.decision_env.instance.n_items
    buf = algo.rollout
    for t in range(buf.n_steps - 1):
        post, nxt = algo.post_obs[t], buf.obs[t + 1]
        live = buf.dones[t] == 0
        np.testing.assert_array_equal(post[live, n:], buf.actions[t][live])
        np.testing.assert_array_equal(nxt[live, n:], post[live, n:])
        assert np.all(nxt[live, :n] <= post[live, :n])
        expected = algo.decision_env.post_decision(buf.obs[t], buf.actions[t].astype(np.int64))
        np.testing.assert_array_equal(post, expected)
    algo.close()


@pytest.mark.parametrize("ratio", ["factor", "joint"])
def test_every_actor_parameter_gets_a_gradient(ratio, tmp_path):
    algo = collected(tmp_path, ratio=ratio)
    data, post_obs, pre_adv, post_adv, old_log_prob = update_inputs(algo)
    # move the policy off θ_old so the clipped surrogate is not at its flat point
    with torch.no_grad():
        for p in algo.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    adv = algo.advantages(pre_adv, post_adv)
    for flat in algo.flats.values():
        flat.zero_grad()
    targets = (data.returns - algo.return_stats[0]) / algo.return_stats[1]
    loss, _ = algo.loss(data.obs, data.actions, post_obs, targets, adv, old_log_prob)
    loss.backward()
    modules = {"actor": algo.policy, "critic": algo.value_fn, "post_critic": algo.post_value_fn}
    for name, module in modules.items():
        for pname, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname} got no gradient"
    algo.close()


def test_factor_ratio_has_one_ratio_per_machine(tmp_path):
    algo = collected(tmp_path)
    data = algo.rollout.all()
    log_prob, entropy = algo.log_prob_entropy(data.obs, data.actions)
    machines = algo.env.action_space.shape[0]
    assert log_prob.shape == entropy.shape == (data.obs.shape[0], machines)
    # the factors add up to the joint log-probability and entropy
    joint_log_prob, joint_entropy = algo.policy.log_prob_entropy(data.obs, data.actions)
    torch.testing.assert_close(log_prob.sum(-1), joint_log_prob)
    torch.testing.assert_close(entropy.sum(-1), joint_entropy)
    algo.close()


def test_each_optimiser_moves_only_its_own_network(tmp_path):
    algo = collected(tmp_path)
    modules = {"actor": algo.policy, "critic": algo.value_fn, "post_critic": algo.post_value_fn}
    for name, opt in algo.optimizers.items():
        before = {k: [p.detach().clone() for p in m.parameters()] for k, m in modules.items()}
        for flat in algo.flats.values():  # every network has a gradient; only one optimiser steps
            flat.zero_grad()
            flat.param.grad.fill_(1.0)
        opt.step()
        for other, module in modules.items():
            changed = [not torch.equal(a, b) for a, b in zip(before[other], module.parameters(),
                                                               strict=True)]
            assert all(changed) if other == name else not any(changed), (name, other)
    algo.close()


def test_needs_an_env_with_a_post_decision_state(tmp_path):
    with pytest.raises(UserError) as err:
        make_algo("pdppo", tmp_path, env="CartPole-v1")
    assert_one_line_error(str(err.value), "post_decision", "CartPole-v1")


def test_unknown_mode_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match=r"critics='both'.*dual, pre, post"):
        make_algo("pdppo", tmp_path, critics="both")


def test_frozen_lake_discrete_policy_uses_the_joint_ratio(tmp_path):
    algo = make_algo("pdppo", tmp_path, env="ctrlrl/FrozenLakePD-v0", total_steps=64,
                     n_steps=32)
    algo.learn()
    assert not algo.factor_ratio and algo.post_dim == algo.obs_dim == 16
    assert {"train/post_value_loss", "train/post_advantage_share"} <= set(read_metrics(tmp_path)[-1])
    algo.close()


def test_post_decision_input_is_normalised_like_observations(tmp_path):
    algo = collected(tmp_path, normalize_obs=True)
    idle = np.zeros((2, *algo.env.action_space.shape), np.int64)
    raw_post = algo.decision_env.post_decision(algo.env.raw_obs, idle)
    assert not np.allclose(algo.env.normalize_obs(raw_post), raw_post)
    np.testing.assert_allclose(algo.post_decision(algo.env.raw_obs, idle),
                               algo.env.normalize_obs(raw_post), rtol=1e-6)
    algo.close()
    # and a loaded run rebuilds its decision step
    loaded = ctrlrl.load(tmp_path)
    assert callable(loaded.decision_env.post_decision)
    loaded.close()
