"""PDPPO (Felizardo et al., IJCNN 2025): the properties that pin the update rule."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, make_algo, read_metrics

import ctrlrl
from ctrlrl.core.errors import UserError
from ctrlrl.envs.frozen_lake import FrozenLakePostDecision

GAMMA = 0.99  # the discount the spied runs use (lot-sizing's preset has its own)
HORIZON = 100  # lot-sizing episodes


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
        post_values = algo.post_value(post_obs)
        post_adv = algo.post_returns(post_values) - post_values
        old_log_prob = algo.log_prob_entropy(data.obs, data.actions)[0]
    return data, post_obs, pre_adv, post_adv, old_log_prob


def spied_run(tmp_path, monkeypatch, n_steps=HORIZON, value_shift=300.0, **extra):
    """A one-rollout PDPPO run on 15×5 lot-sizing (2 envs, one full-batch epoch in rollout order)
    with what `update()` feeds the losses recorded: the post critic's values and R^x as update()
    formed them, every `loss` call's arguments, and the post critic before the update. V starts
    `value_shift` below 0: about the return of the costs r^x leaves out, so that each critic's
    advantage is the larger on some rows."""
    monkeypatch.setattr(torch, "randperm", lambda n, device=None: torch.arange(n, device=device))
    algo = make_algo("pdppo", tmp_path, total_steps=2 * n_steps, n_envs=2, n_steps=n_steps,
                     n_epochs=1, gamma=GAMMA, **extra)
    with torch.no_grad():
        [*algo.value_fn.modules()][-1].bias.sub_(value_shift)
    seen = {"loss": [], "post_value_fn": copy.deepcopy(algo.post_value_fn)}
    post_returns, loss = algo.post_returns, algo.loss

    def spy_post_returns(post_values):
        seen["post_values"] = post_values.clone()
        seen["post_returns"] = post_returns(post_values)
        return seen["post_returns"]

    def spy_loss(*args):
        seen["loss"].append([a.detach().clone() for a in args])
        return loss(*args)

    monkeypatch.setattr(algo, "post_returns", spy_post_returns)
    monkeypatch.setattr(algo, "loss", spy_loss)
    algo.learn()
    assert len(seen["loss"]) == 1  # one full batch: rows in rollout order (t, env)
    return algo, seen


def setup_rewards(algo) -> np.ndarray:
    """r^x_t = −Σ_m setup cost of the machines that switch, by hand from the rollout's (s_t, a_t)."""
    inst = algo.decision_env.instance
    buf = algo.rollout
    setups = buf.obs[..., inst.n_items:].astype(int)
    actions = buf.actions.astype(int)
    out = np.zeros(actions.shape[:2])
    for t, e, m in np.ndindex(actions.shape):
        a = actions[t, e, m]
        if a != 0 and a != setups[t, e, m]:
            out[t, e] -= inst.setup_cost[m, a - 1]
    return out


def discounted(rewards: np.ndarray, dones: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Σ_k γ^(k−t) r_k per env, reset where an episode ends, `last` after the rollout's end."""
    out, following = np.zeros_like(rewards, dtype=np.float64), np.asarray(last, np.float64)
    for t in reversed(range(len(rewards))):
        following = rewards[t] + GAMMA * following * (1 - dones[t])
        out[t] = following
    return out


def as_rows(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(x.reshape(-1), dtype=torch.float32)


def test_post_critic_regresses_the_discounted_decision_rewards(tmp_path, monkeypatch):
    """V^x fits R^x_t = Σ_k γ^(k−t) r^x_k of the setup costs alone; V fits R_t of the whole reward.
    100 steps per env: whole episodes, each ending (terminally) at the horizon."""
    algo, seen = spied_run(tmp_path, monkeypatch)
    buf = algo.rollout
    assert np.all(buf.dones[-1] == 1) and buf.dones.sum() == 2
    r_x = setup_rewards(algo)
    assert (r_x < 0).any() and (r_x == 0).any()
    expected_post = as_rows(discounted(r_x, buf.dones, np.zeros(2)))
    expected_pre = as_rows(discounted(buf.rewards, buf.dones, np.zeros(2)))
    torch.testing.assert_close(seen["post_returns"], expected_post)
    _, _, _, targets, post_targets, _, _ = seen["loss"][0]
    mean, std = algo.post_return_stats
    torch.testing.assert_close(mean, expected_post.mean())
    torch.testing.assert_close(std, expected_post.std(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(post_targets * std + mean, expected_post, rtol=1e-5, atol=1e-3)
    mean, std = algo.return_stats
    torch.testing.assert_close(targets * std + mean, expected_pre, rtol=1e-5, atol=1e-3)
    algo.close()


def test_actor_advantage_is_the_max_of_both_critics_advantages(tmp_path, monkeypatch):
    algo, seen = spied_run(tmp_path, monkeypatch)
    data = algo.rollout.all()
    post_obs = torch.as_tensor(algo.post_obs.reshape(data.obs.shape[0], -1))
    with torch.no_grad():  # V^x as it stood when update() began (identity statistics then)
        post_values = seen["post_value_fn"](post_obs).squeeze(-1)
    torch.testing.assert_close(seen["post_values"], post_values)
    torch.testing.assert_close(data.advantages, data.returns - data.values, atol=1e-3, rtol=0)
    pre_adv, post_adv = data.advantages, seen["post_returns"] - post_values
    assert (post_adv > pre_adv).any() and (pre_adv > post_adv).any()
    adv = seen["loss"][0][5]
    torch.testing.assert_close(adv, torch.maximum(pre_adv, post_adv))
    algo.close()


def test_shared_return_setting_fits_both_critics_to_R(tmp_path, monkeypatch):
    """`post_return: shared`, the earlier form: V^x regresses R_t too, A = max(R − V, R − V^x)."""
    algo, seen = spied_run(tmp_path, monkeypatch, value_shift=0.0, post_return="shared")
    assert "post_returns" not in seen  # no r^x stream is built
    data = algo.rollout.all()
    _, _, post_obs, targets, post_targets, adv, _ = seen["loss"][0]
    assert torch.equal(post_targets, targets)
    torch.testing.assert_close(algo.post_return_stats, algo.return_stats)
    with torch.no_grad():
        post_values = seen["post_value_fn"](post_obs).squeeze(-1)
    pre_adv, post_adv = data.advantages, data.returns - post_values
    assert (post_adv > pre_adv).any() and (pre_adv > post_adv).any()
    torch.testing.assert_close(adv, torch.maximum(pre_adv, post_adv))
    algo.close()


def test_residual_pre_reward_setting_fits_V_to_the_rest_of_the_reward(tmp_path, monkeypatch):
    """`pre_reward: residual` (the authors' training loop): R_t sums r − r^x; R^x is unchanged.
    The same seed plays the same rollout as the default, whose buffer holds the env's r."""
    total, _ = spied_run(tmp_path / "total", monkeypatch)
    algo, seen = spied_run(tmp_path / "residual", monkeypatch, pre_reward="residual")
    buf = algo.rollout
    np.testing.assert_array_equal(buf.actions, total.rollout.actions)
    r_x = setup_rewards(algo)
    rest = total.rollout.rewards - r_x
    np.testing.assert_allclose(buf.rewards, rest, rtol=1e-6)
    mean, std = algo.return_stats
    torch.testing.assert_close(seen["loss"][0][3] * std + mean,
                               as_rows(discounted(rest, buf.dones, np.zeros(2))),
                               rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(seen["post_returns"], as_rows(discounted(r_x, buf.dones, np.zeros(2))))
    total.close()
    algo.close()


def test_post_return_bootstraps_a_truncated_horizon_from_the_next_decision(tmp_path, monkeypatch):
    """Where the env truncates, R^x_t = r^x_t + γ·V^x(f(s', a')) with s' the true final state."""
    calls = []

    def fixed_post_value(self, obs, raw_obs):
        calls.append((obs.copy(), raw_obs.copy()))
        return np.full(len(obs), 7.0, np.float32)

    monkeypatch.setattr(ctrlrl.algos.pdppo.PDPPO, "next_post_value", fixed_post_value)
    algo, seen = spied_run(tmp_path, monkeypatch, env="ctrlrl/LotSizingCappedTruncated-15x5-v0")
    buf = algo.rollout
    n = algo.decision_env.instance.n_items
    assert len(calls) == 1  # the horizon's truncation; the rollout's end cuts nothing
    _, raw_final = calls[0]
    np.testing.assert_array_equal(raw_final[:, n:], buf.actions[-1])  # s' keeps the last setups
    assert not np.array_equal(raw_final, buf.obs[0])  # not the reset state
    boot = np.zeros_like(buf.rewards)
    boot[-1] = GAMMA * 7.0
    np.testing.assert_allclose(algo.post_bootstrap, boot)
    expected = discounted(setup_rewards(algo) + boot, buf.dones, np.zeros(2))
    torch.testing.assert_close(seen["post_returns"], as_rows(expected))
    algo.close()


def test_post_return_bootstraps_where_the_rollout_ends(tmp_path, monkeypatch):
    calls = []

    def fixed_post_value(self, obs, raw_obs):
        calls.append(obs.copy())
        return np.array([3.0, -5.0], np.float32)

    monkeypatch.setattr(ctrlrl.algos.pdppo.PDPPO, "next_post_value", fixed_post_value)
    algo, seen = spied_run(tmp_path, monkeypatch, n_steps=32)
    buf = algo.rollout
    assert len(calls) == 1 and not buf.dones.any()
    np.testing.assert_array_equal(calls[0], algo.env.obs)  # the state the next rollout starts at
    expected = discounted(setup_rewards(algo), buf.dones, np.array([3.0, -5.0]))
    torch.testing.assert_close(seen["post_returns"], as_rows(expected))
    algo.close()


def test_next_post_value_is_the_post_critic_at_the_next_decision(tmp_path):
    algo = collected(tmp_path)
    obs, raw = algo.env.obs, algo.env.raw_obs
    torch.manual_seed(5)
    got = algo.next_post_value(obs, raw)
    torch.manual_seed(5)
    with torch.no_grad():
        action = algo.policy.sample(torch.as_tensor(obs))[0].numpy()
        post = algo.post_decision(raw, action)
        expected = algo.post_value(torch.as_tensor(post)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    algo.close()


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
        # demand is served from s^x; floored at 0 and capped only afterwards
        assert np.all(nxt[live, :n] <= np.maximum(post[live, :n], 0))
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
    loss, _ = algo.loss(data.obs, data.actions, post_obs, targets, targets.flip(0), adv,
                        old_log_prob)
    loss.backward()
    modules = {"actor": algo.policy, "critic": algo.value_fn, "post_critic": algo.post_value_fn}
    for name, module in modules.items():
        for pname, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname} got no gradient"
    algo.close()


def test_loss_terms_against_hand_computation(tmp_path):
    """Clipped surrogate on the batch-standardised advantage, −ent_coef·entropy, V's squared error
    to `targets` and V^x's to `post_targets`, each with weight 1."""
    algo = collected(tmp_path, ent_coef=0.05)
    data, post_obs, _, _, old_log_prob = update_inputs(algo)
    with torch.no_grad():
        for p in algo.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    gen = torch.Generator().manual_seed(0)
    n = data.obs.shape[0]
    adv, targets, post_targets = (torch.randn(n, generator=gen) * 3 + 1 for _ in range(3))
    with torch.no_grad():
        loss, stats = algo.loss(data.obs, data.actions, post_obs, targets, post_targets, adv,
                                old_log_prob)
        log_prob, entropy = algo.log_prob_entropy(data.obs, data.actions)
        ratio = (log_prob - old_log_prob).exp()
        a = ((adv - adv.mean()) / adv.std())[:, None]
        pg = -torch.minimum(a * ratio, a * ratio.clamp(0.8, 1.2)).mean()
        v = ((algo.value_fn(data.obs).squeeze(-1) - targets) ** 2).mean()
        vx = ((algo.post_value_fn(post_obs).squeeze(-1) - post_targets) ** 2).mean()
    assert (ratio - 1).abs().max() > 0.2  # some ratios are clipped
    torch.testing.assert_close(loss, pg - 0.05 * entropy.mean() + v + vx, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats[:4], torch.stack([pg, v, vx, -entropy.mean()]),
                               rtol=1e-5, atol=1e-5)
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
    with pytest.raises(UserError, match=r"post_return='mine'.*own, shared"):
        make_algo("pdppo", tmp_path, post_return="mine")
    with pytest.raises(UserError, match=r"pre_reward='net'.*total, residual"):
        make_algo("pdppo", tmp_path, pre_reward="net")


def test_own_post_return_needs_the_decision_reward_and_raw_rewards(tmp_path, monkeypatch):
    with pytest.raises(UserError) as err:
        make_algo("pdppo", tmp_path, normalize_reward=True)
    assert_one_line_error(str(err.value), "normalize_reward", "post_return=shared")
    monkeypatch.delattr(FrozenLakePostDecision, "post_decision_reward")
    with pytest.raises(UserError) as err:
        make_algo("pdppo", tmp_path, env="ctrlrl/FrozenLakePD-v0")
    assert_one_line_error(str(err.value), "post_decision_reward", "post_return=shared")
    make_algo("pdppo", tmp_path, env="ctrlrl/FrozenLakePD-v0", post_return="shared").close()


def test_frozen_lake_discrete_policy_uses_the_joint_ratio(tmp_path):
    algo = make_algo("pdppo", tmp_path, env="ctrlrl/FrozenLakePD-v0", total_steps=64,
                     n_steps=32)
    algo.learn()
    assert not algo.factor_ratio and algo.post_dim == algo.obs_dim == 16
    assert not algo.post_rewards.any()  # the intended move earns nothing: R^x is V^x's bootstraps
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


@pytest.mark.parametrize("env, n_steps, n_epochs, total_steps, activation", [
    ("ctrlrl/LotSizing-20x10-v0", 400, 40, 1_000_000, "relu"),
    ("ctrlrl/LotSizingCappedTruncated-25x15-v0", 400, 40, 1_000_000, "relu"),
    ("ctrlrl/FrozenLakePD-v0", 500, 50, 200_000, "tanh"),
    ("ctrlrl/ProximityLakePD-v0", 500, 50, 200_000, "tanh")])
def test_presets_use_the_authors_latest_schedule(env, n_steps, n_epochs, total_steps, activation):
    """PDPPO and its PPO baseline on the paper's two tasks: γ 0.9 and a full-batch update of the
    authors' latest agents (lot-sizing: 40 epochs every 400 steps; lake: 50 every 500), their
    actors' hidden activation (lot-sizing ReLU, lake tanh), PPO with PDPPO's step size, entropy
    weight and clipping, and value loss weight 0.7; the class's own defaults keep the earlier
    schedule."""
    from ctrlrl import api
    from ctrlrl.algos.pdppo import PDPPOConfig

    _, run, pd = api.resolve("pdppo", env)
    assert (pd.gamma, pd.n_steps, pd.n_epochs, pd.batch_size) == (0.9, n_steps, n_epochs, 0)
    assert pd.actor_activation == activation and run.total_steps == total_steps
    _, run, ppo = api.resolve("ppo", env)
    assert (ppo.gamma, ppo.n_steps, ppo.n_epochs, ppo.batch_size) == (0.9, n_steps, n_epochs, n_steps)
    shared = (pd.actor_lr, pd.ent_coef, pd.max_grad_norm)
    assert (ppo.learning_rate, ppo.ent_coef, ppo.max_grad_norm) == shared
    assert (ppo.vf_coef, ppo.gae_lambda, ppo.ratio, ppo.ortho_init) == (0.7, 1.0, "factor", False)
    assert ppo.activation == activation
    assert run.total_steps == total_steps
    plain = PDPPOConfig()
    assert (plain.gamma, plain.n_steps, plain.n_epochs) == (0.99, 4000, 60)
