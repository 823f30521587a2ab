"""The lot-sizing environment: dynamics, costs, seeding, instances, checkers."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from conftest import make_algo

import ctrlrl.envs  # noqa: F401  (registers the ids)
from ctrlrl.core.errors import UserError
from ctrlrl.envs.lot_sizing import INSTANCE_DIR, REFERENCE_SIZES, Instance, LotSizingEnv, generate_instance


def play(env: LotSizingEnv, seed: int, steps: int, action_seed: int = 0):
    """Random play; yields (obs, action, next obs, reward, info) per step."""
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(action_seed)
    for _ in range(steps):
        action = rng.integers(0, env.action_space.nvec)
        next_obs, reward, _, truncated, info = env.step(action)
        yield obs, action, next_obs, reward, info
        obs = env.reset()[0] if truncated else next_obs


def test_passes_gymnasium_and_sb3_checkers():
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    check_env(gym.make("ctrlrl/LotSizing-25x15-v0").unwrapped)
    sb3_check_env(gym.make("ctrlrl/LotSizing-15x5-v0").unwrapped)


def test_stable_baselines3_ppo_trains_on_it():
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", gym.make("ctrlrl/LotSizing-15x5-v0"), n_steps=512, batch_size=128,
                n_epochs=1, seed=0, device="cpu")
    model.learn(2048)
    assert model.num_timesteps >= 2048


def test_ctrlrl_ppo_trains_on_it(tmp_path):
    algo = make_algo("ppo", tmp_path, env="ctrlrl/LotSizing-15x5-v0", total_steps=256).learn()
    assert algo.step == 256 and np.isfinite(float(algo.metrics["value_loss"]))
    algo.close()


@pytest.mark.parametrize("cap", ["after_demand", "before_demand"])
def test_zero_demand_reaches_the_post_decision_state(cap):
    """With no demand s' is s^x, floored and capped (which `before_demand` has done already)."""
    env = LotSizingEnv("20x10", demand="zero", inventory_cap=cap)
    n, max_inv = env.instance.n_items, env.instance.max_inv
    beyond = False
    for obs, action, next_obs, _, info in play(env, seed=1, steps=300):
        post = env.post_decision(obs, action)
        np.testing.assert_array_equal(info["post_decision_obs"], post)
        np.testing.assert_array_equal(next_obs[:n], np.clip(post[:n], 0, max_inv))
        np.testing.assert_array_equal(next_obs[n:], post[n:])
        beyond |= bool(np.any(post[:n] > max_inv) | np.any(post[:n] < 0))
        if cap == "before_demand":
            np.testing.assert_array_equal(next_obs, post)
            assert info["cost_lost_sales"] == 0.0
    assert beyond == (cap == "after_demand")  # only the reference's s^x leaves [0, max_inv]


def one_item_env(**kwargs) -> LotSizingEnv:
    """1 item, 1 machine making 10 a period (setup 5, losing 3 units); demand always 4."""
    inst = Instance(name="1x1", seed=0, holding=np.array([0.01]), lost_sales=np.array([0.5]),
                    setup_cost=np.array([[5.0]]), setup_loss=np.array([[3.0]]),
                    capacity=np.array([[10.0]]), max_inv=100, horizon=3)
    env = LotSizingEnv(inst, **kwargs)
    env._demand = lambda rng, size: np.full(size, 4)
    env.reset(seed=0)
    return env


@pytest.mark.parametrize(("cap", "inventory", "setup", "expected", "lost"), [
    # the reference: demand is served from all of I + production − loss, then the cap
    ("after_demand", 98, 1, 100, 0),  # 108 − 4 → capped at 100
    ("after_demand", 0, 0, 3, 0),  # 0 + 10 − 3 − 4
    ("before_demand", 98, 1, 96, 0),  # capped at 100 first, then − 4
])
def test_inventory_is_capped_after_demand_as_the_reference(cap, inventory, setup, expected, lost):
    env = one_item_env(inventory_cap=cap)
    env.obs = np.array([inventory, setup], np.float32)
    obs, _, _, _, info = env.step(np.array([1]))
    assert obs[0] == expected and info["cost_lost_sales"] == lost
    assert info["cost_holding"] == pytest.approx(0.01 * expected)


def test_a_setup_loss_deficit_is_a_lost_sale_as_the_reference():
    """Capacity 2 < loss 3 from empty stock: s^x holds −1, and demand 4 loses 5 units (before:
    s^x floored at 0, 4 lost)."""
    for cap, post, lost_units in (("after_demand", -1.0, 5), ("before_demand", 0.0, 4)):
        env = one_item_env(inventory_cap=cap)
        env.instance.capacity[0, 0] = 2.0
        env._capacity[0, 1] = 2.0
        env.obs = np.array([0, 0], np.float32)
        obs, _, _, _, info = env.step(np.array([1]))
        assert info["post_decision_obs"][0] == post and obs[0] == 0
        assert info["cost_lost_sales"] == pytest.approx(0.5 * lost_units)


@pytest.mark.parametrize("end", ["terminal", "truncated"])
def test_horizon_end_is_a_termination_as_the_reference(end):
    env = one_item_env(horizon_end=end)
    flags = [env.step(np.array([0]))[2:4] for _ in range(3)]
    assert flags[:2] == [(False, False)] * 2
    assert flags[2] == ((True, False) if end == "terminal" else (False, True))


def test_registered_ids_default_to_the_reference_dynamics():
    for env_id, cap, end in (("ctrlrl/LotSizing-15x5-v0", "after_demand", "terminal"),
                             ("ctrlrl/LotSizingCappedTruncated-15x5-v0", "before_demand",
                              "truncated")):
        env = gym.make(env_id).unwrapped
        assert (env.inventory_cap, env.horizon_end) == (cap, end)
    with pytest.raises(UserError, match=r"inventory_cap='never'.*after_demand, before_demand"):
        LotSizingEnv("15x5", inventory_cap="never")


def test_post_decision_reward_is_minus_the_setup_cost():
    env = LotSizingEnv("25x10")
    rows = list(play(env, seed=6, steps=60))
    obs = np.stack([r[0] for r in rows])
    actions = np.stack([r[1] for r in rows])
    batched = env.post_decision_reward(obs, actions)
    assert batched.shape == (60,) and (batched < 0).any()
    for k, (*_, info) in enumerate(rows):
        assert batched[k] == info["post_decision_reward"] == -info["cost_setup"]


def test_post_decision_is_pure_and_batched():
    env = LotSizingEnv("25x10")
    rows = list(play(env, seed=2, steps=50))
    obs = np.stack([r[0] for r in rows])
    actions = np.stack([r[1] for r in rows])
    before = obs.copy()
    batched = env.post_decision(obs, actions)
    np.testing.assert_array_equal(obs, before)  # inputs untouched
    for k, (o, a, *_rest, info) in enumerate(rows):
        np.testing.assert_array_equal(batched[k], env.post_decision(o, a))
        np.testing.assert_array_equal(batched[k], info["post_decision_obs"])


@pytest.mark.parametrize("demand", ["binomial:20:0.4", "poisson:30", "zero"])
def test_costs_add_up_and_inventory_stays_in_bounds(demand):
    env = LotSizingEnv("30x15", demand=demand)
    n = env.instance.n_items
    for _, action, next_obs, reward, info in play(env, seed=3, steps=400):
        assert info["cost_setup"] + info["cost_lost_sales"] + info["cost_holding"] == \
            pytest.approx(-reward, abs=1e-9)
        assert np.all(next_obs[:n] >= 0) and np.all(next_obs[:n] <= env.instance.max_inv)
        np.testing.assert_array_equal(next_obs[n:], action)  # setups follow the action
        assert env.observation_space.contains(next_obs)


def test_setup_cost_only_when_a_machine_switches_to_an_item():
    env = LotSizingEnv("15x5", demand="zero")
    obs, _ = env.reset(seed=0)
    setups = obs[15:].astype(int)
    _, cost = env.decision(obs, setups)  # keep every setup: no cost
    assert cost == 0.0
    _, cost = env.decision(obs, np.zeros(5, dtype=int))  # idle everything: no cost
    assert cost == 0.0
    switch = setups.copy()
    switch[0] = 1 if setups[0] != 1 else 2
    _, cost = env.decision(obs, switch)
    assert cost == env.instance.setup_cost[0, switch[0] - 1]


def test_same_seed_same_demand_path_and_different_seed_differs():
    def path(seed):
        return [(r[2].tolist(), r[3]) for r in play(LotSizingEnv("20x10"), seed=seed, steps=150)]

    assert path(4) == path(4)
    assert path(4) != path(5)


@pytest.mark.parametrize(("n", "m"), REFERENCE_SIZES)
def test_generator_reproduces_the_instance_files(n, m):
    data = json.loads((INSTANCE_DIR / f"{n}x{m}.json").read_text())
    assert generate_instance(n, m, data["seed"]).to_json() == data
    inst = Instance.from_json(data)
    assert inst.capacity.shape == (m, n) and np.all(inst.capacity.sum(0) > 0)
    assert 0.2 < np.mean(inst.capacity == 0) < 0.6  # ~40% of machine-item pairs cannot produce


def test_bad_instance_or_demand_is_a_clear_error():
    with pytest.raises(UserError, match="not found; use one of"):
        LotSizingEnv("7x7")
    with pytest.raises(UserError, match="binomial:N:P"):
        LotSizingEnv("15x5", demand="normal:3")


def test_heuristic_beats_random_play_and_makes_only_what_machines_can(capsys):
    """The sanity baseline: feasible actions, far cheaper than random play, and on the CLI."""
    from ctrlrl import api, cli

    env = LotSizingEnv("25x15")
    obs, _ = env.reset(seed=0)
    for _ in range(30):
        action = env.heuristic_action(obs)
        producing = action > 0
        assert np.all(env.instance.capacity[np.flatnonzero(producing), action[producing] - 1] > 0)
        obs = env.step(action)[0]
    heuristic = api.evaluate_heuristic("ctrlrl/LotSizing-25x15-v0", episodes=4, seed=0)
    random = [sum(r[3] for r in play(LotSizingEnv("25x15"), seed=s, steps=100, action_seed=s))
              for s in range(4)]
    assert heuristic.mean() > 2 * np.mean(random)  # costs: random play pays several times more
    assert cli.main(["eval", "--policy", "heuristic", "--env", "ctrlrl/LotSizing-15x5-v0",
                     "--episodes", "2"]) == 0
    assert "heuristic on ctrlrl/LotSizing-15x5-v0: mean return" in capsys.readouterr().out
