"""O-DICE (ALGORITHMS.md §4): the f* conjugates, the three value rules, the orthogonal projection,
the policy weights, reward scaling, the imitation variant, and a bandit it must solve."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import OFFLINE_DATA, QUIET, assert_same_state, make_algo, read_metrics

import ctrlrl
from ctrlrl.algos.odice import episode_bounds, extraction_weight, f_star, project_out
from ctrlrl.core.errors import UserError
from ctrlrl.data import load, read_d4rl, write_d4rl

BANDIT = "ctrlrl/Bandit-v0"


def write_bandit(path, obs, actions, rewards, terminals):
    """A D4RL file for the one-step bandit (obs width 1, action width 1), s' = s."""
    n = len(rewards)
    write_d4rl(path, {"observations": obs.reshape(n, 1).astype(np.float32),
                      "actions": actions.reshape(n, 1).astype(np.float32),
                      "rewards": rewards.astype(np.float32), "terminals": terminals.astype(bool),
                      "timeouts": np.zeros(n, bool),
                      "next_observations": obs.reshape(n, 1).astype(np.float32)})
    return str(path)


def bandit_algo(tmp_path, dataset, **overrides):
    config = {**QUIET, "dataset": dataset, "hidden_sizes": [32, 32], "policy_hidden_sizes": [32, 32],
              "batch_size": 64, "log_every": 100, "scale_rewards": False, **overrides}
    return ctrlrl.make("odice", BANDIT, overrides=config, seed=0, total_steps=600,
                       run_dir=str(tmp_path / "run"))


# ---- 6. the conjugates -------------------------------------------------------------------------
def test_f_star_matches_the_closed_forms():
    y = torch.linspace(-6.0, 6.0, 1201, dtype=torch.float64, requires_grad=True)
    chi2 = f_star(y, "chi2")
    expected = torch.where(y >= -2, y + y ** 2 / 4, torch.full_like(y, -1.0))
    torch.testing.assert_close(chi2, expected, rtol=0, atol=1e-12)
    # the reference writes it through the optimal ratio ω = max(0, y/2 + 1): y·ω − (ω − 1)²
    omega = torch.clamp(y / 2 + 1, min=0)
    torch.testing.assert_close(chi2, y * omega - (omega - 1) ** 2, rtol=0, atol=1e-12)
    # continuous, with a continuous derivative, at −2; f*' = max(0, 1 + y/2) is the χ² ratio
    eps = torch.tensor([-2 - 1e-9, -2.0, -2 + 1e-9], dtype=torch.float64)
    assert torch.allclose(f_star(eps, "chi2"), torch.full((3,), -1.0, dtype=torch.float64), atol=1e-8)
    (grad,) = torch.autograd.grad(chi2.sum(), y)
    torch.testing.assert_close(grad, torch.clamp(1 + y.detach() / 2, min=0), rtol=0, atol=1e-12)
    torch.testing.assert_close(f_star(y, "kl"), torch.exp(y - 1), rtol=0, atol=0)
    assert f_star(torch.tensor([-3.0]), "chi2").item() == -1.0  # not y + y²/4 = −0.75


# ---- 1. ⟨g_b⊥, g_f⟩ = 0 on a real batch ---------------------------------------------------------------
def test_backward_gradient_is_projected_off_the_forward_one(tmp_path):
    algo = make_algo("odice", tmp_path, total_steps=30).learn()
    b = algo.replay.sample(256)
    grad = algo.value_gradient(b)
    applied = algo.v_flat.param.grad.clone()
    g_f, g_b, g_perp = grad.g_f, grad.g_b, grad.g_b_perp
    scale = float(g_f.norm() * g_b.norm())
    assert scale > 0
    assert abs(float(g_f.dot(g_b))) > 1e-2 * scale  # the raw gradients are not orthogonal ...
    assert abs(float(g_f.dot(g_perp))) < 1e-5 * scale  # ... the projected one is
    torch.testing.assert_close(g_perp, project_out(g_b, g_f))
    # applied gradient = ∇(1−λ)·mean V + g_f (the semi rule's gradient on this batch) + g_b⊥
    algo.cfg = dataclasses.replace(algo.cfg, rule="semi")
    semi = algo.value_gradient(b)
    assert semi.g_f is None
    torch.testing.assert_close(applied, algo.v_flat.param.grad + g_perp)
    assert -1.0 <= float(algo.metrics["grad_cosine"]) <= 1.0  # logged by the last training step
    algo.close()


# ---- 2. g_b = c·g_f: the applied gradient is the forward one ----------------------------------------
def test_parallel_backward_gradient_adds_nothing(tmp_path):
    """s' = s, one V head and V̄ = V (the first step): then r + γV̄(s') − V(s) = r + γV(s') − V̄(s),
    so g_b = −γη·g_f exactly, and its projection off g_f vanishes."""
    rng = np.random.default_rng(0)
    n = 512
    path = write_bandit(tmp_path / "loop.hdf5", rng.uniform(0, 1, n), rng.uniform(-1, 1, n),
                        rng.normal(0, 1, n), np.zeros(n))
    grads = {}
    for rule in ("orthogonal", "semi", "true"):
        algo = bandit_algo(tmp_path / rule, path, twin_v=False, rule=rule)
        algo.load_dataset()
        torch.manual_seed(1)
        grads[rule] = algo.value_gradient(algo.replay.sample(256))
        grads[rule + "_applied"] = algo.v_flat.param.grad.clone()
        algo.close()
    g = grads["orthogonal"]
    assert float(F.cosine_similarity(g.g_f, g.g_b, dim=0)) == pytest.approx(-1.0, abs=1e-5)
    torch.testing.assert_close(g.g_b, -0.99 * g.g_f, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(grads["orthogonal_applied"], grads["semi_applied"], rtol=1e-5, atol=1e-7)
    # the guard: the true gradient adds g_b unprojected, and so differs
    assert not torch.allclose(grads["true_applied"], grads["semi_applied"], rtol=1e-3, atol=1e-5)


# ---- 3. η = 0: orthogonal = semi, bit for bit ---------------------------------------------------------
def test_orthogonal_with_eta_zero_is_the_semi_gradient_rule(tmp_path):
    runs = {}
    settings = (("orth0", "orthogonal", 0.0), ("semi", "semi", 0.0), ("orth1", "orthogonal", 1.0))
    for name, rule, eta in settings:
        runs[name] = make_algo("odice", tmp_path / name, seed=3, total_steps=40, rule=rule,
                               eta=eta).learn()
    assert_same_state(runs["orth0"], runs["semi"])
    with pytest.raises(AssertionError):  # the guard: with η = 1 the backward gradient matters
        assert_same_state(runs["orth1"], runs["semi"])
    for algo in runs.values():
        algo.close()


# ---- 4. weights in [0, 100] ---------------------------------------------------------------------------
def test_policy_weights_are_clamped_to_0_and_100(tmp_path):
    r = torch.tensor([-1000.0, -3.0, -2.0, -0.5, 0.0, 0.5, 3.0, 99.0, 150.0, 1e6])
    torch.testing.assert_close(extraction_weight(r, "relu", "chi2", 100.0),
                               torch.tensor([0, 0, 0, 0, 0, 0.5, 3.0, 99.0, 100.0, 100.0]))
    torch.testing.assert_close(extraction_weight(r, "ratio", "chi2", 100.0),
                               torch.tensor([0, 0, 0, 0.75, 1.0, 1.25, 2.5, 50.5, 76.0, 100.0]))
    torch.testing.assert_close(extraction_weight(r, "ratio", "kl", 100.0),
                               torch.exp(r - 1).clamp(max=100.0))
    # constructed: one-step rewards of ±500 push both heads' residuals past both bounds
    n = 256
    rewards = np.where(np.arange(n) % 2 == 0, -500.0, 500.0)
    path = write_bandit(tmp_path / "pm.hdf5", np.ones(n), np.zeros(n), rewards, np.ones(n))
    algo = bandit_algo(tmp_path / "c", path)
    algo.load_dataset()
    w = algo.weights(algo.replay.sample(256))
    assert float(w.min()) == 0.0 and float(w.max()) == 100.0
    assert set(torch.unique(w).tolist()) == {0.0, 100.0}
    algo.close()
    # and on real data the logged weights stay within the bounds
    real = make_algo("odice", tmp_path / "real", total_steps=50).learn()
    w = real.weights(real.replay.sample(512))
    assert float(w.min()) >= 0.0 and float(w.max()) <= 100.0
    row = read_metrics(tmp_path / "real")[-1]
    assert 0.0 <= row["train/weight_mean"] <= 100.0 and 0.0 <= row["train/weight_zero_frac"] <= 1.0
    for key in ("value_loss", "policy_loss", "v_mean", "grad_cosine"):
        assert f"train/{key}" in row
    real.close()


# ---- 5. the bandit ------------------------------------------------------------------------------------
def test_bandit_policy_picks_the_better_action(tmp_path):
    """Half the data plays −0.5 (reward 10), half +0.5 (reward 11); behaviour cloning gives ≈ 0.

    Rewards are left unscaled and λ = 0.5: with χ² the optimal V solves E[max(0, 1 + δ/2)] =
    (1−λ)/λ, so V = E[r] + 2(2λ−1)/λ = 10.5 sits between the rewards and relu(δ) weights only the
    better action. (At λ = 0.6 V = 11.17 lies above both rewards and every relu weight is 0: the
    paper's λ goes with its rewards scaled to a return range of 1000.)"""
    n = 512
    actions = np.where(np.arange(n) % 2 == 0, -0.5, 0.5)
    rewards = np.where(actions > 0, 11.0, 10.0)
    path = write_bandit(tmp_path / "bandit.hdf5", np.ones(n), actions, rewards, np.ones(n))
    algo = bandit_algo(tmp_path, path, lam=0.5, learning_rate=1e-3).learn()
    action = float(algo.predict(np.ones(1, np.float32))[0])
    assert action == pytest.approx(0.5, abs=0.05), action
    assert float(algo.metrics["v_mean"]) == pytest.approx(10.5, abs=0.2)
    algo.close()


# ---- reward scaling and the imitation variant -------------------------------------------------------------
def test_rewards_are_scaled_by_the_return_range(tmp_path):
    algo = make_algo("odice", tmp_path / "run")
    algo.load_dataset()
    data = load(str(OFFLINE_DATA), "Hopper-v5")
    scale = 1000.0 / (data.episode_returns.max() - data.episode_returns.min())
    rewards = algo.replay.storage[:, algo.obs_dim + algo.act_dim].numpy()
    np.testing.assert_allclose(rewards, data.rewards * scale, rtol=1e-5)
    assert algo.metrics["reward_scale"] == pytest.approx(scale)
    algo.close()
    n = 64  # every episode returns 10: no range to scale by
    path = write_bandit(tmp_path / "flat.hdf5", np.ones(n), np.zeros(n), np.full(n, 10.0), np.ones(n))
    flat = bandit_algo(tmp_path / "flat", path, scale_rewards=True)
    with pytest.raises(UserError, match="scale_rewards=false"):
        flat.load_dataset()
    flat.close()


def test_episode_bounds_split_at_terminals_and_time_limits(tmp_path):
    # episodes of 3 (time limit), 2 (terminal), 2 (unfinished): obs count up, so s' of a row is
    # the next row's s except where a time limit or termination ends the episode
    obs = np.array([0, 1, 2, 10, 11, 20, 21], np.float32)
    next_obs = np.array([1, 2, 3, 11, 12, 21, 22], np.float32)
    terminals = np.array([0, 0, 0, 0, 1, 0, 0], bool)
    timeouts = np.array([0, 0, 1, 0, 0, 0, 0], bool)
    common = {"actions": np.zeros((7, 1), np.float32), "rewards": np.zeros(7, np.float32),
              "terminals": terminals, "timeouts": timeouts}
    write_d4rl(tmp_path / "a.hdf5", {**common, "observations": obs[:, None],
                                      "next_observations": next_obs[:, None]})
    assert episode_bounds(load(str(tmp_path / "a.hdf5"))) == [(0, 3), (3, 5), (5, 7)]
    # without next_observations (D4RL's qlearning layout) the timed-out row is dropped
    write_d4rl(tmp_path / "b.hdf5", {**common, "observations": obs[:, None]})
    assert episode_bounds(load(str(tmp_path / "b.hdf5"))) == [(0, 2), (2, 4), (4, 5)]


def test_imitation_variant_learns_from_one_trajectory_without_rewards(tmp_path):
    raw = read_d4rl(OFFLINE_DATA)
    ends = np.flatnonzero(raw["terminals"] | raw["timeouts"])
    start, end = ends[1] + 1, ends[2] + 1  # the episode with index 2
    config = {**QUIET, "dataset": str(OFFLINE_DATA), "hidden_sizes": [32, 32],
              "policy_hidden_sizes": [32, 32], "batch_size": 32, "log_every": 20,
              "expert_trajectory": 2}
    algo = ctrlrl.make("odice-il", "Hopper-v5", overrides=config, seed=0, total_steps=40,
                       run_dir=str(tmp_path / "run"))
    assert (algo.cfg.lam, algo.cfg.learning_rate, algo.cfg.tanh_mean) == (0.4, 1e-4, True)
    algo.learn()
    rows = algo.replay.storage.numpy()
    o, a = algo.obs_dim, algo.act_dim
    assert len(rows) == end - start
    assert not rows[:, o + a].any()  # rewards unused
    expert = raw["observations"][start:end].astype(np.float64)
    mean, std = expert.mean(0), expert.std(0) + 1e-3  # states normalised with the trajectory's stats
    np.testing.assert_allclose(rows[:, :o], (expert - mean) / std, rtol=1e-4, atol=1e-4)
    assert np.all(np.abs(algo.predict(raw["observations"][:8])) <= 1.0)
    algo.close()
    with pytest.raises(UserError, match="expert_trajectory=99999"):
        ctrlrl.make("odice-il", "Hopper-v5", overrides={**config, "expert_trajectory": 99999},
                    seed=0, total_steps=1, run_dir=str(tmp_path / "bad")).load_dataset()


def test_bad_settings_are_named():
    for key, value in (("rule", "sideways"), ("f", "js"), ("weight", "exp"), ("lam", 1.5)):
        with pytest.raises(UserError, match=key):
            ctrlrl.make("odice", "Hopper-v5", overrides={**QUIET, "dataset": str(OFFLINE_DATA),
                                                         key: value})
