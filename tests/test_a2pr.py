"""A2PR (Liu et al., ICML 2024): the regulariser's weights and targets, the advantage masks, λ's
normalisation, what `update()` feeds each loss (critic and value targets, the advantages, V before its
step), the actor's gradient path through the VAE, the policy delay and Polyak averaging, the paper's
per-dataset settings, and a bandit where improving on the data matters."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import make_algo

from ctrlrl.algos.a2pr import BC_WEIGHTS, PAPER_SETTINGS, A2PRConfig
from ctrlrl.core.errors import UserError
from ctrlrl.data import write_d4rl
from ctrlrl.envs.bandit import bandit_reward


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A2PR after 200 steps on the random Hopper data, with a mask other than the default."""
    algo = make_algo("a2pr", tmp_path_factory.mktemp("a2pr"), total_steps=200, mask=0.7)
    algo.learn()
    yield algo
    algo.close()


def expected_bc_target(algo, b, pi, v, seed: int, detach: bool = False):
    """ã, target and weight recomputed from their definitions, with the VAE draw of `seed`."""
    torch.manual_seed(seed)
    recon = algo.vae(b.obs, pi)[0]  # ã is the VAE's reconstruction of π(s), not of a
    if detach:
        recon = recon.detach()
    with torch.no_grad():
        adv_vae = algo.critic(b.obs, recon)[0] - v
        adv_data = algo.critic(b.obs, b.actions)[0] - v
    target = torch.where((adv_vae >= adv_data)[:, None], recon, b.actions)
    either = ((adv_vae >= 0) | (adv_data > 0)).float()
    both = (adv_vae >= 0).float() + (adv_data > 0).float()
    return recon, target, algo.cfg.mask * either, algo.cfg.mask * both


@pytest.mark.parametrize("rule", BC_WEIGHTS)
def test_regulariser_weights_and_targets(trained, rule):
    """target = ã = VAE(s, π(s)) where A(s, ã) ≥ A(s, a), else a; weight `any` (the reference's
    bool sum, a logical or) = mask·1[A(s,ã) ≥ 0 or A(s,a) > 0] ∈ {0, mask}; `count` =
    mask·(1[A(s,ã) ≥ 0] + 1[A(s,a) > 0]) ∈ {0, mask, 2·mask}."""
    algo = trained
    algo.cfg.bc_weight = rule
    try:
        torch.manual_seed(0)
        b = algo.replay.sample(512)
        with torch.no_grad():
            pi, v = algo.actor(b.obs), algo.state_value(b.obs)
            torch.manual_seed(7)
            target, weight, chose_vae = algo.bc_target(b, pi, v)
            recon, want_target, want_any, want_count = expected_bc_target(algo, b, pi, v, seed=7)
    finally:
        algo.cfg.bc_weight = "any"
    torch.testing.assert_close(target, want_target, rtol=0, atol=0)
    assert torch.equal(weight, want_any if rule == "any" else want_count)
    assert 0 < chose_vae.float().mean() < 1  # the batch mixes both choices of target
    assert torch.equal(target[chose_vae], recon[chose_vae])
    assert torch.equal(target[~chose_vae], b.actions[~chose_vae])
    # guards: the two rules differ on this batch, and each takes its own values
    assert not torch.equal(want_any, want_count)
    allowed = {"any": [0.0, 0.7], "count": [0.0, 0.7, 1.4]}[rule]
    torch.testing.assert_close(weight.unique(), torch.tensor(allowed))
    # a reconstruction of the data action would be another target
    torch.manual_seed(7)
    with torch.no_grad():
        of_data = algo.vae(b.obs, b.actions)[0]
    assert not torch.allclose(of_data[chose_vae], recon[chose_vae])


def test_no_regularisation_where_every_q_is_below_v(tmp_path):
    """With V(s) above every Q, the VAE reconstructs nothing and the actor is pure −λ·Q."""
    algo = make_algo("a2pr", tmp_path, total_steps=100)
    algo.learn()
    torch.manual_seed(0)
    b = algo.replay.sample(256)
    with torch.no_grad():
        advantage = algo.critic(b.obs, b.actions)[0] - algo.state_value(b.obs)
    vae_info = algo.vae_loss(b, advantage)[1]
    actor_info = algo.actor_loss(b)[1]
    # guards: before the shift both terms are on (this test could fail)
    assert vae_info["recon_loss"] > 0 and actor_info["bc_loss"] > 0
    assert actor_info["bc_weight_zero_frac"] < 1.0

    with torch.no_grad():
        algo.value.layers[-1].bias.add_(1e4)
        advantage = algo.critic(b.obs, b.actions)[0] - algo.state_value(b.obs)
    assert (advantage < 0).all()
    assert algo.vae_loss(b, advantage)[1]["recon_loss"].item() == 0.0
    loss, actor_info = algo.actor_loss(b)
    assert actor_info["bc_loss"].item() == 0.0
    assert actor_info["bc_weight_zero_frac"].item() == 1.0
    with torch.no_grad():
        q = algo.critic(b.obs, algo.actor(b.obs))[0]
    torch.testing.assert_close(loss.detach(), -2.5 * q.mean() / q.abs().mean())
    # and the same through a whole training step (an actor step: n_updates + 1 is even)
    algo.n_updates = 1
    metrics = algo.update(b)
    assert metrics["recon_loss"].item() == 0.0
    assert metrics["bc_loss"].item() == 0.0
    algo.close()


def test_q_term_is_invariant_to_the_reward_scale(tmp_path):
    """Rewards scaled by c scale Q and V by c: λ = α/mean|Q| keeps the actor's Q term, and the
    advantages' signs keep the regulariser."""
    algo = make_algo("a2pr", tmp_path, total_steps=50)
    algo.learn()
    b = algo.replay.sample(64)

    def terms():
        torch.manual_seed(1)  # the same VAE draw for ã each time
        loss, info = algo.actor_loss(b)
        bc = info["bc_loss"]
        return loss.detach() - bc, bc

    q_before, bc_before = terms()
    with torch.no_grad():
        for p in (algo.critic.weights[-1], algo.critic.biases[-1], algo.value.layers[-1].weight,
                  algo.value.layers[-1].bias):
            p.mul_(7.0)
    q_after, bc_after = terms()
    torch.testing.assert_close(q_before, q_after, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bc_before, bc_after)
    q = algo.critic(b.obs, algo.actor(b.obs))[0]
    torch.testing.assert_close(q_after, -2.5 * q.mean() / q.abs().mean(), rtol=1e-4, atol=1e-5)
    algo.close()


def actor_loss_by_hand(algo, b, v, seed: int, through_vae: bool):
    """−λ·mean Q1(s, π(s)) + mean[weight·(π(s) − target)²], written out again."""
    pi = algo.actor(b.obs)
    q_pi = algo.critic(b.obs, pi, detach_params=True)[0]
    lam = algo.cfg.alpha / q_pi.abs().mean().detach()
    _, target, weight, _ = expected_bc_target(algo, b, pi, v, seed, detach=not through_vae)
    return -lam * q_pi.mean() + (weight[:, None] * (pi - target) ** 2).mean()


@pytest.mark.parametrize("through_vae", [True, False])
def test_actor_loss_and_its_gradient_path(trained, through_vae):
    """The actor loss term by term, and its gradient: by default (the reference's) the BC term
    differentiates through ã = VAE(s, π(s)) back into π; `vae_target_grad: false` holds ã fixed."""
    algo = trained
    assert algo.cfg.vae_target_grad  # the default
    algo.cfg.vae_target_grad = through_vae
    try:
        b = algo.replay.sample(128)
        with torch.no_grad():
            v = algo.state_value(b.obs)
        algo.actor_flat.zero_grad()
        algo.vae_flat.zero_grad()
        torch.manual_seed(3)
        loss = algo.actor_loss(b, v)[0]
        loss.backward()
        got = algo.actor_flat.param.grad.clone()
        # the VAE's weights get no gradient either way: the actor loss does not step them
        assert algo.vae_flat.param.grad.abs().sum() == 0
        want = {}
        for path in (True, False):
            expected = actor_loss_by_hand(algo, b, v, seed=3, through_vae=path)
            grads = torch.autograd.grad(expected, list(algo.actor.parameters()))
            want[path] = (expected.detach(), torch.cat([g.reshape(-1) for g in grads]))
    finally:
        algo.cfg.vae_target_grad = True
        algo.actor_flat.zero_grad()
        algo.vae_flat.zero_grad()
    torch.testing.assert_close(loss.detach(), want[through_vae][0])
    torch.testing.assert_close(got, want[through_vae][1])
    # guard: the two gradient paths differ on this batch
    assert not torch.allclose(want[True][1], want[False][1], rtol=1e-3, atol=1e-6)


def test_vae_loss_by_hand(trained):
    """mean[w_vae·1[A(s, a) > ε_A]·(â − a)²] + 0.5·KL(N(μ, σ²) ‖ N(0, 1)), â reconstructing a."""
    algo = trained
    algo.cfg.vae_weight = 1.5
    try:
        b = algo.replay.sample(128)
        advantage = torch.linspace(-1.0, 1.0, 128)[torch.randperm(128)]
        torch.manual_seed(4)
        loss = algo.vae_loss(b, advantage)[0]
        torch.manual_seed(4)
        recon, mean, log_std = algo.vae(b.obs, b.actions)
    finally:
        algo.cfg.vae_weight = 1.0
    gate = (advantage > 0).float()[:, None]
    kl = 0.5 * (torch.exp(2 * log_std) + mean**2 - 1 - 2 * log_std).mean()
    torch.testing.assert_close(loss, (1.5 * gate * (recon - b.actions) ** 2).mean() + 0.5 * kl)


@pytest.fixture
def stepped(tmp_path):
    """A2PR after 50 steps: the targets have drifted from the online nets."""
    algo = make_algo("a2pr", tmp_path, total_steps=50)
    algo.learn()
    yield algo
    algo.close()


def spy(monkeypatch, obj, name: str, record: dict) -> None:
    """Record (args, result) of `obj.name` calls in `record[name]`."""
    fn = getattr(obj, name)

    def wrapper(*args, **kwargs):
        out = fn(*args, **kwargs)
        record[name] = (args, out)
        return out

    monkeypatch.setattr(obj, name, wrapper)


def test_update_feeds_each_loss_its_defined_inputs(stepped, monkeypatch):
    """One actor step of `update()`: the critic's y uses the target critic, V regresses on
    min(y, r + γ(1−d)·min Q(s', a')) with the just-updated online critic, the VAE gate and the actor
    use V(s) from before the value step, and both targets are Polyak-averaged afterwards."""
    algo = stepped
    algo.n_updates = 1  # (n_updates + 1) is even: this update steps the actor
    torch.manual_seed(0)
    with torch.no_grad():  # a target critic that is above the online one on some samples only
        for p in algo.critic_target.parameters():
            p.add_(0.1 * torch.randn_like(p))
    nets = ("critic", "critic_target", "actor", "actor_target", "value")
    before = {k: copy.deepcopy(getattr(algo, k)) for k in nets}
    rec: dict = {}
    spy(monkeypatch, algo.replay, "sample", rec)
    for name in ("bellman_target", "value_target", "vae_loss", "actor_loss"):
        spy(monkeypatch, algo, name, rec)
    metrics = algo.update(algo.replay.sample(algo.cfg.batch_size))

    b = rec["sample"][1]
    next_action, y = rec["bellman_target"][1]
    keep = algo.cfg.gamma * (1 - b.terminated)
    with torch.no_grad():
        torch.testing.assert_close(
            y, b.rewards + keep * before["critic_target"](b.next_obs, next_action).min(0).values)
        q_sa = before["critic"](b.obs, b.actions)
        torch.testing.assert_close(metrics["critic_loss"], ((q_sa - y) ** 2).mean(1).sum())
        online_y = b.rewards + keep * algo.critic(b.next_obs, next_action).min(0).values
        assert (online_y < y).any() and (online_y > y).any()  # the min binds both ways here
        value_target = rec["value_target"][1][0]
        torch.testing.assert_close(value_target, torch.minimum(y, online_y))
        v_before = before["value"](b.obs).squeeze(-1)
        torch.testing.assert_close(metrics["value_loss"], ((v_before - value_target) ** 2).mean())
        torch.testing.assert_close(rec["vae_loss"][0][1], algo.critic(b.obs, b.actions)[0] - v_before)
        torch.testing.assert_close(rec["actor_loss"][0][1], v_before)
    tau = algo.cfg.tau
    for name in ("critic", "actor"):
        for new_t, old_t, p in zip(getattr(algo, f"{name}_target").parameters(),
                                   before[f"{name}_target"].parameters(),
                                   getattr(algo, name).parameters(), strict=True):
            torch.testing.assert_close(new_t, old_t + tau * (p - old_t))


def test_actor_and_targets_move_on_every_second_update(stepped):
    algo = stepped

    def flat(module):
        return torch.cat([p.detach().reshape(-1) for p in module.parameters()]).clone()

    for n, steps_actor in ((0, False), (1, True), (2, False), (3, True)):
        algo.n_updates = n
        before = {k: flat(getattr(algo, k)) for k in ("actor", "actor_target", "critic_target",
                                                       "critic", "value", "vae")}
        algo.update(algo.replay.sample(algo.cfg.batch_size))
        for k, old in before.items():
            moved = not torch.equal(flat(getattr(algo, k)), old)
            assert moved == (steps_actor or k in ("critic", "value", "vae")), (n, k)


def test_defaults_are_the_reference_codes():
    cfg = A2PRConfig()
    assert (cfg.vae_target_grad, cfg.bc_weight, cfg.adv_threshold) == (True, "any", 0.0)
    assert (cfg.alpha, cfg.vae_weight, cfg.mask, cfg.gamma, cfg.tau) == (2.5, 1.0, 1.0, 0.99, 0.005)
    assert (cfg.policy_delay, cfg.target_policy_noise, cfg.target_noise_clip) == (2, 0.2, 0.5)
    assert (cfg.learning_rate, cfg.vae_learning_rate, cfg.batch_size) == (3e-4, 1e-3, 256)
    with pytest.raises(UserError, match=r"bc_weight=.sum.*any, count"):
        A2PRConfig(bc_weight="sum")


def test_paper_settings_fill_the_dataset_row():
    cfg = A2PRConfig(paper_settings="d4rl:halfcheetah-medium-expert-v2")
    assert (cfg.paper_settings, cfg.alpha, cfg.vae_weight, cfg.mask, cfg.gamma) == (
        "halfcheetah-medium-expert", 40.0, 1.0, 15.0, 0.99)
    assert A2PRConfig(paper_settings="hopper-medium").gamma == 0.995
    assert len(PAPER_SETTINGS) == 10
    assert A2PRConfig(paper_settings="hopper-medium", mask=0.4).mask == 0.4  # the row's value: fine
    with pytest.raises(UserError, match=r"mask=0\.9 was given too"):
        A2PRConfig(paper_settings="hopper-medium", mask=0.9)
    with pytest.raises(UserError, match="hopper-medium-replay"):  # lists the known rows
        A2PRConfig(paper_settings="hopper-expert")


# ---- a one-step bandit whose data mixes a good action (+0.5, reward 11) and a bad one (−0.5, 10);
# each spread by N(0, 0.2) so the critic sees the reward's curvature, not just two points (with
# two exact actions its shape between and beyond them is unconstrained, and TD3+BC follows
# whatever slope it happens to take)

BANDIT_STEPS = 2000
BANDIT = {"learning_rate": 1e-3, "batch_size": 256, "eval_every": 0}


@pytest.fixture(scope="module")
def bandit_data(tmp_path_factory):
    n = 2000
    rng = np.random.default_rng(0)
    centres = np.where(np.arange(n) % 2 == 0, 0.5, -0.5)
    actions = np.clip(centres + rng.normal(0.0, 0.2, n), -1.0, 1.0).astype(np.float32)[:, None]
    obs = np.ones((n, 1), np.float32)
    path = tmp_path_factory.mktemp("bandit") / "bandit.hdf5"
    write_d4rl(path, {"observations": obs, "actions": actions,
                      "rewards": bandit_reward(actions[:, 0]).astype(np.float32),
                      "terminals": np.ones(n, bool), "timeouts": np.zeros(n, bool),
                      "next_observations": obs})
    return path


def bandit_action(algo: str, data, run_dir, steps: int = BANDIT_STEPS, **extra) -> float:
    agent = make_algo(algo, run_dir, env="ctrlrl/Bandit-v0", dataset=str(data),
                      total_steps=steps, **BANDIT, **extra)
    agent.learn()
    action = float(agent.predict(np.ones(1, np.float32))[0])
    agent.close()
    return action


def test_bandit_a2pr_moves_to_the_good_action_td3bc_stays_near_the_data_mean(bandit_data, tmp_path):
    """With Q = 11 − (a − 0.5)² and data mean ≈ 0, TD3+BC's actor settles where λ·Q'(π) = 2π, at
    π = 0.5·λ / (1 + λ) ≈ 0.09 (λ = α / |Q| ≈ 0.23); A2PR clones only the better actions."""
    assert bandit_action("a2pr", bandit_data, tmp_path / "a2pr") > 0.35
    assert abs(bandit_action("td3bc", bandit_data, tmp_path / "td3bc")) < 0.2


def test_bandit_regularisers_alone(bandit_data, tmp_path):
    """With α = 0 only the regularisers act: TD3+BC's clones the data mean 0, A2PR's follows the
    action of positive advantage, +0.5."""
    assert bandit_action("a2pr", bandit_data, tmp_path / "a2pr", 600, alpha=0.0) > 0.4
    assert abs(bandit_action("td3bc", bandit_data, tmp_path / "td3bc", 600, alpha=0.0)) < 0.1
