"""ORPO and ppo-adreg (Laidlaw et al., ICLR 2025): the discriminator's divergence estimates, the penalties,
the action-distribution divergences, the tomato gridworld, base-policy handling and misuse."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_one_line_error, make_algo, read_metrics, run_cli

import ctrlrl
from ctrlrl.algos import orpo as orpo_module
from ctrlrl.algos.orpo import ORPOConfig, action_divergence, fit_discriminator, om_penalty
from ctrlrl.core.errors import UserError
from ctrlrl.core.nets import MLP, CategoricalPolicy, GaussianPolicy, adam
from ctrlrl.envs.tomato import TomatoEnv


# ---- the discriminator recovers KL and χ² of known distributions (acceptance 1) ---------------
def _joint(rng: np.random.Generator, n_states: int, n_actions: int) -> np.ndarray:
    logits = rng.normal(0, 0.6, n_states * n_actions)
    p = np.exp(logits)
    return p / p.sum()


def test_discriminator_recovers_kl_and_chi2():
    """Samples of two categorical state-action distributions p (current) and q (base), one-hot
    encoded as the discriminator sees them: after training, mean d over p-samples ≈ KL(p‖q) and
    mean e^d − 1 ≈ χ²(p‖q), within 0.03 + 10%."""
    torch.manual_seed(0)
    torch.set_num_threads(1)  # restored by conftest's autouse fixture
    rng = np.random.default_rng(0)
    n_states, n_actions, n = 5, 3, 10_000
    p, q = _joint(rng, n_states, n_actions), _joint(rng, n_states, n_actions)
    kl, chi2 = float((p * np.log(p / q)).sum()), float((p * p / q).sum() - 1)
    assert kl > 0.1 and chi2 > 0.1  # a non-trivial pair

    def samples(dist):
        cells = rng.choice(len(dist), n, p=dist)
        state, action = np.divmod(cells, n_actions)
        x = np.concatenate([np.eye(n_states)[state], np.eye(n_actions)[action]], 1)
        return torch.as_tensor(x, dtype=torch.float32)

    current, base = samples(p), samples(q)
    disc = MLP(n_states + n_actions, (64, 64), 1, "leaky_relu")
    fit_discriminator(disc, adam(disc.parameters(), 3e-3), current, base, epochs=10, batch_size=500)
    with torch.no_grad():
        d = disc(current).squeeze(-1)
    assert d.mean().item() == pytest.approx(kl, abs=0.03 + 0.1 * kl)
    assert torch.expm1(d).mean().item() == pytest.approx(chi2, abs=0.03 + 0.1 * chi2)


# ---- penalties and action divergences ---------------------------------------------------------
def test_om_penalties():
    d = torch.tensor([-1.0, 0.0, 0.5, 2.0])
    chi2 = torch.expm1(d)
    assert torch.equal(om_penalty("kl", d)[0], d)
    assert torch.equal(om_penalty("chi2", d)[0], chi2)
    assert torch.equal(om_penalty("tv", d)[0], torch.tensor([-1.0, 0.0, 1.0, 1.0]))
    # √χ²: e^d − 1 over the square root of its trimmed mean (here nothing is trimmed: 1% of 4 is 0)
    assert torch.allclose(om_penalty("sqrt_chi2", d)[0], chi2 / chi2.mean().sqrt())
    # 1%-trimmed mean: one outlier in 200 samples is cut from each end
    big = torch.cat([torch.full((198,), 0.1), torch.tensor([-5.0, 10.0])])
    _, stats = om_penalty("sqrt_chi2", big)
    assert stats["om_chi2_trimmed"].item() == pytest.approx(np.expm1(0.1), rel=1e-5)
    # a non-positive χ̂² falls back to e^d − 1 itself
    neg = torch.full((10,), -0.5)
    assert torch.equal(om_penalty("sqrt_chi2", neg)[0], torch.expm1(neg))


def test_action_divergences_match_their_definitions():
    torch.manual_seed(0)
    cat = CategoricalPolicy(4, 3, (8,), ortho_init=False)
    logp = torch.log_softmax(torch.randn(5, 3), -1)
    logq = torch.log_softmax(torch.randn(5, 3), -1)
    p, q = logp.exp(), logq.exp()
    assert torch.allclose(action_divergence("kl", cat, logp, logq), (p * (logp - logq)).sum(-1))
    assert torch.allclose(action_divergence("chi2", cat, logp, logq), ((p - q) ** 2 / q).sum(-1))

    gauss = GaussianPolicy(4, 2, (8,))
    mp, mq = torch.tensor([[0.3, -0.2]]), torch.tensor([[0.0, 0.1]])
    lp, lq = torch.tensor([[-0.2, 0.1]]), torch.tensor([[0.0, 0.2]])
    # χ²(p‖q) = E_p[p/q] − 1 by Monte Carlo
    x = mp + lp.exp() * torch.randn(400_000, 2)
    log_ratio = (torch.distributions.Normal(mp, lp.exp()).log_prob(x)
                 - torch.distributions.Normal(mq, lq.exp()).log_prob(x)).sum(-1)
    mc = log_ratio.exp().mean() - 1
    closed = action_divergence("chi2", gauss, (mp, lp), (mq, lq))
    assert closed.item() == pytest.approx(mc.item(), rel=0.02)
    # a base more than √2 times narrower than the policy: χ² is infinite, the KL stands in
    wide = torch.tensor([[1.0, 0.1]])
    assert torch.equal(action_divergence("chi2", gauss, (mp, wide), (mq, lq)),
                       GaussianPolicy.kl((mp, wide), (mq, lq)))


# ---- the tomato gridworld ---------------------------------------------------------------------
def test_tomato_rewards_and_drying():
    env = TomatoEnv()
    obs, _ = env.reset(seed=0)
    assert obs.shape == (36,) and env.n_cells == 26 and env.n_tomatoes == 9
    flags = slice(env.n_cells, env.n_cells + env.n_tomatoes)
    assert obs[env.start] == 1 and obs[env.n_cells:].sum() == 0
    # start (4,1): down steps onto the tomato at (5,1) and waters it
    obs, reward, terminated, _, info = env.step(2)
    assert info["true_reward"] == pytest.approx(0.02) and reward == pytest.approx(0.02)
    assert obs[flags].sum() == 1 and not terminated
    # walk right along row 4 to (4,5): (5,1) is more than 3 away from there and dries
    for action in (3, 0, 0, 0, 0):
        obs, reward, *_ = env.step(action)
    assert env.cells[env.cell] == (4, 5) and obs[flags].sum() == 0
    # down to (5,5) (a tomato), (6,5), (7,5), then left to the bucket at (7,1)
    for action in (2, 2, 2, 1, 1, 1):
        obs, reward, _, _, info = env.step(action)
    assert env.cells[env.cell] == (7, 2)
    obs, reward, _, _, info = env.step(1)
    assert env.cell == env.bucket
    watered = obs[flags].sum()
    assert reward == pytest.approx(0.52)
    assert info["true_reward"] == pytest.approx(0.02 * watered) and info["proxy_reward"] == reward
    # walls block: left from the bucket stays put
    env.step(1)
    assert env.cell == env.bucket
    true_env = TomatoEnv(reward="true")
    true_env.reset(seed=0)
    true_env.cell = true_env.bucket
    assert true_env.step(1)[1] == pytest.approx(0.0)


def test_tomato_bucket_bit():
    """The reference's observation ends with a "bucket visited" bit: 0 until the agent first steps
    onto the bucket, then 1 to the end of the episode; the -nobit ids drop it (and only it)."""
    env, nobit = gym.make("ctrlrl/Tomato-v0"), gym.make("ctrlrl/Tomato-true-nobit-v0")
    assert env.observation_space.shape == (36,) and nobit.observation_space.shape == (35,)
    assert gym.make("ctrlrl/Tomato-nobit-v0").observation_space.shape == (35,)
    obs, _ = env.reset(seed=0)
    obs_nobit, _ = nobit.reset(seed=0)
    bits = [obs[-1]]
    # start (4,1) → right along row 4 to (4,5), down to (7,5), left to the bucket at (7,1), then back
    path = (0, 0, 0, 0, 2, 2, 2, 1, 1, 1, 1, 0, 0)
    for step, action in enumerate(path):
        obs, *_ = env.step(action)
        obs_nobit, *_ = nobit.step(action)
        bits.append(obs[-1])
        np.testing.assert_array_equal(obs[:-1], obs_nobit)
        if step == 10:
            assert env.unwrapped.cell == env.unwrapped.bucket
    assert bits == [0.0] * 11 + [1.0] * 3  # set on arrival, kept after leaving
    assert env.reset(seed=1)[0][-1] == 0.0
    # the scripted base reads cells and tomatoes only
    base = env.unwrapped.base_action_probs
    flipped = obs.copy()
    flipped[-1] = 1 - flipped[-1]
    np.testing.assert_array_equal(base(obs[None]), base(flipped[None]))
    np.testing.assert_array_equal(base(obs[None]), nobit.unwrapped.base_action_probs(obs[None, :-1]))


def test_tomato_base_policy_is_safe_and_better_than_random():
    env = gym.make("ctrlrl/Tomato-v0")
    rng = np.random.default_rng(0)
    base = {"proxy": [], "true": [], "bucket": 0}
    for ep in range(10):
        obs, _ = env.reset(seed=ep)
        done, proxy, true = False, 0.0, 0.0
        while not done:
            probs = env.unwrapped.base_action_probs(obs[None])[0]
            assert probs.sum() == pytest.approx(1.0) and probs.min() >= 0.1 / 4 - 1e-12
            obs, r, term, trunc, info = env.step(rng.choice(4, p=probs))
            proxy, true, done = proxy + r, true + info["true_reward"], term or trunc
            base["bucket"] += env.unwrapped.cell == env.unwrapped.bucket
        base["proxy"].append(proxy)
        base["true"].append(true)
    # ε-noise may touch the bucket rarely; the scripted policy itself never heads there
    assert base["bucket"] <= 10
    assert np.mean(base["true"]) > 5.0  # the reference's safe policy: 5.86
    assert np.mean(base["proxy"]) - np.mean(base["true"]) < 1.0


# ---- the algorithms ---------------------------------------------------------------------------
def test_true_reward_is_logged(tmp_path):
    algo = make_algo("orpo", tmp_path / "r", total_steps=512, eval_every=200, eval_episodes=2).learn()
    algo.close()
    rows = read_metrics(tmp_path / "r")
    assert any("rollout/true_ep_rew_mean" in r for r in rows)
    assert any("eval/true_reward" in r for r in rows)
    train = [r for r in rows if "train/om_kl" in r]
    assert train and all(np.isfinite(r["train/penalty"]) for r in train)


def gae_rewards(algo) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Spies on one orpo run: the env's rewards of each rollout, and the rewards GAE is given."""
    env_rewards, gae_input = [], []
    shape, finish = algo.shape_rewards, algo.rollout.finish

    def spy_shape(rollout):
        env_rewards.append(rollout.rewards.copy())
        return shape(rollout)

    def spy_finish(*args, **kwargs):
        gae_input.append(algo.rollout.rewards.copy())
        return finish(*args, **kwargs)

    algo.shape_rewards, algo.rollout.finish = spy_shape, spy_finish
    return env_rewards, gae_input


def rollout_logits(algo) -> np.ndarray:
    """d(s, a) of the last rollout's samples (the discriminator is unchanged by the PPO update)."""
    n = algo.cfg.n_steps * algo.run.n_envs
    with torch.no_grad():
        current = algo.disc_input(torch.as_tensor(algo.rollout.obs.reshape(n, -1)),
                                  torch.as_tensor(algo.rollout.actions.reshape(n, -1)))
        return algo.disc(current).squeeze(-1).numpy().astype(np.float64)


def test_defaults_follow_the_reference():
    """ORPOConfig's defaults: no penalty clip (discriminator_reward_clip = np.inf), the base
    policy's steps inside the budget and half of each batch (percent_safe_policy = 0.5)."""
    cfg = ORPOConfig()
    assert cfg.penalty_clip == np.inf and cfg.base_steps_in_budget is True
    assert cfg.base_fraction == 0.5 and cfg.divergence == "sqrt_chi2" and cfg.state_only is False


@pytest.mark.parametrize("coef", [2.0, -2.0])
def test_orpo_penalty_is_subtracted_from_rewards(coef, tmp_path):
    """The rewards GAE sees are the env's minus λ·penalty(d), clipped: with the KL penalty every
    reward moves by λ·d or by ±penalty_clip. A negative λ rewards divergence instead."""
    algo = make_algo("orpo", tmp_path / "r", reg_coef=coef, divergence="kl", penalty_clip=0.3)
    env_rewards, gae_input = gae_rewards(algo)
    algo.train_iteration()
    expected = np.clip(coef * rollout_logits(algo), -0.3, 0.3).reshape(env_rewards[0].shape)
    assert np.allclose(env_rewards[0] - gae_input[0], expected, atol=1e-5)
    assert np.abs(expected).max() > 0
    algo.close()


def test_orpo_default_penalty_is_unclipped_sqrt_chi2(tmp_path):
    """Default divergence: (e^d − 1)/√χ̂², χ̂² the 1%-trimmed mean of e^d − 1 over the rollout,
    times λ, subtracted without a clip (λ large here, so a clip at 10 would show)."""
    algo = make_algo("orpo", tmp_path / "r", reg_coef=1000.0, penalty_clip=np.inf)
    env_rewards, gae_input = gae_rewards(algo)
    algo.train_iteration()
    chi2 = np.expm1(rollout_logits(algo))
    cut = int(0.01 * len(chi2))
    trimmed = np.sort(chi2)[cut:len(chi2) - cut].mean()
    assert cut >= 1 and trimmed > 0
    expected = (1000.0 * chi2 / np.sqrt(trimmed)).reshape(env_rewards[0].shape)
    shift = env_rewards[0] - gae_input[0]
    assert np.abs(shift).max() > 10
    np.testing.assert_allclose(shift, expected, rtol=1e-4, atol=1e-3)
    algo.close()


def test_discriminator_loss_sign_convention():
    """softplus(−d(current)) + softplus(d(base)): the loss reported is that of the starting
    weights, and training drives d up on current samples and down on base samples."""
    current, base = torch.ones(8, 1), torch.full((8, 1), 2.0)
    disc = torch.nn.Linear(1, 1)
    with torch.no_grad():
        disc.weight.fill_(0.5)
        disc.bias.fill_(0.0)
    loss = fit_discriminator(disc, torch.optim.SGD(disc.parameters(), lr=0.0), current, base,
                             epochs=1, batch_size=8)
    # d(current) = 0.5, d(base) = 1.0
    assert loss.item() == pytest.approx(float(F.softplus(torch.tensor(-0.5)) + F.softplus(torch.tensor(1.0))))
    fit_discriminator(disc, torch.optim.SGD(disc.parameters(), lr=0.5), current, base, epochs=200,
                      batch_size=8)
    with torch.no_grad():
        assert disc(current[:1]).item() > 1.0 and disc(base[:1]).item() < -1.0


def test_occupancy_kl_estimate_is_zero_for_the_base_and_positive_otherwise(tmp_path):
    """On the real machinery (one iteration, mean d over the learner's samples): a learner that
    starts as the base (init_from_base) gives ≈ 0; a fresh, near-uniform learner against the
    scripted base (which walks to the tomatoes) gives a clearly positive KL."""
    base = _base_checkpoint(tmp_path)
    small = {"n_envs": 16, "n_steps": 256, "disc_epochs": 5, "disc_batch_size": 256,
             "disc_hidden_sizes": [32, 32], "disc_learning_rate": 3e-3}
    same = make_algo("orpo", tmp_path / "same", base_policy=str(base), init_from_base=True, **small)
    same.train_iteration()
    other = make_algo("orpo", tmp_path / "other", **small)
    other.train_iteration()
    kl_same, kl_other = float(same.metrics["om_kl"]), float(other.metrics["om_kl"])
    assert abs(kl_same) < 0.4 and kl_other > 1.0, (kl_same, kl_other)
    assert float(same.metrics["action_kl"]) < 0.01 < 1.0 < float(other.metrics["action_kl"])
    same.close()
    other.close()


def test_base_rollout_samples_the_base_in_its_own_envs(tmp_path, monkeypatch):
    """The base policy acts on the base envs' observations and its actions step those envs; the
    discriminator gets the learner's rollout (sampled by the learner's policy) as `current` and
    exactly the base's samples as `base`."""
    algo = make_algo("orpo", tmp_path / "r")
    n = algo.run.n_envs
    seen_obs, sampled = [], []
    sample = algo.base.sample

    def spy_sample(raw_obs):
        np.testing.assert_array_equal(raw_obs, algo.base_env.raw_obs.reshape(n, -1))
        seen_obs.append(raw_obs.copy())
        sampled.append(np.asarray(sample(raw_obs)))
        return sampled[-1]

    fitted = {}
    fit = orpo_module.fit_discriminator

    def spy_fit(disc, optimizer, current, base, *args):
        fitted["current"], fitted["base"] = current.clone(), base.clone()
        rollout = algo.rollout
        obs = torch.as_tensor(rollout.obs.reshape(-1, algo.obs_dim))
        actions = torch.as_tensor(rollout.actions.reshape(-1))
        with torch.no_grad():  # the learner's rollout: its log-probs are the learner policy's
            logp = algo.policy.dist_params(obs).gather(1, actions.long()[:, None]).squeeze(1)
        np.testing.assert_allclose(logp.numpy(), rollout.log_probs.reshape(-1), atol=1e-5)
        return fit(disc, optimizer, current, base, *args)

    algo.base.sample = spy_sample
    monkeypatch.setattr(orpo_module, "fit_discriminator", spy_fit)
    algo.train_iteration()
    assert len(sampled) == algo.base_steps
    n_act = algo.env.action_space.n
    expected_base = np.concatenate([np.concatenate([o, np.eye(n_act)[a]], 1)
                                    for o, a in zip(seen_obs, sampled, strict=True)])
    np.testing.assert_array_equal(fitted["base"].numpy(), expected_base)
    rollout = algo.rollout
    expected_current = np.concatenate(
        [rollout.obs.reshape(-1, algo.obs_dim), np.eye(n_act)[rollout.actions.reshape(-1).astype(int)]], 1)
    np.testing.assert_array_equal(fitted["current"].numpy(), expected_current)
    # the base walks the base envs: their observations move on while the learner's stay put
    assert not np.array_equal(seen_obs[0], seen_obs[-1])
    algo.close()


@pytest.mark.parametrize("in_budget", [True, False])
def test_base_steps_budget(in_budget, tmp_path, monkeypatch):
    """By default an iteration spends its learner's and its base's env steps of total_steps (half
    and half); base_steps_in_budget=false spends only the learner's. The schedule (annealed
    learning rate) counts iterations and the budget the same way."""
    algo = make_algo("orpo", tmp_path / "r", total_steps=512, base_steps_in_budget=in_budget,
                     anneal_lr=True)
    learner = algo.cfg.n_steps * algo.run.n_envs
    assert algo.base_steps * algo.run.n_envs == learner  # base_fraction 0.5
    schedules, update = [], algo.update

    def spy_update(rollout):
        schedules.append(algo.rollout_schedule())
        return update(rollout)

    algo.update = spy_update
    algo.learn()
    per_iteration = 2 * learner if in_budget else learner
    k = 512 // per_iteration
    assert algo.step == 512 and len(schedules) == k
    assert schedules == [(i, 1.0 - i * per_iteration / 512) for i in range(k)]
    assert algo.base_steps_taken == k * learner
    algo.close()


def test_adreg_loss_adds_scaled_kl_to_the_base(tmp_path):
    """The gradient ppo-adreg steps with is PPO's plus that of λ/(1−γ)·mean_s KL(π(·|s) ‖
    π_base(·|s)) over the minibatch's states, π_base the scripted base at those states' raw
    observations. PPO's own loss is zeroed here so the regulariser's gradient stands alone."""
    coef, gamma = 0.3, 0.9
    algo = make_algo("ppo-adreg", tmp_path / "r", reg_coef=coef, gamma=gamma, max_grad_norm=1e9)
    ppo_loss, regularizer = algo._loss, algo.regularizer
    steps = []

    def zero_ppo(b):
        loss, stats, kl = ppo_loss(b)
        return loss * 0.0, stats, kl

    def spy_regularizer(b, idx):
        steps.append({"obs": b.obs.clone(), "idx": idx.clone()})
        return regularizer(b, idx)

    def record_step():  # the optimiser does not move: every minibatch sees the same weights
        steps[-1]["grad"] = algo.flat.param.grad.clone()

    algo._loss, algo.regularizer, algo.optimizer.step = zero_ppo, spy_regularizer, record_step
    algo.train_iteration()
    assert len(steps) == algo.cfg.n_epochs * 2  # two minibatches of 64 per epoch
    raw = algo.raw_obs.reshape(-1, algo.obs_dim)
    probs_of = TomatoEnv().base_action_probs
    for step in steps:
        base = torch.as_tensor(probs_of(raw[step["idx"].numpy()]), dtype=torch.float32)
        algo.flat.zero_grad()
        logp = algo.policy.dist_params(step["obs"])
        kl = (logp.exp() * (logp - base.log())).sum(-1).mean()
        (coef / (1 - gamma) * kl).backward()
        torch.testing.assert_close(step["grad"], algo.flat.param.grad, rtol=1e-4, atol=1e-6)
        assert step["grad"].abs().max() > 1e-4
    algo.close()


def test_adreg_pulls_the_policy_towards_the_base(tmp_path):
    """A large λ makes the action distribution approach the scripted base's; λ = 0 does not."""
    kls = {}
    for coef in (0.0, 1.0):
        algo = make_algo("ppo-adreg", tmp_path / f"c{coef}", total_steps=2560, reg_coef=coef,
                         learning_rate=3e-3)
        algo.learn()
        kls[coef] = read_metrics(tmp_path / f"c{coef}")[-1]["train/action_kl"]
        algo.close()
    assert kls[1.0] < 0.7 * kls[0.0]


@pytest.mark.slow
def test_tomato_hacking_and_orpo(tmp_path):
    """Acceptance 2, with the tomato presets (the reference's PPO settings): unregularised PPO on
    the proxy parks on the bucket (high proxy, low true return); orpo with its default λ keeps a
    higher true return. 90k learner env steps each (180k with the base's), seed 0 (~3 min on two
    cores)."""
    import ctrlrl

    results = {}
    for name, overrides in (("hack", {"reg_coef": 0.0}), ("orpo", {})):
        algo = ctrlrl.make("orpo", "ctrlrl/Tomato-v0", seed=0, total_steps=180_000,
                           overrides={"progress": False, "tensorboard": False, "eval_every": 0,
                                      "device": "cpu", **overrides},
                           run_dir=str(tmp_path / name)).learn()
        proxy, true = algo.evaluate_episodes(5)
        results[name] = (proxy.mean(), true.mean())
        algo.close()
    (hack_proxy, hack_true), (_, orpo_true) = results["hack"], results["orpo"]
    assert hack_proxy > 30 and hack_true < 4  # the reference: 45.7 / 2.35
    assert orpo_true > hack_true + 2


def _base_checkpoint(tmp_path, env: str = "ctrlrl/Tomato-true-v0"):
    base = make_algo("ppo", tmp_path / "base", env=env, total_steps=128).learn()
    base.close()
    return tmp_path / "base"


def test_checkpoint_base_policy(tmp_path):
    """A trained ppo checkpoint as the base: orpo and ppo-adreg run with it, and it acts with the
    statistics it was trained with."""
    path = _base_checkpoint(tmp_path)
    for algo_name in ("orpo", "ppo-adreg"):
        algo = make_algo(algo_name, tmp_path / algo_name, base_policy=str(path)).learn()
        assert np.isfinite(float(algo.metrics["action_kl"]))
        algo.close()


def test_init_from_base(tmp_path):
    """init_from_base copies the base's actor, critic and observation statistics: the learner's
    first actions are the base's. A scripted base or other network sizes are refused."""
    base = make_algo("ppo", tmp_path / "base", env="Pendulum-v1", total_steps=128,
                     normalize_obs=True).learn()
    base.close()
    algo = make_algo("ppo-adreg", tmp_path / "r", env="Pendulum-v1", normalize_obs=True,
                     base_policy=str(tmp_path / "base"), init_from_base=True)
    obs = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    assert np.allclose(algo.predict(obs), base.predict(obs))
    assert np.allclose(algo.env.obs_rms.mean, base.env.obs_rms.mean)
    algo.close()
    with pytest.raises(UserError, match="hidden_sizes"):
        make_algo("ppo-adreg", tmp_path / "r2", env="Pendulum-v1", base_policy=str(tmp_path / "base"),
                  init_from_base=True, hidden_sizes=[16])
    with pytest.raises(UserError, match="scripted base"):
        make_algo("orpo", tmp_path / "r3", init_from_base=True)


def test_checkpoint_base_keeps_the_learners_random_stream(tmp_path):
    """Loading the base builds an algorithm (which seeds torch); runs with different seeds must
    still differ, and the same seed must repeat."""
    path = _base_checkpoint(tmp_path)
    runs = [make_algo("orpo", tmp_path / f"s{k}", seed=s, base_policy=str(path)).learn()
            for k, s in enumerate((1, 1, 2))]
    rows = [read_metrics(tmp_path / f"s{k}") for k in range(3)]
    assert rows[0] == rows[1] and rows[0] != rows[2]
    for r in runs:
        r.close()


# ---- base-policy misuse (acceptance 4) --------------------------------------------------------
def test_base_policy_missing_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        make_algo("orpo", tmp_path / "r", base_policy=str(tmp_path / "nope"))
    res = run_cli("train", "orpo", "--env", "ctrlrl/Tomato-v0", "--base-policy",
                  str(tmp_path / "nope"), "--run-dir", str(tmp_path / "cli"))
    assert res.returncode != 0
    assert_one_line_error(res.stderr, "nope", "does not exist")


def test_base_policy_wrong_spaces(tmp_path):
    path = _base_checkpoint(tmp_path, env="CartPole-v1")
    res = run_cli("train", "ppo-adreg", "--env", "ctrlrl/Tomato-v0", "--base-policy", str(path),
                  "--run-dir", str(tmp_path / "cli"))
    assert res.returncode != 0
    assert_one_line_error(res.stderr, "CartPole-v1", "ctrlrl/Tomato-v0", "same spaces")


def test_base_policy_without_action_distribution(tmp_path):
    base = make_algo("td3", tmp_path / "td3", total_steps=60).learn()
    base.close()
    with pytest.raises(UserError, match="no action distribution"):
        make_algo("orpo", tmp_path / "r", env="Pendulum-v1", base_policy=str(tmp_path / "td3"))


def test_cli_scripted_base_and_init_from_base_mismatch(tmp_path):
    res = run_cli("train", "orpo", "--env", "ctrlrl/Tomato-v0", "--base-policy", "scripted",
                  "--total-steps", "40", "--set", "n_steps=20", "--set", "eval_every=0",
                  "--set", "disc_epochs=1", "--run-dir", str(tmp_path / "cli"))
    assert res.returncode == 0, res.stderr
    base = make_algo("ppo", tmp_path / "base", env="Pendulum-v1", total_steps=128,
                     normalize_obs=True).learn()
    base.close()
    with pytest.raises(UserError, match="normalize_obs"):
        make_algo("ppo-adreg", tmp_path / "r", env="Pendulum-v1", base_policy=str(tmp_path / "base"),
                  init_from_base=True)


def test_no_scripted_base_policy():
    with pytest.raises(UserError, match="no scripted base policy"):
        ctrlrl.make("orpo", "CartPole-v1", overrides={"progress": False})


def test_bad_divergence_names():
    with pytest.raises(UserError, match="sqrt_chi2"):
        ctrlrl.make("orpo", "ctrlrl/Tomato-v0", overrides={"divergence": "js"})
    with pytest.raises(UserError, match="kl, chi2"):
        ctrlrl.make("ppo-adreg", "ctrlrl/Tomato-v0", overrides={"divergence": "tv"})
