"""GAE, the on-policy collector's truncation bootstrap, and the replay buffer."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import make_algo

from ctrlrl.core.buffers import ReplayBuffer, RolloutBuffer, compute_gae

# ---------------------------------------------------------------------------------------------
# compute_gae against a plain reference loop


def reference_gae(rewards, values, dones, last_values, gamma, lam):
    """Textbook GAE, one env and one step at a time, in Python floats."""
    steps, n_envs = rewards.shape
    adv = np.zeros((steps, n_envs), np.float64)
    for e in range(n_envs):
        gae = 0.0
        for t in reversed(range(steps)):
            next_value = float(last_values[e]) if t == steps - 1 else float(values[t + 1, e])
            alive = 0.0 if dones[t, e] else 1.0
            delta = float(rewards[t, e]) + gamma * next_value * alive - float(values[t, e])
            gae = delta + gamma * lam * alive * gae
            adv[t, e] = gae
    return adv, adv + values.astype(np.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_envs", [1, 3])
def test_compute_gae_matches_reference_random(seed, n_envs):
    rng = np.random.default_rng(seed)
    steps = 37
    rewards = rng.normal(size=(steps, n_envs))
    values = rng.normal(size=(steps, n_envs))
    dones = (rng.random((steps, n_envs)) < 0.15).astype(np.float64)
    last_values = rng.normal(size=n_envs)
    gamma, lam = 0.97, 0.9
    adv, ret = compute_gae(rewards, values, dones, last_values, gamma, lam)
    ref_adv, ref_ret = reference_gae(rewards, values, dones, last_values, gamma, lam)
    assert adv.shape == ret.shape == (steps, n_envs)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ret, ref_ret, rtol=1e-12, atol=1e-12)


def test_compute_gae_float32_like_the_rollout_buffer():
    """The buffer passes float32 rewards/dones and float32 values."""
    rng = np.random.default_rng(7)
    steps, n_envs = 64, 4
    rewards = rng.normal(size=(steps, n_envs)).astype(np.float32)
    values = rng.normal(size=(steps, n_envs)).astype(np.float32)
    dones = (rng.random((steps, n_envs)) < 0.1).astype(np.float32)
    last_values = rng.normal(size=n_envs).astype(np.float32)
    adv, ret = compute_gae(rewards, values, dones, last_values, 0.99, 0.95)
    ref_adv, ref_ret = reference_gae(rewards, values, dones, last_values, 0.99, 0.95)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ret, ref_ret, rtol=1e-4, atol=1e-4)


def test_compute_gae_hand_computed_termination_and_truncation():
    """Two envs, 3 steps, numbers worked out by hand.

    env 0 terminates at t=1: nothing flows from t=2 into t=1.
    env 1 is truncated at t=0 with the bootstrap already in the reward (r = 1 + γ·V(final) = 3).
    """
    gamma, lam = 0.5, 0.5
    rewards = np.array([[1.0, 3.0], [2.0, 1.0], [4.0, 1.0]])
    values = np.array([[0.5, 1.0], [1.0, 2.0], [2.0, 0.0]])
    dones = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    last_values = np.array([8.0, 4.0])
    adv, ret = compute_gae(rewards, values, dones, last_values, gamma, lam)
    # env 0: t=2: δ = 4 + .5·8 − 2 = 6 ; t=1 (done): δ = 2 − 1 = 1, A = 1 ;
    #        t=0: δ = 1 + .5·1 − .5 = 1, A = 1 + .25·1 = 1.25
    # env 1: t=2: δ = 1 + .5·4 − 0 = 3 ; t=1: δ = 1 + .5·0 − 2 = −1, A = −1 + .25·3 = −.25 ;
    #        t=0 (done): δ = 3 − 1 = 2, A = 2
    expected = np.array([[1.25, 2.0], [1.0, -0.25], [6.0, 3.0]])
    np.testing.assert_allclose(adv, expected)
    np.testing.assert_allclose(ret, expected + values)


def test_compute_gae_lambda_one_is_discounted_return_minus_value():
    rng = np.random.default_rng(3)
    steps = 10
    rewards = rng.normal(size=(steps, 1))
    values = rng.normal(size=(steps, 1))
    dones = np.zeros((steps, 1))
    last = rng.normal(size=1)
    _, ret = compute_gae(rewards, values, dones, last, 0.9, 1.0)
    mc = [sum(0.9**k * rewards[t + k, 0] for k in range(steps - t)) + 0.9 ** (steps - t) * last[0]
          for t in range(steps)]
    np.testing.assert_allclose(ret[:, 0], mc, rtol=1e-12)


def _rollout_adv_ret(buf):
    """Advantages and returns of a finished RolloutBuffer, flattened time-major."""
    if hasattr(buf, "all"):
        batch = buf.all()
        return batch.advantages, batch.returns
    flat = buf.flat()
    return flat["advantages"], flat["returns"]


def test_rollout_buffer_finish_uses_gae():
    rng = np.random.default_rng(11)
    steps, n_envs = 8, 2
    buf = RolloutBuffer(steps, n_envs, (3,), (1,), torch.device("cpu"))
    rewards = rng.normal(size=(steps, n_envs)).astype(np.float32)
    values = rng.normal(size=(steps, n_envs)).astype(np.float32)
    dones = (rng.random((steps, n_envs)) < 0.3).astype(np.float32)
    for t in range(steps):
        buf.add(np.zeros((n_envs, 3), np.float32), np.zeros((n_envs, 1), np.float32),
                np.zeros(n_envs, np.float32), values[t], rewards[t], dones[t])
    last = rng.normal(size=n_envs).astype(np.float32)
    buf.finish(last, 0.99, 0.95)
    ref_adv, ref_ret = reference_gae(rewards, values, dones, last, 0.99, 0.95)
    adv, ret = _rollout_adv_ret(buf)
    # flattening is time-major: row t*n_envs + e is (t, e)
    assert tuple(adv.shape) == (steps * n_envs,)
    np.testing.assert_allclose(adv.cpu().numpy().reshape(steps, n_envs), ref_adv,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret.cpu().numpy().reshape(steps, n_envs), ref_ret,
                               rtol=1e-5, atol=1e-5)
    assert buf.pos == 0


# ---------------------------------------------------------------------------------------------
# the collector folds γ·V(final obs) into the reward at a truncation, not at a termination


class CounterEnv(gym.Env):
    """obs = [t/10]; reward 1 per step; terminates after `terminate_at` steps (if given)."""

    def __init__(self, terminate_at: int | None = None):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.terminate_at = terminate_at
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        terminated = self.terminate_at is not None and self.t >= self.terminate_at
        return np.array([self.t / 10.0], np.float32), 1.0, terminated, False, {}


gym.register("CtrlrlTest/Truncated-v0", entry_point=CounterEnv, max_episode_steps=5)
gym.register("CtrlrlTest/Terminated-v0", entry_point=CounterEnv, max_episode_steps=100,
             kwargs={"terminate_at": 5})
# terminated and truncated on the same step: a termination, no bootstrap
gym.register("CtrlrlTest/Both-v0", entry_point=CounterEnv, max_episode_steps=5,
             kwargs={"terminate_at": 5})


def _one_rollout(env_id, tmp_path, n_envs=1):
    algo = make_algo("ppo", tmp_path / "run", env=env_id, n_steps=8, batch_size=8, n_envs=n_envs)
    algo.update = lambda data: {}  # keep the value net as it was while collecting
    algo.train_iteration()
    return algo


def _value(algo, x: float) -> float:
    with torch.no_grad():
        return float(algo.value(torch.tensor([[x]], dtype=torch.float32))[0])


def test_collector_bootstraps_truncation_from_final_obs(tmp_path):
    algo = _one_rollout("CtrlrlTest/Truncated-v0", tmp_path, n_envs=2)
    rewards, dones = algo.rollout.rewards, algo.rollout.dones
    gamma = algo.cfg.gamma
    v_final, v_reset = _value(algo, 0.5), _value(algo, 0.0)
    assert abs(v_final - v_reset) > 1e-4  # the test can tell which obs was used
    assert dones[:, 0].tolist() == [0, 0, 0, 0, 1, 0, 0, 0]
    for e in range(2):
        assert rewards[4, e] == pytest.approx(1.0 + gamma * v_final, rel=1e-5, abs=1e-6)
        assert rewards[4, e] != pytest.approx(1.0 + gamma * v_reset, rel=1e-5, abs=1e-6)
        other = np.delete(rewards[:, e], 4)
        assert np.all(other == 1.0)
    assert algo.step == 16
    assert list(algo.episodes) == [(5.0, 5), (5.0, 5)]


@pytest.mark.parametrize("env_id", ["CtrlrlTest/Terminated-v0", "CtrlrlTest/Both-v0"])
def test_collector_does_not_bootstrap_termination(tmp_path, env_id):
    algo = _one_rollout(env_id, tmp_path)
    rewards, dones = algo.rollout.rewards[:, 0], algo.rollout.dones[:, 0]
    assert dones.tolist() == [0, 0, 0, 0, 1, 0, 0, 0]
    assert np.all(rewards == 1.0)


# ---------------------------------------------------------------------------------------------
# replay buffer


def _transition_block(start: int, n: int, obs_dim=3, act_dim=2):
    """n transitions numbered start.. ; every field encodes the number so rows are traceable."""
    ids = np.arange(start, start + n, dtype=np.float32)
    obs = ids[:, None] + np.zeros((n, obs_dim), np.float32)
    act = -ids[:, None] + np.zeros((n, act_dim), np.float32)
    rew = ids * 10
    nxt = ids[:, None] + 0.5 + np.zeros((n, obs_dim), np.float32)
    term = (ids % 2 == 0)
    return obs, act, rew, nxt, term


@pytest.mark.parametrize("chunks", [[2, 2, 2, 1], [2, 2, 2, 2], [1, 1, 1, 1, 1, 1, 1]])
def test_replay_buffer_wraps_around(chunks):
    capacity = 5
    buf = ReplayBuffer(capacity, 3, 2, torch.device("cpu"))
    model = [None] * capacity  # a plain circular list as the reference
    pos, size, start = 0, 0, 0
    for n in chunks:
        buf.add(*_transition_block(start, n))
        for i in range(start, start + n):
            model[pos] = i
            pos = (pos + 1) % capacity
            size = min(size + 1, capacity)
        start += n
        assert buf.pos == pos
        assert buf.size == size
    assert buf.size == capacity
    ids = buf.storage[:, 0].numpy()
    assert ids.tolist() == model
    o, a, r, o2, d = (buf.storage[:, s] for s in buf._slices)
    ids_t = torch.tensor(model, dtype=torch.float32)
    assert torch.equal(o, ids_t[:, None].expand(-1, 3))
    assert torch.equal(a, -ids_t[:, None].expand(-1, 2))
    assert torch.equal(r[:, 0], ids_t * 10)
    assert torch.equal(o2, ids_t[:, None].expand(-1, 3) + 0.5)
    assert torch.equal(d[:, 0], (ids_t % 2 == 0).float())


def test_replay_buffer_seven_transitions_in_pairs():
    """Wrap-around with a partial last block: capacity 5, 7 transitions added two per step."""
    buf = ReplayBuffer(5, 3, 2, torch.device("cpu"))
    for start, n in ((0, 2), (2, 2), (4, 2), (6, 1)):
        buf.add(*_transition_block(start, n))
    # 0,1 → rows 0,1; 2,3 → rows 2,3; 4 → row 4, 5 → row 0 (wrap); 6 → row 1
    assert buf.storage[:, 0].tolist() == [5, 6, 2, 3, 4]
    assert buf.size == 5
    assert buf.pos == 2


def test_replay_buffer_sample_shapes_dtypes_and_content():
    buf = ReplayBuffer(100, 3, 2, torch.device("cpu"))
    buf.add(*_transition_block(0, 4))
    buf.add(*_transition_block(4, 3))
    torch.manual_seed(0)
    b = buf.sample(64)
    assert b.obs.shape == (64, 3) and b.next_obs.shape == (64, 3)
    assert b.actions.shape == (64, 2)
    assert b.rewards.shape == (64,) and b.terminated.shape == (64,)
    for t in b:
        assert t.dtype == torch.float32
        assert t.device.type == "cpu"
    ids = b.obs[:, 0]
    # only filled rows are sampled, and every field belongs to the same transition
    assert torch.all((ids >= 0) & (ids < 7))
    assert torch.equal(b.actions[:, 0], -ids)
    assert torch.equal(b.rewards, ids * 10)
    assert torch.equal(b.next_obs[:, 0], ids + 0.5)
    assert torch.equal(b.terminated, (ids % 2 == 0).float())
    assert len(set(ids.tolist())) > 1


def test_replay_buffer_state_dict_round_trip():
    buf = ReplayBuffer(5, 3, 2, torch.device("cpu"))
    for start in range(0, 8, 2):
        buf.add(*_transition_block(start, 2))
    partial = ReplayBuffer(6, 3, 2, torch.device("cpu"))  # not full: only `size` rows saved
    partial.add(*_transition_block(0, 3))
    for src in (buf, partial):
        state = src.state_dict()
        dst = ReplayBuffer(src.capacity, 3, 2, torch.device("cpu"))
        dst.add(*_transition_block(100, 1))  # junk that must be overwritten
        dst.load_state_dict(state)
        assert (dst.pos, dst.size) == (src.pos, src.size)
        assert torch.equal(dst.storage[: src.size], src.storage[: src.size])
        torch.manual_seed(5)
        b1 = src.sample(16)
        torch.manual_seed(5)
        b2 = dst.sample(16)
        for x, y in zip(b1, b2, strict=True):
            assert torch.equal(x, y)
        # adding after a restore continues at the same position
        src.add(*_transition_block(50, 2))
        dst.add(*_transition_block(50, 2))
        assert torch.equal(dst.storage, src.storage)


def test_replay_buffer_refuses_mismatched_state():
    buf = ReplayBuffer(5, 3, 2, torch.device("cpu"))
    buf.add(*_transition_block(0, 2))
    with pytest.raises(ValueError):
        ReplayBuffer(5, 4, 2, torch.device("cpu")).load_state_dict(buf.state_dict())
    big = ReplayBuffer(10, 3, 2, torch.device("cpu"))
    big.add(*_transition_block(0, 8))
    with pytest.raises(ValueError):
        ReplayBuffer(5, 3, 2, torch.device("cpu")).load_state_dict(big.state_dict())
