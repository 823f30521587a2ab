"""A2PR (ALGORITHMS.md §3): the regulariser's weights and targets, the advantage masks, λ's
normalisation, the paper's per-dataset settings, and a bandit where improving on the data matters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_algo

from ctrlrl.algos.a2pr import PAPER_SETTINGS, A2PRConfig
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


def test_regulariser_weights_and_targets(trained):
    """weight = mask·(1[A(s,ã) ≥ 0] + 1[A(s,a) > 0]) ∈ {0, mask, 2·mask}; the target is the action
    of the larger advantage."""
    algo = trained
    torch.manual_seed(0)
    b = algo.replay.sample(512)
    with torch.no_grad():
        pi, v = algo.actor(b.obs), algo.state_value(b.obs)
        target, weight, chose_vae = algo.bc_target(b, pi, v)
        q_target, q_data = algo.critic(b.obs, target)[0], algo.critic(b.obs, b.actions)[0]
    assert torch.isin(weight, torch.tensor([0.0, 0.7, 1.4])).all(), weight.unique()
    assert len(weight.unique()) >= 2, weight.unique()  # a real batch mixes advantage signs
    assert 0 < chose_vae.float().mean() < 1
    # where the data's action is kept the target is exactly it; elsewhere ã has the larger advantage
    assert torch.equal(target[~chose_vae], b.actions[~chose_vae])
    assert (q_target[chose_vae] >= q_data[chose_vae]).all()
    # weight 0 needs A(s, a) ≤ 0, weight 2·mask needs A(s, a) > 0
    assert (q_data[weight == 0] <= v[weight == 0]).all()
    assert (q_data[weight > 1.0] > v[weight > 1.0]).all()


def test_no_regularisation_where_every_q_is_below_v(tmp_path):
    """With V(s) above every Q, the VAE reconstructs nothing and the actor is pure −λ·Q."""
    algo = make_algo("a2pr", tmp_path, total_steps=100)
    algo.learn()
    torch.manual_seed(0)
    b = algo.replay.sample(256)
    with torch.no_grad():
        advantage = algo.critic(b.obs, b.actions)[0] - algo.state_value(b.obs)
    algo.vae_loss(b, advantage)
    algo.actor_loss(b)
    # guards: before the shift both terms are on (this test could fail)
    assert algo.metrics["recon_loss"] > 0 and algo.metrics["bc_loss"] > 0

    with torch.no_grad():
        algo.value.layers[-1].bias.add_(1e4)
        advantage = algo.critic(b.obs, b.actions)[0] - algo.state_value(b.obs)
    assert (advantage < 0).all()
    algo.vae_loss(b, advantage)
    assert algo.metrics["recon_loss"].item() == 0.0
    loss = algo.actor_loss(b)
    assert algo.metrics["bc_loss"].item() == 0.0
    with torch.no_grad():
        q = algo.critic(b.obs, algo.actor(b.obs))[0]
    torch.testing.assert_close(loss.detach(), -2.5 * q.mean() / q.abs().mean())
    # and the same through a whole training step (an actor step: n_updates + 1 is even)
    algo.n_updates = 1
    algo.update()
    assert algo.metrics["recon_loss"].item() == 0.0
    assert algo.metrics["bc_loss"].item() == 0.0
    algo.close()


def test_q_term_is_invariant_to_the_reward_scale(tmp_path):
    """Rewards scaled by c scale Q and V by c: λ = α/mean|Q| keeps the actor's Q term, and the
    advantages' signs keep the regulariser."""
    algo = make_algo("a2pr", tmp_path, total_steps=50)
    algo.learn()
    b = algo.replay.sample(64)

    def terms():
        torch.manual_seed(1)  # the same VAE draw for ã each time
        loss = algo.actor_loss(b)
        bc = algo.metrics["bc_loss"]
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


@pytest.mark.parametrize("through_vae", [False, True])
def test_bc_target_gradient(trained, through_vae):
    """ã is a constant target by default; `vae_target_grad` lets the BC term reach the VAE (and
    π through it), as the reference code does."""
    algo = trained
    algo.cfg.vae_target_grad = through_vae
    try:
        b = algo.replay.sample(64)
        algo.vae_flat.zero_grad()
        algo.actor_flat.zero_grad()
        algo.actor_loss(b).backward()
        assert algo.actor_flat.param.grad.abs().sum() > 0
        assert (algo.vae_flat.param.grad.abs().sum() > 0) == through_vae
    finally:
        algo.cfg.vae_target_grad = False
        algo.vae_flat.zero_grad()
        algo.actor_flat.zero_grad()


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
