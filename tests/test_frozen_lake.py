"""FrozenLake with its post-decision state (the intended move before the slip)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from conftest import make_algo

import ctrlrl.envs  # noqa: F401  (registers the ids)
from ctrlrl.envs.frozen_lake import FrozenLakePostDecision


def transitions(env: FrozenLakePostDecision, steps: int, seed: int = 0):
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        action = int(rng.integers(4))
        next_obs, _, terminated, truncated, info = env.step(action)
        yield obs, action, next_obs, info
        obs = env.reset()[0] if terminated or truncated else next_obs


def test_passes_the_checkers():
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    check_env(gym.make("ctrlrl/FrozenLakePD-v0").unwrapped)
    sb3_check_env(gym.make("ctrlrl/FrozenLakePD8x8-v0").unwrapped)


def test_without_the_slip_the_next_state_is_the_post_decision_state():
    env = FrozenLakePostDecision(is_slippery=False)
    for obs, action, next_obs, info in transitions(env, 300):
        np.testing.assert_array_equal(next_obs, env.post_decision(obs, action))
        np.testing.assert_array_equal(info["post_decision_obs"], next_obs)


def test_with_the_slip_the_next_state_is_the_intended_cell_or_a_perpendicular_one():
    env = FrozenLakePostDecision(is_slippery=True)
    hits, total = 0, 0
    for obs, action, next_obs, info in transitions(env, 3000, seed=1):
        np.testing.assert_array_equal(info["post_decision_obs"], env.post_decision(obs, action))
        reachable = {int(env.post_decision(obs, a).argmax()) for a in (action, (action + 1) % 4,
                                                                        (action + 3) % 4)}
        assert int(next_obs.argmax()) in reachable
        hits += int(next_obs.argmax()) == int(info["post_decision_obs"].argmax())
        total += 1
    assert 0.25 < hits / total < 0.75  # the slip is real (1/3 each, plus walls that absorb it)


def test_post_decision_is_batched():
    env = FrozenLakePostDecision()
    obs = np.eye(16, dtype=np.float32)
    actions = np.arange(16) % 4
    batched = env.post_decision(obs, actions)
    for k in range(16):
        np.testing.assert_array_equal(batched[k], env.post_decision(obs[k], actions[k]))


def test_ctrlrl_ppo_trains_on_it(tmp_path):
    algo = make_algo("ppo", tmp_path, env="ctrlrl/FrozenLakePD-v0", total_steps=256).learn()
    assert algo.step == 256
    algo.close()
