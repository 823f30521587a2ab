"""The on-policy fast path: envs stepped without gymnasium's vector bookkeeping, acting in NumPy.

Each is checked against what it replaces: `SerialEnvs` against gymnasium's `SyncVectorEnv` (same
seeds and actions → the same observations, rewards, ends and episode statistics, step by step),
`HostActorCritic` against the torch modules' forward pass.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import make_algo
from gymnasium.vector import SyncVectorEnv
from torch import nn

from ctrlrl.algos import REGISTRY
from ctrlrl.algos.on_policy import OnPolicyAlgorithm
from ctrlrl.algos.ppo import PPO
from ctrlrl.core.acting import HostActorCritic
from ctrlrl.core.buffers import compute_gae
from ctrlrl.core.envs import GymnasiumEnvs, SerialEnvs, VecEnv, _make_one
from ctrlrl.core.nets import MLP, GaussianPolicy, make_policy, orthogonal_init


def _env_pair(env_id: str, n: int, env_kwargs: dict, **normalize) -> tuple[VecEnv, VecEnv]:
    """The same VecEnv twice: stepping its sub-envs itself, and through SyncVectorEnv."""
    fast = VecEnv(env_id, n, env_kwargs=env_kwargs, **normalize)
    ref = VecEnv(env_id, n, env_kwargs=env_kwargs, **normalize)
    ref.envs.close()
    ref.envs = GymnasiumEnvs(SyncVectorEnv, [partial(_make_one, env_id, i, env_kwargs)
                                            for i in range(n)])
    assert isinstance(fast.envs, SerialEnvs)
    return fast, ref


def _random_actions(space: gym.Space, n: int, rng: np.random.Generator) -> np.ndarray:
    if isinstance(space, gym.spaces.Box):
        return rng.uniform(space.low, space.high, (n, *space.shape)).astype(space.dtype)
    return rng.integers(0, space.n, n)


@pytest.mark.parametrize("env_id, env_kwargs, normalize", [
    # terminations (falls) and time-limit truncations, with and without normalisation
    ("Hopper-v5", {"max_episode_steps": 25}, {}),
    ("Hopper-v5", {"max_episode_steps": 25}, {"normalize_obs": True, "normalize_reward": True}),
    # discrete actions and terminations
    ("CartPole-v1", {"max_episode_steps": 30}, {"normalize_obs": True}),
    # `info["true_reward"]`: the episodes' true returns
    ("ctrlrl/HalfCheetahEnergy-v0", {"max_episode_steps": 20}, {"normalize_reward": True}),
])
def test_serial_envs_step_as_gymnasium_sync_vector_env(env_id, env_kwargs, normalize):
    n, steps = 3, 200
    fast, ref = _env_pair(env_id, n, env_kwargs, **normalize)
    try:
        assert np.array_equal(fast.reset(7), ref.reset(7))
        rng = np.random.default_rng(0)
        ends = {"terminated": 0, "truncated": 0, "true returns": 0}
        for _ in range(steps):
            action = _random_actions(fast.action_space, n, rng)
            a, b = fast.step(action), ref.step(action)
            for key in ("obs", "next_obs", "reward", "raw_reward", "terminated", "truncated",
                        "raw_next_obs"):
                x, y = getattr(a, key), getattr(b, key)
                assert x.dtype == y.dtype and np.array_equal(x, y), key
            assert a.episodes == b.episodes and a.true_returns == b.true_returns
            ends["terminated"] += int(a.terminated.sum())
            ends["truncated"] += int((a.truncated & ~a.terminated).sum())
            ends["true returns"] += len(a.true_returns)
        # the run crossed episode ends of the kinds the env has
        assert ends["truncated"] > 0 and (env_id == "ctrlrl/HalfCheetahEnergy-v0"
                                          or ends["terminated"] > 0)
        assert (ends["true returns"] > 0) == env_id.startswith("ctrlrl/")
        sa, sb = fast.state_dict(), ref.state_dict()
        assert sa.keys() == sb.keys()
        for key in sa:
            if key != "envs":
                assert str(sa[key]) == str(sb[key]), key
        for x, y in zip(sa["envs"], sb["envs"], strict=True):
            assert x["rng"] == y["rng"] and all(
                np.array_equal(x["layers"][-1][k], y["layers"][-1][k]) for k in y["layers"][-1]
                if isinstance(y["layers"][-1][k], np.ndarray))
    finally:
        fast.close()
        ref.envs.close()


def _actor_critic(space: gym.Space, obs_dim: int = 5, hidden=(16, 8), act: str = "tanh"):
    torch.manual_seed(0)
    policy = make_policy(space, obs_dim, hidden, act, log_std_init=-0.3)
    value_fn = MLP(obs_dim, hidden, 1, act)
    orthogonal_init(value_fn, last_gain=1.0)
    with torch.no_grad():  # visible means and log-stds (the 0.01 last gain makes them tiny)
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return policy, value_fn


SPACES = [gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(4),
          gym.spaces.MultiDiscrete([3, 2, 4])]


@pytest.mark.parametrize("space", SPACES, ids=["box", "discrete", "multidiscrete"])
@pytest.mark.parametrize("act", ["tanh", "relu", "elu", "leaky_relu"])
def test_host_actor_matches_the_torch_modules(space, act):
    """Values, log-probabilities of the drawn actions and the distribution's parameters equal the
    torch forward within float32 rounding; after the weights change, `sync` follows them."""
    policy, value_fn = _actor_critic(space, act=act)
    host = HostActorCritic.for_modules(policy, value_fn)
    assert host is not None
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((6, 5)).astype(np.float32)
    for _ in range(2):
        action, log_prob, value = host.act(obs, rng)
        obs_t = torch.as_tensor(obs)
        with torch.no_grad():
            ref_log_prob, _ = policy.log_prob_entropy(obs_t, torch.as_tensor(action))
            assert np.allclose(value, value_fn(obs_t).squeeze(-1).numpy(), atol=1e-5)
            assert np.allclose(log_prob, ref_log_prob.numpy(), atol=1e-4)
            params = host.forward(obs)[:, :-1]
            ref = policy.net(obs_t).numpy()
            assert np.allclose(params, ref, atol=1e-5)
        assert log_prob.dtype == value.dtype == np.float32
        assert action.shape == (6, *space.shape)
        with torch.no_grad():  # an update moves the weights: the host copy follows on sync
            for p in [*policy.parameters(), *value_fn.parameters()]:
                p.add_(0.1)
        host.sync()


@pytest.mark.parametrize("space", SPACES, ids=["box", "discrete", "multidiscrete"])
def test_host_actor_draws_from_the_policy_distribution(space):
    """Many draws at one state: the Gaussian's standardised noise is N(0, 1); categorical
    frequencies match the probabilities, and impossible (padded) actions are never drawn."""
    policy, value_fn = _actor_critic(space)
    host = HostActorCritic.for_modules(policy, value_fn)
    rng = np.random.default_rng(1)
    n = 20_000
    obs = np.repeat(rng.standard_normal((1, 5)).astype(np.float32), n, 0)
    action = host.act(obs, rng)[0]
    with torch.no_grad():
        params = policy.dist_params(torch.as_tensor(obs[:1]))
    if isinstance(space, gym.spaces.Box):
        mean, log_std = (x.detach().numpy()[0] for x in params)
        z = (action - mean) / np.exp(log_std)
        assert np.allclose(z.mean(0), 0, atol=0.04) and np.allclose(z.std(0), 1, atol=0.03)
        return
    probs = np.exp(params.numpy()[0]).reshape(-1, params.shape[-1])
    action = action.reshape(n, -1)
    for k in range(probs.shape[0]):
        freq = np.bincount(action[:, k], minlength=probs.shape[1]) / n
        assert np.allclose(freq, probs[k], atol=0.015)
        assert (freq[probs[k] == 0] == 0).all()


def test_host_actor_declines_what_it_does_not_compute():
    box = SPACES[0]
    policy, _ = _actor_critic(box)
    assert HostActorCritic.for_modules(policy, MLP(5, (16,), 1, "tanh")) is None  # depth
    assert HostActorCritic.for_modules(policy, MLP(5, (16, 8), 1, "relu")) is None  # activation
    assert HostActorCritic.for_modules(policy, MLP(5, (16, 8), 1, "tanh", layer_norm=True)) is None
    assert HostActorCritic.for_modules(policy, nn.Linear(5, 1)) is None


def test_gae_equals_the_step_by_step_recursion_bit_for_bit():
    rng = np.random.default_rng(3)
    steps, n, gamma, lam = 300, 3, 0.99, 0.95
    rewards = rng.standard_normal((steps, n)).astype(np.float32)
    values = rng.standard_normal((steps, n)).astype(np.float32)
    dones = (rng.random((steps, n)) < 0.05).astype(np.float32)
    last_values = rng.standard_normal(n).astype(np.float32)
    adv, ret = compute_gae(rewards, values, dones, last_values, gamma, lam)
    ref = np.zeros_like(rewards)
    last_gae, next_values = np.zeros_like(last_values), last_values
    for t in range(steps - 1, -1, -1):
        not_done = 1.0 - dones[t]
        delta = rewards[t] + gamma * next_values * not_done - values[t]
        last_gae = delta + gamma * lam * not_done * last_gae
        ref[t] = last_gae
        next_values = values[t]
    assert dones.any() and adv.dtype == np.float32
    assert np.array_equal(adv, ref) and np.array_equal(ret, ref + values)


ON_POLICY = sorted(name for name, cls in REGISTRY.items() if issubclass(cls, OnPolicyAlgorithm))
# actor and critic alike where a config lets them differ: the shapes the NumPy path would take
SAME_NETS = {"pdppo": {"critic_activation": "relu"}}


@pytest.mark.parametrize("name", ON_POLICY)
def test_rollouts_act_as_the_algorithms_own_modules(name, tmp_path):
    """Whatever each on-policy learner acts with, the rollout's values are its `value` and the
    stored log-probabilities its policy's, after an update and with weights moved further."""
    algo = make_algo(name, tmp_path, **SAME_NETS.get(name, {}))
    try:
        algo.train_iteration()  # an update: e.g. PDPPO's critic learns its return scale
        with torch.no_grad():
            for p in [*algo.policy.parameters(), *algo.value_fn.parameters()]:
                p.add_(0.05 * torch.randn_like(p))
        if algo.acting is not None:
            algo.acting.sync()
        obs = np.repeat(algo.obs, 4, 0) + np.random.default_rng(0).normal(
            0, 0.5, (4 * len(algo.obs), algo.obs_dim)).astype(np.float32)
        algo.run = dataclasses.replace(algo.run, n_envs=len(obs))
        action, log_prob, value = algo.rollout_act(obs)
        obs_t = torch.as_tensor(obs)
        with torch.no_grad():
            ref_value = algo.value(obs_t).numpy()
            ref_log_prob = algo.policy.log_prob_entropy(obs_t, torch.as_tensor(action))[0].numpy()
        assert np.allclose(value, ref_value, atol=1e-5)
        assert np.allclose(algo.rollout_value(obs), ref_value, atol=1e-5)
        assert np.allclose(log_prob, ref_log_prob, atol=1e-4)
    finally:
        algo.close()


def test_ppo_acts_in_numpy_and_pdppo_with_torch(tmp_path):
    ppo, pdppo = make_algo("ppo", tmp_path / "a"), make_algo("pdppo", tmp_path / "b")
    assert isinstance(ppo.acting, HostActorCritic) and pdppo.acting is None
    ppo.close()
    pdppo.close()


def _ppo_subclasses() -> list[str]:
    return sorted(name for name, cls in REGISTRY.items() if issubclass(cls, PPO))


@pytest.mark.parametrize("settings", [
    {}, {"activation": "relu"}, {"clip_range_vf": 0.1, "ent_coef": 0.01},
    {"normalize_advantage": False, "vf_coef": 0.7, "clip_range": 0.1}])
def test_ppo_hand_gradients_equal_autograd(settings, tmp_path):
    """`loss_gradients` writes autograd's gradient of `loss` (policy, log-std and critic), with
    the ratio clipped on both sides and the value clip binding, and returns `loss`'s diagnostics."""
    check_hand_gradients(make_algo("ppo", tmp_path, **settings))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ppo_hand_gradients_equal_autograd_on_cuda(tmp_path):
    algo = make_algo("ppo", tmp_path, device="cuda", clip_range_vf=0.1, ent_coef=0.01)
    assert algo.flat.param.is_cuda
    check_hand_gradients(algo)


def check_hand_gradients(algo) -> None:
    try:
        algo.train_iteration()
        assert algo.uses_hand_gradients()
        b = algo.rollout.all()
        g = torch.Generator().manual_seed(1)
        shifts = (1.2 * torch.rand(len(b.obs), generator=g) - 0.6,
                  2 * torch.rand(len(b.obs), generator=g) - 1)
        b = b._replace(log_probs=b.log_probs + shifts[0].to(b.obs.device),
                       values=b.values + shifts[1].to(b.obs.device))
        loss, stats, log_ratio = algo.loss(b)
        ratio = log_ratio.exp()
        assert (ratio > 1 + algo.cfg.clip_range).any() and (ratio < 1 - algo.cfg.clip_range).any()
        algo.flat.zero_grad()
        loss.backward()
        expected = algo.flat.param.grad.clone()
        algo.flat.param.grad.fill_(123.0)  # replaced, not added to
        hand_stats, hand_log_ratio = algo.loss_gradients(b)
        torch.testing.assert_close(algo.flat.param.grad, expected, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(hand_stats, stats)
        torch.testing.assert_close(hand_log_ratio, log_ratio)
    finally:
        algo.close()


@pytest.mark.parametrize("name", _ppo_subclasses())
def test_update_gradient_by_hand_is_the_autograd_one_for_every_ppo(name, tmp_path):
    """Where a PPO learner takes the hand-written gradient, it is its own `loss`'s (a subclass
    that changed `loss` would show here), regulariser included."""
    algo = make_algo(name, tmp_path)
    try:
        algo.train_iteration()
        if not algo.uses_hand_gradients():
            assert type(algo.policy) is not GaussianPolicy  # e.g. discrete actions: autograd
            return
        idx = torch.arange(len(algo.rollout.all().obs))[:64]
        b = algo.rollout._batch(algo.rollout.data[idx])
        grads = []
        for by_hand in (True, False):
            algo.flat.zero_grad()
            loss = algo.minibatch_loss(b, by_hand)[0]
            reg = algo.regularizer(b, idx)
            total = [x for x in (loss, None if reg is None else reg[0]) if x is not None]
            if total:
                sum(total).backward()
            grads.append(algo.flat.param.grad.clone())
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    finally:
        algo.close()
