"""The offline loop, TD3+BC and BC on data the tests generate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import OFFLINE_DATA, assert_one_line_error, make_algo, read_metrics, run_cli

import ctrlrl
from ctrlrl.api import resume
from ctrlrl.core.errors import UserError
from ctrlrl.data import episode_returns, load, read_d4rl, write_d4rl
from ctrlrl.data.collect import replay_dataset


def test_td3bc_trains_and_logs_normalized_score(tmp_path):
    algo = make_algo("td3bc", tmp_path, total_steps=300, eval_every=150, eval_episodes=2)
    algo.learn()
    assert algo.step == algo.n_updates == 300
    rows = [r for r in read_metrics(tmp_path) if "eval/normalized_score" in r]
    assert [r["step"] for r in rows] == [150, 300]
    refs = (-20.272305, 3234.3)  # D4RL hopper
    for r in rows:
        expected = 100 * (r["eval/mean_reward"] - refs[0]) / (refs[1] - refs[0])
        assert r["eval/normalized_score"] == pytest.approx(expected)
    last = read_metrics(tmp_path)[-1]
    assert {"train/critic_loss", "train/actor_loss", "train/bc_loss", "train/lambda"} <= set(last)
    algo.close()


def test_buffer_holds_the_dataset_normalised_and_rescaled(tmp_path):
    algo = make_algo("td3bc", tmp_path, total_steps=1)
    algo.learn()
    data = load(str(OFFLINE_DATA), "Hopper-v5")
    obs = data.observations.astype(np.float64)
    mean, std = obs.mean(0), obs.std(0) + 1e-3
    np.testing.assert_allclose(algo.obs_stats.mean.numpy(), mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(algo.obs_stats.std.numpy(), std, rtol=1e-4, atol=1e-5)
    rows = algo.replay.storage.numpy()
    o, a = algo.obs_dim, algo.act_dim
    assert len(rows) == len(data.rewards)
    np.testing.assert_allclose(rows[:, :o], (obs - mean) / std, rtol=1e-4, atol=1e-4)
    # Hopper's box is [-1, 1]: actions unchanged; the terminal column is the dataset's
    np.testing.assert_allclose(rows[:, o:o + a], data.actions, atol=1e-6)
    np.testing.assert_array_equal(rows[:, -1], data.terminals)
    algo.close()


def test_actions_are_rescaled_from_the_env_box(tmp_path):
    """Pendulum acts in [-2, 2]: the buffer holds a / 2, and the policy's ±1 maps back to ±2."""
    n = 200
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n, 3)).astype(np.float32)
    actions = rng.uniform(-2, 2, size=(n, 1)).astype(np.float32)
    timeouts = np.zeros(n, bool)
    timeouts[99::100] = True
    path = tmp_path / "pendulum.hdf5"
    write_d4rl(path, {"observations": obs, "actions": actions, "rewards": np.zeros(n, np.float32),
                      "terminals": np.zeros(n, bool), "timeouts": timeouts,
                      "next_observations": obs})
    algo = make_algo("bc", tmp_path / "run", env="Pendulum-v1", dataset=str(path), total_steps=1,
                     normalize_states=False, keep_timeouts=True)  # every row in the buffer
    algo.learn()
    stored = algo.replay.storage[:, 3:4].numpy()
    np.testing.assert_allclose(stored, actions / 2, atol=1e-6)
    np.testing.assert_allclose(algo.to_env_action(np.array([[1.0], [-1.0]])), [[2.0], [-2.0]])
    algo.close()


def test_bc_fits_the_behaviour_policy(tmp_path):
    """Actions that are a fixed function of the state: BC's error falls far below the data's spread."""
    n = 2000
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(n, 3)).astype(np.float32)
    actions = np.tanh(obs @ np.array([[0.8], [-0.5], [0.3]], np.float32)) * 2
    path = tmp_path / "linear.hdf5"
    write_d4rl(path, {"observations": obs, "actions": actions, "rewards": np.zeros(n, np.float32),
                      "terminals": np.zeros(n, bool), "timeouts": np.ones(n, bool),
                      "next_observations": obs})
    algo = make_algo("bc", tmp_path / "run", env="Pendulum-v1", dataset=str(path),
                     total_steps=1500, batch_size=128, learning_rate=1e-3,
                     keep_timeouts=True)  # one-step episodes: keep them
    algo.learn()
    with torch.no_grad():
        pred = algo.predict(obs[:500])
    mse = float(np.mean((pred - actions[:500]) ** 2))
    assert mse < 0.02 * float(np.var(actions)), mse
    algo.close()


def test_bc_on_one_expert_trajectory_sees_only_that_episode(tmp_path):
    """`expert_trajectory=k`: the buffer holds episode k's rows and nothing else, as odice-il's."""
    raw = read_d4rl(OFFLINE_DATA)
    ends = np.flatnonzero(raw["terminals"] | raw["timeouts"])
    start, end = ends[1] + 1, ends[2] + 1  # the episode with index 2
    algo = make_algo("bc", tmp_path / "run", env="Hopper-v5", dataset=str(OFFLINE_DATA),
                     total_steps=10, expert_trajectory=2, normalize_states=False)
    algo.load_dataset()
    rows = algo.replay.storage.numpy()
    assert len(rows) == end - start
    o, a = algo.obs_dim, algo.act_dim
    np.testing.assert_allclose(rows[:, :o], raw["observations"][start:end], rtol=1e-6)
    np.testing.assert_allclose(rows[:, o:o + a], raw["actions"][start:end], rtol=1e-6)
    algo.close()
    for k, needle in ((99999, "expert_trajectory=99999; pick an index below"),
                      (-2, "expert_trajectory=-2 is out of range")):
        with pytest.raises(UserError, match=needle):
            make_algo("bc", tmp_path / f"bad{k}", env="Hopper-v5", dataset=str(OFFLINE_DATA),
                      total_steps=1, expert_trajectory=k).load_dataset()


def test_td3bc_q_term_is_invariant_to_the_q_scale(tmp_path):
    """λ = α / mean|Q| makes the actor's Q term −α·mean Q / mean|Q|: scaling Q changes nothing."""
    algo = make_algo("td3bc", tmp_path, total_steps=50)
    algo.learn()
    b = algo.replay.sample(64)
    bc = torch.nn.functional.mse_loss(algo.actor(b.obs), b.actions)
    before = algo.actor_loss(b)[0] - bc
    with torch.no_grad():
        algo.critic.weights[-1].mul_(7.0)  # every Q, and so every reward, scaled by 7
        algo.critic.biases[-1].mul_(7.0)
    after = algo.actor_loss(b)[0] - bc
    torch.testing.assert_close(before, after, rtol=1e-4, atol=1e-5)
    q = algo.critic(b.obs, algo.actor(b.obs))[0]
    torch.testing.assert_close(after, -2.5 * q.mean() / q.abs().mean(), rtol=1e-4, atol=1e-5)
    algo.close()


def test_loaded_policy_acts_without_the_dataset(tmp_path):
    algo = make_algo("td3bc", tmp_path / "run", total_steps=20)
    algo.learn()
    obs = np.random.default_rng(0).normal(size=(8, algo.obs_dim)).astype(np.float32)
    expected = algo.predict(obs)
    algo.close()
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "latest.pt", weights_only=True)
    # the dataset is not copied into checkpoints, only its digest
    assert ckpt["extra"] == {"dataset_digest": load(str(OFFLINE_DATA), "Hopper-v5").digest()}
    loaded = ctrlrl.load(tmp_path / "run")
    assert loaded.replay is None
    np.testing.assert_array_equal(loaded.predict(obs), expected)
    loaded.close()


def test_a_resumed_run_refuses_a_dataset_other_than_the_one_it_trained_on(tmp_path):
    """A dataset regenerated or edited between two sittings would mix two datasets in one run:
    the run dir records the rows' digest, and resume checks it before training on."""
    data = read_d4rl(OFFLINE_DATA)
    path = tmp_path / "hopper.hdf5"
    write_d4rl(path, data)
    algo = make_algo("td3bc", tmp_path / "run", total_steps=20, dataset=str(path))
    algo.learn()
    algo.close()
    digest = load(str(path), "Hopper-v5").digest()
    record = json.loads((tmp_path / "run" / "dataset.json").read_text())
    assert record == {"dataset": str(path), "sha256": digest, "transitions": len(load(str(path)))}
    write_d4rl(path, data)  # the same rows, written again: resumes
    resumed = resume(tmp_path / "run", total_steps=30)
    resumed.learn()
    assert resumed.step == 30
    resumed.close()
    data["rewards"][7] += 1.0  # one reward changed
    write_d4rl(path, data)
    assert load(str(path)).digest() != digest
    out = run_cli("train", "td3bc", "--resume", str(tmp_path / "run"), "--total-steps", "40")
    assert out.returncode == 2
    assert_one_line_error(out.stderr, str(path), "not the one this run trained on", digest[:12])
    assert read_metrics(tmp_path / "run")[-1]["step"] == 30


def test_offline_algorithm_needs_a_dataset(tmp_path):
    with pytest.raises(UserError, match="--dataset"):
        make_algo("td3bc", tmp_path, dataset="")


def test_cli_trains_offline_with_the_env_taken_from_the_dataset(tmp_path):
    out = run_cli("train", "td3bc", "--dataset", str(OFFLINE_DATA), "--total-steps", "60",
                  "--eval-every", "0", "--run-dir", str(tmp_path / "run"),
                  "--set", "hidden_sizes=[32,32]", "--set", "progress=false", timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Hopper-v5" in out.stdout
    bad = run_cli("train", "td3bc", "--dataset", str(tmp_path / "missing.hdf5"), "--env",
                  "Hopper-v5", "--run-dir", str(tmp_path / "bad"))
    assert bad.returncode == 2
    assert_one_line_error(bad.stderr, "missing.hdf5")
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_collect_cli_writes_a_d4rl_file(tmp_path):
    out = run_cli("collect", "--env", "Pendulum-v1", "--level", "random", "--size", "450",
                  "-o", str(tmp_path / "p.hdf5"), env={"CTRLRL_DATA": str(tmp_path / "data")})
    assert out.returncode == 0, out.stderr
    data = read_d4rl(tmp_path / "p.hdf5")
    assert len(data["rewards"]) == 450 and data["metadata/env_id"] == "Pendulum-v1"
    # Pendulum's time limit is 200: two complete episodes, the cut-off third ends the file
    np.testing.assert_array_equal(np.flatnonzero(data["timeouts"]), [199, 399, 449])
    assert not data["terminals"].any()
    np.testing.assert_array_equal(data["next_observations"][:199], data["observations"][1:200])
    assert (np.abs(data["actions"]) <= 2.0).all() and data["actions"].std() > 0.5
    bad = run_cli("collect", "--env", "Pendulum-v1", "--level", "median", "-o", str(tmp_path / "x"))
    assert bad.returncode == 2
    assert_one_line_error(bad.stderr, "median", "medium-replay")


def test_replay_buffer_dataset_recovers_episode_ends(tmp_path):
    """medium-replay: a SAC run's buffer, with episode ends found where next_obs breaks."""
    sac = make_algo("sac", tmp_path, env="Pendulum-v1", total_steps=450, learning_starts=1000)
    sac.learn()
    data = replay_dataset(sac)
    assert len(data["rewards"]) == 450
    np.testing.assert_array_equal(np.flatnonzero(data["timeouts"]), [199, 399, 449])
    assert (np.abs(data["actions"]) <= 2.0).all()  # env units, not the policy's [-1, 1]
    np.testing.assert_allclose(episode_returns(data)[0], data["rewards"][:200].sum(), rtol=1e-5)
    sac.close()
