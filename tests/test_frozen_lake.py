"""FrozenLake with its post-decision state (the intended move before the slip)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from conftest import make_algo

import ctrlrl.envs  # noqa: F401  (registers the ids)
from ctrlrl.envs.frozen_lake import FrozenLakePostDecision, ProximityLake


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


# ---- the authors' lake: a proximity reward for the decision, then a tile-dependent slip ---------
def test_proximity_lake_passes_the_checkers():
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    check_env(gym.make("ctrlrl/ProximityLakePD-v0").unwrapped)
    sb3_check_env(ProximityLake(size=6, map_seed=3))


def test_proximity_lake_rewards_each_cell_entered_by_its_closeness_to_the_goal():
    env = ProximityLake(size=10, map_seed=0)
    tiles = env.desc.ravel()
    goal = int(np.flatnonzero(tiles == b"G")[0])
    for cell in range(env.n_cells):
        distance = abs(cell // 10 - goal // 10) + abs(cell % 10 - goal % 10)
        expected = 1.0 if cell == goal else 1 / (1 + distance) - (tiles[cell] == b"H") / 20
        assert env._enter_reward[cell] == pytest.approx(expected)


def test_proximity_lake_without_the_slip_is_its_decision():
    env = ProximityLake(slip_prob=0.0)
    for obs, action, next_obs, info in transitions(env, 500):
        np.testing.assert_array_equal(next_obs, env.post_decision(obs, action))
        np.testing.assert_array_equal(info["post_decision_obs"], next_obs)


def test_proximity_lake_reward_is_the_decisions_plus_the_slips():
    env = ProximityLake(map_seed=2)
    slipped = total = 0
    obs, _ = env.reset(seed=4)
    rng = np.random.default_rng(4)
    for _ in range(4000):
        action = int(rng.integers(4))
        next_obs, reward, terminated, truncated, info = env.step(action)
        decided = env.post_decision(obs, action)
        np.testing.assert_array_equal(info["post_decision_obs"], decided)
        assert info["post_decision_reward"] == pytest.approx(env.post_decision_reward(obs, action))
        cell, landed = int(decided.argmax()), int(next_obs.argmax())
        if landed == cell:  # no slip, or a slip into a wall
            assert reward in (pytest.approx(info["post_decision_reward"]),
                              pytest.approx(2 * info["post_decision_reward"]))
        else:  # the slip moved the agent one cell on from the decided one
            assert landed in {int(env.post_decision(decided, b).argmax()) for b in range(4)}
            assert reward == pytest.approx(info["post_decision_reward"] + env._enter_reward[landed])
            slipped += 1
        total += 1
        obs = env.reset()[0] if terminated or truncated else next_obs
    assert 0.2 < slipped / total < 0.5  # slip_prob 0.5, less the slips a wall absorbs


def test_proximity_lake_map_and_slips_are_fixed_by_map_seed():
    a, b, c = ProximityLake(map_seed=5), ProximityLake(map_seed=5), ProximityLake(map_seed=6)
    np.testing.assert_array_equal(a.desc, b.desc)
    np.testing.assert_array_equal(a._slip_dirs, b._slip_dirs)
    assert not np.array_equal(a.desc, c.desc)
    batched = a.post_decision_reward(np.eye(a.n_cells)[:4], np.arange(4))
    assert batched.shape == (4,)
