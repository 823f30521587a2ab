"""O-DICE (Mao et al., ICLR 2024): the f* conjugates, the three value rules, the orthogonal projection,
η's scaling, what `update()` feeds the value loss and applies to V's gradient, the policy's weights
and loss, the target EMA, reward scaling, the imitation variant, and a bandit it must solve."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import OFFLINE_DATA, QUIET, assert_same_state, make_algo, read_metrics

import ctrlrl
from ctrlrl.algos import odice as odice_module
from ctrlrl.algos.odice import (
    ODICEConfig,
    ODICEILConfig,
    extraction_weight,
    f_star,
    project_out,
)
from ctrlrl.core.errors import UserError
from ctrlrl.data import episode_bounds, load, read_d4rl, write_d4rl

BANDIT = "ctrlrl/Bandit-v0"


def write_bandit(path, obs, actions, rewards, terminals):
    """A D4RL file for the one-step bandit (obs width 1, action width 1), s' = s (read back with
    keep_timeouts, which takes each row's stored next observation)."""
    n = len(rewards)
    write_d4rl(path, {"observations": obs.reshape(n, 1).astype(np.float32),
                      "actions": actions.reshape(n, 1).astype(np.float32),
                      "rewards": rewards.astype(np.float32), "terminals": terminals.astype(bool),
                      "timeouts": np.zeros(n, bool),
                      "next_observations": obs.reshape(n, 1).astype(np.float32)})
    return str(path)


def bandit_algo(tmp_path, dataset, **overrides):
    config = {**QUIET, "dataset": dataset, "hidden_sizes": [32, 32], "policy_hidden_sizes": [32, 32],
              "batch_size": 64, "log_every": 100, "scale_rewards": False, "keep_timeouts": True,
              **overrides}
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


def assert_vectors_close(got: torch.Tensor, want: torch.Tensor, rel: float = 1e-5) -> None:
    """‖got − want‖ ≤ rel·‖want‖: float32 gradients after a projection, whose single components
    can lose their relative precision to cancellation."""
    err, scale = float((got - want).norm()), float(want.norm())
    assert err <= rel * scale, f"|got - want| = {err:.3g}, |want| = {scale:.3g}"


# ---- η's scaling and the true rule's gradient ------------------------------------------------------
def test_eta_scales_the_backward_gradient_linearly(tmp_path):
    """g_b(η) = η·g_b(1), so the applied gradient is the semi-gradient one + η·g_b⊥(1)."""
    algo = make_algo("odice", tmp_path, total_steps=30).learn()
    b = algo.replay.sample(256)
    runs = {}
    for eta in (1.0, 0.5, 2.5):
        algo.cfg = dataclasses.replace(algo.cfg, eta=eta)
        runs[eta] = (algo.value_gradient(b), algo.v_flat.param.grad.clone())
    algo.cfg = dataclasses.replace(algo.cfg, rule="semi")
    algo.value_gradient(b)
    semi = algo.v_flat.param.grad.clone()
    unit, _ = runs[1.0]
    assert float(unit.g_b_perp.norm()) > 1e-3 * float(semi.norm())  # the term is not negligible
    for eta in (0.5, 2.5):
        grad, applied = runs[eta]
        torch.testing.assert_close(grad.g_f, unit.g_f)
        torch.testing.assert_close(grad.g_b, eta * unit.g_b)
        assert_vectors_close(grad.g_b_perp, eta * unit.g_b_perp)
        assert_vectors_close(applied, semi + eta * unit.g_b_perp)
    algo.close()


def f_star_chi2(y: torch.Tensor) -> torch.Tensor:
    """Pearson χ²'s conjugate through the optimal ratio ω = max(0, 1 + y/2): y·ω − (ω − 1)²."""
    omega = torch.clamp(1 + y / 2, min=0)
    return y * omega - (omega - 1) ** 2


def flat_grad(loss: torch.Tensor, module: torch.nn.Module) -> torch.Tensor:
    grads = torch.autograd.grad(loss, list(module.parameters()), allow_unused=True)
    return torch.cat([torch.zeros_like(p).reshape(-1) if g is None else g.reshape(-1)
                      for g, p in zip(grads, module.parameters(), strict=True)])


def test_true_rule_is_the_gradient_of_the_full_objective(tmp_path):
    """rule=true: ∇ of (1−λ)·mean V(s) + λ·mean f*(r + γ(1−d)·V(s') − V(s)), both V's live."""
    algo = make_algo("odice", tmp_path, total_steps=30, rule="true").learn()
    b = algo.replay.sample(256)
    algo.value_gradient(b)
    got = algo.v_flat.param.grad.clone()
    lam, keep = algo.cfg.lam, algo.cfg.gamma * (1 - b.terminated)
    v, v_next = algo.vf(b.obs), algo.vf(b.next_obs)
    objective = (1 - lam) * v.mean() + lam * f_star_chi2(b.rewards + keep * v_next - v).mean()
    torch.testing.assert_close(got, flat_grad(objective, algo.vf))
    # guard: holding V(s') fixed (the semi-gradient) gives another gradient here
    v = algo.vf(b.obs)
    semi = (1 - lam) * v.mean() + lam * f_star_chi2(b.rewards + keep * v_next.detach() - v).mean()
    assert not torch.allclose(got, flat_grad(semi, algo.vf), rtol=1e-3, atol=1e-6)
    algo.close()


# ---- what update() feeds the value loss, the projection it applies, the policy's weights ---------------
@pytest.fixture
def drifted(tmp_path):
    """O-DICE after 30 steps with η = 0.7, a clamp that binds (max_weight 2), and a target V moved
    away from V so that every use of V̄ against V is visible."""
    algo = make_algo("odice", tmp_path, total_steps=30, eta=0.7, max_weight=2.0).learn()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in algo.vf_target.parameters():
            p.add_(0.1 * torch.randn_like(p))
    yield algo
    algo.close()


def spy_update(algo, monkeypatch) -> dict:
    """Run one `update()`, recording its batch, f*'s inputs, the gradient the value optimiser
    steps with, and what the policy loss is given; returns them with V and V̄ before the step."""
    rec: dict = {"f_star": [], "vf": copy.deepcopy(algo.vf), "vf_target": copy.deepcopy(algo.vf_target)}
    sample, step, f, policy_loss = algo.replay.sample, algo.v_opt.step, odice_module.f_star, algo.policy_loss

    def spy_sample(n):
        rec["batch"] = sample(n)
        return rec["batch"]

    def spy_step(*args, **kwargs):
        rec["grad"] = algo.v_flat.param.grad.clone()
        return step(*args, **kwargs)

    def spy_f(y, name):
        rec["f_star"].append(y.detach().clone())
        return f(y, name)

    def spy_policy_loss(obs, actions, w):
        rec["policy_inputs"] = (obs, actions, w)
        return policy_loss(obs, actions, w)

    monkeypatch.setattr(algo.replay, "sample", spy_sample)
    monkeypatch.setattr(algo.v_opt, "step", spy_step)
    monkeypatch.setattr(odice_module, "f_star", spy_f)
    monkeypatch.setattr(algo, "policy_loss", spy_policy_loss)
    algo.update(algo.replay.sample(algo.cfg.batch_size))
    return rec


def test_update_feeds_the_value_loss_its_residuals(drifted, monkeypatch):
    """Forward residual r + γ(1−d)·min V̄(s') − V_i(s), backward r + γ(1−d)·V_i(s') − min V̄(s)."""
    algo = drifted
    rec = spy_update(algo, monkeypatch)
    b, vf, vf_target = rec["batch"], rec["vf"], rec["vf_target"]
    keep = algo.cfg.gamma * (1 - b.terminated)
    with torch.no_grad():
        forward = b.rewards + keep * vf_target(b.next_obs).min(0).values - vf(b.obs)
        backward = b.rewards + keep * vf(b.next_obs) - vf_target(b.obs).min(0).values
    assert len(rec["f_star"]) == 2
    torch.testing.assert_close(rec["f_star"][0], forward)
    torch.testing.assert_close(rec["f_star"][1], backward)
    # guard: the online and target nets differ, per head and at s and s'
    assert not torch.allclose(forward, b.rewards + keep * vf(b.next_obs) - vf(b.obs), atol=1e-3)
    assert not torch.allclose(backward, b.rewards + keep * vf(b.next_obs) - vf(b.obs), atol=1e-3)


def test_update_applies_the_orthogonal_gradient_and_moves_the_target(drifted, monkeypatch):
    """The gradient V's optimiser steps with is ∇(1−λ)·mean V(s) + g_f + g_b − (⟨g_f, g_b⟩/‖g_f‖²)·g_f,
    each part recomputed here by autograd; then V̄ ← V̄ + τ·(V − V̄)."""
    algo = drifted
    rec = spy_update(algo, monkeypatch)
    b, vf, vf_target = rec["batch"], rec["vf"], rec["vf_target"]
    lam, eta, keep = algo.cfg.lam, algo.cfg.eta, algo.cfg.gamma * (1 - b.terminated)
    with torch.no_grad():
        target_next, target_now = vf_target(b.next_obs).min(0).values, vf_target(b.obs).min(0).values
    g_v = flat_grad((1 - lam) * vf(b.obs).mean(), vf)
    g_f = flat_grad(lam * f_star_chi2(b.rewards + keep * target_next - vf(b.obs)).mean(), vf)
    g_b = flat_grad(lam * eta * f_star_chi2(b.rewards + keep * vf(b.next_obs) - target_now).mean(), vf)
    expected = g_v + g_f + g_b - (torch.dot(g_f, g_b) / torch.dot(g_f, g_f)) * g_f
    assert_vectors_close(rec["grad"], expected)
    # guards: the projection changes the gradient here, and g_f is not g_b's only part
    assert not torch.allclose(expected, g_v + g_f + g_b, rtol=1e-3, atol=1e-6)
    assert not torch.allclose(expected, g_v + g_f, rtol=1e-3, atol=1e-6)
    tau = algo.cfg.tau
    for new_t, old_t, p in zip(algo.vf_target.parameters(), vf_target.parameters(),
                               algo.vf.parameters(), strict=True):
        torch.testing.assert_close(new_t, old_t + tau * (p - old_t))


def test_update_weights_the_policy_by_the_forward_residual(drifted, monkeypatch):
    """w = mean over V's heads of clamp(relu(r + γ(1−d)·min V̄(s') − V_i(s)), max), from V and V̄
    before this step's value update; the policy clones the batch's own (s, a)."""
    algo = drifted
    rec = spy_update(algo, monkeypatch)
    b, vf, vf_target = rec["batch"], rec["vf"], rec["vf_target"]
    obs, actions, w = rec["policy_inputs"]
    assert obs is b.obs and actions is b.actions
    with torch.no_grad():
        forward = (b.rewards + algo.cfg.gamma * (1 - b.terminated) * vf_target(b.next_obs).min(0).values
                   - vf(b.obs))
    torch.testing.assert_close(w, forward.clamp(min=0, max=2.0).mean(0))
    # guards: both bounds bind on this batch, and the two heads weigh differently
    assert (forward < 0).any() and (forward > 2.0).any()
    assert not torch.allclose(forward[0].clamp(0, 2.0), forward[1].clamp(0, 2.0))


def test_policy_loss_is_weighted_gaussian_log_likelihood(tmp_path):
    """−mean[w · log N(a; μ(s), σ²)], σ = exp(log σ clamped to [−5, 2]); the policy's optimiser
    carries Adam's coupled weight decay, V's none."""
    algo = make_algo("odice", tmp_path / "run")
    algo.load_dataset()
    b = algo.replay.sample(64)
    w = torch.rand(64) * 3
    with torch.no_grad():
        algo.policy.log_std.copy_(torch.tensor([3.0, -7.0, 0.5]))  # outside both bounds, inside
    mean = algo.policy.net(b.obs)
    std = torch.exp(torch.tensor([2.0, -5.0, 0.5]))
    log_prob = torch.distributions.Normal(mean, std).log_prob(b.actions).sum(-1)
    torch.testing.assert_close(algo.policy_loss(b.obs, b.actions, w), -(w * log_prob).mean())
    assert algo.pi_opt.param_groups[0]["weight_decay"] == algo.cfg.weight_decay == 1e-4
    assert algo.v_opt.param_groups[0]["weight_decay"] == 0
    algo.close()


def test_defaults_are_the_reference_codes():
    """configs/offline_RL.yaml and main_odice_rl.py's λ 0.6, η 1.0; offline_IL.yaml and
    main_odice_il.py's λ 0.4, η 1.0 for the imitation variant."""
    cfg = ODICEConfig()
    assert (cfg.lam, cfg.eta, cfg.rule, cfg.f, cfg.weight) == (0.6, 1.0, "orthogonal", "chi2", "relu")
    assert (cfg.learning_rate, cfg.weight_decay, cfg.batch_size, cfg.gamma, cfg.tau) == (
        2e-4, 1e-4, 256, 0.99, 0.005)
    assert (cfg.max_weight, cfg.scale_rewards, cfg.normalize_states) == (100.0, True, False)
    assert (cfg.twin_v, cfg.layer_norm, cfg.tanh_mean) == (True, True, False)
    assert (cfg.hidden_sizes, cfg.policy_hidden_sizes) == ((256, 256), (1024, 1024))
    il = ODICEILConfig()
    assert (il.lam, il.eta, il.learning_rate, il.weight_decay) == (0.4, 1.0, 1e-4, 1e-5)
    assert (il.normalize_states, il.layer_norm, il.tanh_mean, il.twin_v) == (True, False, True, True)


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
    assert algo.reward_scale == pytest.approx(scale)
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
    assert episode_bounds(load(str(tmp_path / "a.hdf5"), keep_timeouts=True)) == [
        (0, 3), (3, 5), (5, 7)]
    # D4RL's qlearning rows (the default, and every file without next_observations) drop the
    # timed-out row and the last one
    assert episode_bounds(load(str(tmp_path / "a.hdf5"))) == [(0, 2), (2, 4), (4, 5)]
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
    obs = torch.as_tensor(rows[:8, :o])
    torch.testing.assert_close(algo.policy_mean(obs), torch.tanh(algo.policy.net(obs)))  # tanh mean
    algo.close()
    with pytest.raises(UserError, match="expert_trajectory=99999"):
        ctrlrl.make("odice-il", "Hopper-v5", overrides={**config, "expert_trajectory": 99999},
                    seed=0, total_steps=1, run_dir=str(tmp_path / "bad")).load_dataset()


def test_bad_settings_are_named():
    for key, value in (("rule", "sideways"), ("f", "js"), ("weight", "exp"), ("lam", 1.5)):
        with pytest.raises(UserError, match=key):
            ctrlrl.make("odice", "Hopper-v5", overrides={**QUIET, "dataset": str(OFFLINE_DATA),
                                                         key: value})
