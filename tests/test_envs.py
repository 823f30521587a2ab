"""VecEnv: same-step autoreset, exact snapshots, normalisation statistics."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from conftest import arrays_equal

from ctrlrl.core.checkpoint import load_checkpoint, save_checkpoint
from ctrlrl.core.envs import RunningMeanStd, VecEnv
from ctrlrl.core.errors import UserError


def test_same_step_autoreset_next_obs_is_true_final_obs():
    """A finished episode's transition ends in its real last obs; `obs` is already the reset obs.

    Pinned against a plain gymnasium env stepped with the same seed and actions: with the
    gymnasium ≥ 1.1 default (next-step autoreset) this would not hold.
    """
    horizon, seed = 5, 123
    env = VecEnv("Pendulum-v1", 2, env_kwargs={"max_episode_steps": horizon})
    ref = gym.make("Pendulum-v1", max_episode_steps=horizon)
    try:
        obs = env.reset(seed)
        ref_obs, _ = ref.reset(seed=seed)
        assert arrays_equal(obs[0], ref_obs.astype(np.float32))
        rng = np.random.default_rng(0)
        for t in range(1, 2 * horizon + 1):
            action = rng.uniform(-2, 2, (2, 1)).astype(np.float32)
            step = env.step(action)
            ref_next, ref_rew, _, ref_trunc, _ = ref.step(action[0])
            assert step.raw_reward[0] == pytest.approx(ref_rew, rel=1e-6)
            assert arrays_equal(step.next_obs[0], ref_next.astype(np.float32))
            ended = t % horizon == 0
            assert step.truncated.tolist() == [ended, ended]
            assert not step.terminated.any()
            assert bool(ref_trunc) == ended
            if ended:
                # the real last obs differs from the reset obs handed out to act on next
                assert not np.array_equal(step.next_obs, step.obs)
                ref_obs, _ = ref.reset()  # same env RNG stream as the sub-env's own autoreset
                assert arrays_equal(step.obs[0], ref_obs.astype(np.float32))
                assert [length for _, length in step.episodes] == [horizon, horizon]
            else:
                assert arrays_equal(step.next_obs, step.obs)
                assert step.episodes == []
            # no "dummy" step after an episode end: every step is a real transition from obs
            obs = step.obs
    finally:
        env.close()
        ref.close()


def test_episode_statistics_use_raw_rewards():
    env = VecEnv("Pendulum-v1", 1, normalize_reward=True, env_kwargs={"max_episode_steps": 7})
    try:
        env.reset(0)
        total, episodes = 0.0, []
        for _ in range(7):
            step = env.step(np.zeros((1, 1), np.float32))
            total += float(step.raw_reward[0])
            episodes += step.episodes
            assert not np.allclose(step.reward, step.raw_reward)  # rewards were scaled
        assert len(episodes) == 1
        assert episodes[0][0] == pytest.approx(total)
        assert episodes[0][1] == 7
    finally:
        env.close()


def _roll(env: VecEnv, actions: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    out = []
    for a in actions:
        s = env.step(a)
        out.append((s.obs, s.next_obs, s.reward, s.raw_reward, s.terminated, s.truncated,
                    np.array(s.episodes, dtype=np.float64).reshape(-1, 2)))
    return out


def _assert_same_trajectory(a, b) -> None:
    assert len(a) == len(b)
    for t, (xa, xb) in enumerate(zip(a, b, strict=True)):
        for i, (u, v) in enumerate(zip(xa, xb, strict=True)):
            assert arrays_equal(u, v), f"step {t}, field {i} differs"


@pytest.mark.parametrize(("env_id", "warmup", "k"), [
    ("Pendulum-v1", 150, 100),  # crosses the 200-step time limit after the snapshot
    ("Hopper-v5", 15, 120),  # random actions: early terminations and autoresets
])
@pytest.mark.parametrize("through_file", [False, True])
def test_snapshot_restores_bit_identical_stepping(env_id, warmup, k, through_file, tmp_path):
    kwargs = dict(normalize_obs=True, normalize_reward=True)
    env = VecEnv(env_id, 2, **kwargs)
    fresh = VecEnv(env_id, 2, **kwargs)
    try:
        rng = np.random.default_rng(42)
        low, high = env.action_space.low, env.action_space.high
        env.reset(7)
        for _ in range(warmup):
            env.step(rng.uniform(low, high, (2, *low.shape)).astype(np.float32))
        state = env.state_dict()
        obs_at_snapshot = env.obs.copy()
        if through_file:  # the way a checkpoint carries it: tensors only, weights_only load
            save_checkpoint(tmp_path / "env.pt", {"env": state})
            state = load_checkpoint(tmp_path / "env.pt")["env"]
        actions = rng.uniform(low, high, (k, 2, *low.shape)).astype(np.float32)
        expected = _roll(env, actions)
        assert any(len(x[-1]) for x in expected), "no episode ended: test would be too weak"

        # a fresh env somewhere else entirely: other seed, other progress
        fresh.reset(999)
        for a in actions[:3]:
            fresh.step(a[::-1].copy())
        fresh.load_state_dict(state)
        assert arrays_equal(fresh.obs, obs_at_snapshot)
        got = _roll(fresh, actions)
        _assert_same_trajectory(expected, got)
        assert arrays_equal(fresh.obs_rms.mean, env.obs_rms.mean)
        assert fresh.ret_rms.var == env.ret_rms.var
    finally:
        env.close()
        fresh.close()


def test_snapshot_restores_current_obs(tmp_path):
    env = VecEnv("Pendulum-v1", 2)
    fresh = VecEnv("Pendulum-v1", 2)
    try:
        env.reset(1)
        env.step(np.ones((2, 1), np.float32))
        fresh.reset(2)
        fresh.load_state_dict(env.state_dict())
        assert arrays_equal(fresh.obs, env.obs)
    finally:
        env.close()
        fresh.close()


def test_snapshot_refuses_other_n_envs():
    env = VecEnv("Pendulum-v1", 2)
    other = VecEnv("Pendulum-v1", 3)
    try:
        env.reset(0)
        other.reset(0)
        with pytest.raises(UserError, match="n_envs"):
            other.load_state_dict(env.state_dict())
    finally:
        env.close()
        other.close()


def test_running_mean_std_matches_numpy():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(1000, 4))
    rms = RunningMeanStd((4,))
    for chunk in np.array_split(data, 17):
        rms.update(chunk)
    np.testing.assert_allclose(rms.mean, data.mean(0), rtol=1e-5)
    np.testing.assert_allclose(rms.var, data.var(0), rtol=1e-4)
    assert rms.count == pytest.approx(1000, abs=1e-3)


def test_running_mean_std_round_trip():
    rng = np.random.default_rng(1)
    rms = RunningMeanStd((3,))
    rms.update(rng.normal(size=(50, 3)))
    copy = RunningMeanStd((3,))
    copy.load_state_dict(rms.state_dict())
    assert arrays_equal(copy.mean, rms.mean) and arrays_equal(copy.var, rms.var)
    assert copy.count == rms.count
    batch = rng.normal(size=(20, 3))
    rms.update(batch)
    copy.update(batch)
    assert arrays_equal(copy.mean, rms.mean) and arrays_equal(copy.var, rms.var)
    # the state dict is a snapshot, not a view
    state = rms.state_dict()
    rms.update(rng.normal(size=(5, 3)))
    assert not np.array_equal(state["mean"], rms.mean)


def test_vecenv_normalisation_stats_round_trip(tmp_path):
    env = VecEnv("Pendulum-v1", 2, normalize_obs=True, normalize_reward=True)
    fresh = VecEnv("Pendulum-v1", 2, normalize_obs=True, normalize_reward=True)
    try:
        env.reset(0)
        for _ in range(30):
            env.step(np.full((2, 1), 0.5, np.float32))
        assert env.obs_rms.count > 60  # statistics were updated while stepping
        save_checkpoint(tmp_path / "c.pt", {"env": env.state_dict()})
        fresh.reset(5)
        fresh.load_state_dict(load_checkpoint(tmp_path / "c.pt")["env"])
        for a, b in ((env.obs_rms, fresh.obs_rms), (env.ret_rms, fresh.ret_rms)):
            assert arrays_equal(np.asarray(a.mean), np.asarray(b.mean))
            assert arrays_equal(np.asarray(a.var), np.asarray(b.var))
            assert a.count == b.count
        raw = np.random.default_rng(0).normal(size=(4, 3))
        assert arrays_equal(env.normalize_obs(raw), fresh.normalize_obs(raw))
    finally:
        env.close()
        fresh.close()


def test_frozen_statistics_do_not_move():
    env = VecEnv("Pendulum-v1", 1, normalize_obs=True, normalize_reward=True)
    try:
        env.reset(0)
        env.training = False
        mean, count = env.obs_rms.mean.copy(), env.obs_rms.count
        ret_var = env.ret_rms.var
        for _ in range(10):
            env.step(np.zeros((1, 1), np.float32))
        assert arrays_equal(env.obs_rms.mean, mean) and env.obs_rms.count == count
        assert env.ret_rms.var == ret_var
    finally:
        env.close()


def test_unknown_env_id_is_a_user_error():
    with pytest.raises(UserError, match="NoSuchEnv-v0"):
        VecEnv("NoSuchEnv-v0", 1)


def test_snapshot_moves_between_async_and_sync():
    """vec_mode is a runtime setting: an async env's snapshot continues exactly in a sync one."""
    src = VecEnv("Pendulum-v1", 2, mode="async", normalize_obs=True)
    dst = VecEnv("Pendulum-v1", 2, mode="sync", normalize_obs=True)
    try:
        rng = np.random.default_rng(3)
        src.reset(4)
        for _ in range(190):
            src.step(rng.uniform(-2, 2, (2, 1)).astype(np.float32))
        state = src.state_dict()
        actions = rng.uniform(-2, 2, (20, 2, 1)).astype(np.float32)
        expected = _roll(src, actions)
        assert any(len(x[-1]) for x in expected)
        dst.reset(0)
        dst.load_state_dict(state)
        _assert_same_trajectory(expected, _roll(dst, actions))
    finally:
        src.close()
        dst.close()
