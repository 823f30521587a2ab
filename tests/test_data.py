"""The offline data layer: D4RL-format files, task names, scores and Minari."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from conftest import arrays_equal, assert_one_line_error, make_algo, read_metrics

from ctrlrl.core.errors import UserError
from ctrlrl.data import (
    ENV_OF_TASK,
    REF_SCORES,
    data_dir,
    dataset_env,
    load,
    normalized_score,
    read_d4rl,
    reference_scores,
    task_env,
    validate_d4rl,
    write_d4rl,
)


def d4rl_data(n: int = 20, obs_dim: int = 3, act_dim: int = 1, seed: int = 0, bound: float = 1.0,
              **extra: Any) -> dict[str, Any]:
    """A valid D4RL-format dict: episodes of 5 steps ending by timeout."""
    rng = np.random.default_rng(seed)
    timeouts = np.zeros(n, bool)
    timeouts[4::5] = True
    return {"observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
            "actions": rng.uniform(-bound, bound, size=(n, act_dim)).astype(np.float32),
            "rewards": rng.normal(size=n).astype(np.float32),
            "terminals": np.zeros(n, bool), "timeouts": timeouts, **extra}


def user_error(fn, *args: Any, **kwargs: Any) -> str:
    """The message of the UserError `fn` raises, checked to be one line."""
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert_one_line_error(message)
    return message


# ---------------------------------------------------------------- 1. files


def test_write_read_round_trip_keeps_every_key_dtype_and_value(tmp_path):
    rng = np.random.default_rng(1)
    data: dict[str, Any] = {
        **d4rl_data(7),
        "next_observations": rng.normal(size=(7, 3)).astype(np.float32),
        "infos/qpos": rng.normal(size=(7, 4)),  # float64
        "infos/action_log_probs": rng.normal(size=7).astype(np.float32),
        "metadata/policy/fc0/weight": rng.normal(size=(4, 3)).astype(np.float32),
        "metadata/policy/fc0/bias": np.arange(4, dtype=np.int16),
        "metadata/algorithm": "SAC",
        "metadata/env_id": "Hopper-v5",
        "metadata/names": np.array(["a", "bb"]),
        "metadata/seed": np.int64(3),
        "metadata/frac": 0.5,
        "metadata/flag": np.bool_(True),
    }
    path = tmp_path / "sub" / "data.hdf5"
    write_d4rl(path, data)
    back = read_d4rl(path)
    assert set(back) == set(data)
    for key, value in data.items():
        if isinstance(value, str):
            assert isinstance(back[key], str) and back[key] == value, key
        else:
            assert np.asarray(back[key]).dtype == np.asarray(value).dtype, key
            assert np.array_equal(back[key], value), key
    with h5py.File(path, "r") as f:  # 'a/b' keys are real groups, as D4RL's files have them
        assert isinstance(f["infos"], h5py.Group) and isinstance(f["metadata/policy/fc0"], h5py.Group)
    assert read_d4rl(path, keys=["rewards", "metadata/env_id"]).keys() == {"rewards", "metadata/env_id"}
    assert [p.name for p in path.parent.iterdir()] == ["data.hdf5"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_untouched(tmp_path):
    path = tmp_path / "data.hdf5"
    write_d4rl(path, d4rl_data(10))
    before = path.read_bytes()
    message = user_error(write_d4rl, path, {**d4rl_data(10), "infos/bad": np.array([{}, None])})
    assert "'infos/bad'" in message
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["data.hdf5"]


# ---------------------------------------------------------------- 2. validation


def test_missing_timeouts_is_named(tmp_path):
    data = d4rl_data()
    del data["timeouts"]
    path = tmp_path / "no-timeouts.hdf5"
    write_d4rl(path, data)
    message = user_error(load, str(path))
    assert "'timeouts'" in message and "next_observations is optional" in message and str(path) in message


def test_mismatched_lengths_name_the_key_and_both_lengths():
    data = d4rl_data(20)
    data["actions"] = data["actions"][:19]
    message = user_error(validate_d4rl, data, "x.hdf5")
    assert "'actions' has 19 rows" in message and "'observations' has 20" in message


@pytest.mark.parametrize(("key", "index", "value"), [("observations", 17, np.nan), ("rewards", 5, np.inf),
                                                     ("next_observations", 3, -np.inf)])
def test_nonfinite_values_name_the_key_and_first_bad_index(tmp_path, key, index, value):
    data = d4rl_data(20)
    data["next_observations"] = data["observations"].copy()
    data[key] = data[key].copy()
    data[key][index] = value
    data[key][index + 1] = value  # only the first bad row is named
    path = tmp_path / "bad.hdf5"
    write_d4rl(path, data)
    message = user_error(load, str(path))
    assert f"'{key}' has NaN or inf at index {index};" in message


@pytest.mark.parametrize(("change", "needle"), [
    ({"rewards": np.zeros((20, 1), np.float32)}, "'rewards' has shape (20, 1)"),
    ({"observations": np.array(["a"] * 20)}, "'observations' has dtype"),
    ({"terminals": np.full(20, 2.0)}, "'terminals' holds 2.0 at index 0"),
    ({"next_observations": np.zeros((20, 4), np.float32)}, "'next_observations' has 4 columns"),
])
def test_other_malformed_keys_are_named(change, needle):
    message = user_error(validate_d4rl, {**d4rl_data(20), **change}, "x.hdf5")
    assert needle in message


# ---------------------------------------------------------------- 3. transition semantics


def two_episodes() -> dict[str, np.ndarray]:
    """Episode A = rows 0-2 (ends by timeout), B = rows 3-4 (ends terminal), C = row 5 (unfinished)."""
    obs = np.arange(6, dtype=np.float32)[:, None] * np.array([[1.0, 10.0]], np.float32)
    return {"observations": obs, "actions": -obs[:, :1],
            "rewards": np.array([1, 2, 4, 8, 16, 32], np.float32),
            "terminals": np.array([0, 0, 0, 0, 1, 0], bool),
            "timeouts": np.array([0, 0, 1, 0, 0, 0], bool)}


def test_without_next_observations_timeout_and_last_rows_are_dropped(tmp_path):
    raw = two_episodes()
    path = tmp_path / "two.hdf5"
    write_d4rl(path, raw)
    data = load(str(path))
    rows = [0, 1, 3, 4]  # row 2 ends by timeout (its successor is B's start), row 5 is last
    np.testing.assert_array_equal(data.observations, raw["observations"][rows])
    np.testing.assert_array_equal(data.next_observations, raw["observations"][[1, 2, 4, 5]])
    np.testing.assert_array_equal(data.actions, raw["actions"][rows])
    np.testing.assert_array_equal(data.rewards, [1, 2, 8, 16])
    np.testing.assert_array_equal(data.terminals, [0, 0, 0, 1])
    np.testing.assert_array_equal(data.episode_returns, [7.0, 24.0])  # C is unfinished
    for arr in (data.observations, data.actions, data.rewards, data.next_observations, data.terminals):
        assert arr.dtype == np.float32
    assert data.episode_returns.dtype == np.float64
    assert data.env_id is None and data.source == str(path) and len(data) == 4


def qlearning_rows(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """D4RL's `qlearning_dataset` (terminate_on_end=False) restated as its loop: rows 0..N-2, next
    observation = the next row's, a timeouts row skipped, done = terminals."""
    out: dict[str, list] = {"observations": [], "next_observations": [], "actions": [], "rewards": [],
                            "terminals": []}
    for i in range(len(data["rewards"]) - 1):
        if data["timeouts"][i]:
            continue
        out["observations"].append(data["observations"][i])
        out["next_observations"].append(data["observations"][i + 1])
        out["actions"].append(data["actions"][i])
        out["rewards"].append(data["rewards"][i])
        out["terminals"].append(bool(data["terminals"][i]))
    return {k: np.array(v) for k, v in out.items()}


def test_d4rl_files_give_qlearning_dataset_rows_even_with_next_observations(tmp_path):
    """A file's next_observations do not change the rows: D4RL's loader never reads them."""
    raw = two_episodes()
    raw["next_observations"] = raw["observations"] + 0.5
    path = tmp_path / "two-next.hdf5"
    write_d4rl(path, raw)
    data = load(str(path))
    ref = qlearning_rows(raw)
    for key in ("observations", "next_observations", "actions", "rewards", "terminals"):
        np.testing.assert_array_equal(getattr(data, key), ref[key], err_msg=key)
    # and on random episodes with terminals and timeouts, with and without next_observations
    rng = np.random.default_rng(3)
    rand = d4rl_data(40, seed=3)
    rand["terminals"] = rng.random(40) < 0.1
    rand["timeouts"] &= ~rand["terminals"]
    for extra in ({}, {"next_observations": rng.normal(size=(40, 3)).astype(np.float32)}):
        write_d4rl(tmp_path / "rand.hdf5", {**rand, **extra})
        data, ref = load(str(tmp_path / "rand.hdf5")), qlearning_rows(rand)
        for key in ("observations", "next_observations", "actions", "rewards", "terminals"):
            np.testing.assert_array_equal(getattr(data, key), ref[key], err_msg=key)


def test_keep_timeouts_keeps_every_row_of_a_file_with_next_observations(tmp_path):
    raw = two_episodes()
    raw["next_observations"] = raw["observations"] + 0.5
    path = tmp_path / "two-next.hdf5"
    write_d4rl(path, raw)
    data = load(str(path), keep_timeouts=True)
    np.testing.assert_array_equal(data.observations, raw["observations"])
    np.testing.assert_array_equal(data.next_observations, raw["next_observations"])
    np.testing.assert_array_equal(data.rewards, raw["rewards"])
    np.testing.assert_array_equal(data.terminals, [0, 0, 0, 0, 1, 0])  # the timeout row bootstraps
    np.testing.assert_array_equal(data.episode_returns, [7.0, 24.0])
    # without next_observations a timeout row has no successor: dropped either way
    del raw["next_observations"]
    write_d4rl(path, raw)
    np.testing.assert_array_equal(load(str(path), keep_timeouts=True).rewards, [1, 2, 8, 16])


def test_keep_timeouts_setting_reaches_the_offline_buffer(tmp_path):
    raw = d4rl_data(20, bound=2.0)  # 4 episodes of 5 steps ending by timeout
    raw["next_observations"] = np.roll(raw["observations"], -1, axis=0)
    path = tmp_path / "pendulum.hdf5"
    write_d4rl(path, raw)
    sizes = {}
    for keep in (False, True):
        algo = make_algo("td3bc", tmp_path / f"run{keep}", env="Pendulum-v1", dataset=str(path),
                         keep_timeouts=keep)
        algo.load_dataset()
        sizes[keep] = len(algo.replay.storage)
        algo.close()
    assert sizes == {False: 20 - 4, True: 20}  # timeout rows (the last among them) dropped by default


# ---------------------------------------------------------------- 4. scores and task names


def test_normalized_score_maps_reference_min_and_max_to_0_and_100():
    assert set(REF_SCORES) == set(ENV_OF_TASK)
    for task, (lo, hi) in REF_SCORES.items():
        env = ENV_OF_TASK[task]
        assert reference_scores(env) == (lo, hi)
        assert reference_scores(env.rsplit("-v", 1)[0] + "-v3") == (lo, hi)  # any version
        assert normalized_score(env, lo) == pytest.approx(0.0, abs=1e-9)
        assert normalized_score(env, hi) == pytest.approx(100.0)
        assert isinstance(normalized_score(env, hi), float)
        np.testing.assert_allclose(normalized_score(env, np.array([lo, (lo + hi) / 2, hi])), [0, 50, 100])
    assert reference_scores("Humanoid-v5") is None
    assert "'Humanoid-v5'" in user_error(normalized_score, "Humanoid-v5", 1.0)


def test_task_env_maps_d4rl_tasks_to_gymnasium_ids():
    assert task_env("hopper-medium-v2") == "Hopper-v5"
    assert task_env("halfcheetah-medium-replay-v2") == "HalfCheetah-v5"
    assert task_env("walker2d-medium-expert-v2") == "Walker2d-v4"  # v5 changed the feet's friction
    assert task_env("ant-random-v2") == "Ant-v5"
    message = user_error(task_env, "pen-human-v1")
    assert "'pen-human-v1'" in message and "hopper" in message and "halfcheetah" in message


# ---------------------------------------------------------------- 5. Minari


@pytest.mark.filterwarnings("ignore::UserWarning")  # minari asks for author, description, ...
def test_minari_dataset_loads_as_transitions(tmp_path, monkeypatch):
    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    env = gym.make("Pendulum-v1")
    env.action_space.seed(0)
    episodes, buffers = [], []
    # (steps, terminated, truncated): a time-limit end, a terminal end, an unfinished episode
    for i, (steps, term, trunc) in enumerate([(6, False, True), (4, True, False), (3, False, False)]):
        obs = [env.reset(seed=i)[0]]
        actions, rewards = [], []
        for _ in range(steps):
            action = env.action_space.sample()
            o, r, *_ = env.step(action)
            obs.append(o)
            actions.append(action)
            rewards.append(float(r))
        episodes.append((np.array(obs), np.array(actions), np.array(rewards)))
        flags = [False] * (steps - 1)
        buffers.append(EpisodeBuffer(observations=np.array(obs), actions=np.array(actions), rewards=rewards,
                                     terminations=[*flags, term], truncations=[*flags, trunc], infos={}))
    # minari's DataCollector needs jax (minari[create]); its buffer writer is the same storage code
    minari.create_dataset_from_buffers("test/pendulum-v0", buffers, env=env)

    data = load("minari:test/pendulum-v0")
    assert len(data) == 6 + 4 + 3 and data.env_id == "Pendulum-v1"
    assert data.source == "minari:test/pendulum-v0"
    np.testing.assert_allclose(data.observations, np.concatenate([o[:-1] for o, _, _ in episodes]))
    np.testing.assert_allclose(data.next_observations, np.concatenate([o[1:] for o, _, _ in episodes]))
    np.testing.assert_allclose(data.actions, np.concatenate([a for _, a, _ in episodes]))
    np.testing.assert_allclose(data.rewards, np.concatenate([r for _, _, r in episodes]), rtol=1e-6)
    np.testing.assert_array_equal(data.terminals, [0] * 9 + [1] + [0] * 3)
    np.testing.assert_allclose(data.episode_returns, [episodes[0][2].sum(), episodes[1][2].sum()])
    for arr in (data.observations, data.actions, data.rewards, data.next_observations, data.terminals):
        assert arr.dtype == np.float32
    assert dataset_env("minari:test/pendulum-v0") == "Pendulum-v1"
    # the env the data names is checked: Pendulum's 3-dim observations do not fit MountainCar's 2
    assert "observes 2" in user_error(load, "minari:test/pendulum-v0", "MountainCarContinuous-v0")

    # and an offline algorithm trains on it through the same spec
    algo = make_algo("td3bc", tmp_path / "run", env="Pendulum-v1", dataset="minari:test/pendulum-v0",
                     total_steps=300, eval_every=300, eval_episodes=1)
    algo.learn()
    assert algo.n_updates == 300 and len(algo.replay.storage) == 13
    assert any("eval/mean_reward" in row for row in read_metrics(tmp_path / "run"))
    algo.close()


@pytest.mark.filterwarnings("ignore::UserWarning")  # minari asks for author, description, ...
def test_minari_reference_scores_give_the_normalized_score(tmp_path, monkeypatch):
    """A Minari dataset's own ref_min_score / ref_max_score normalise eval/normalized_score
    (Pendulum has no D4RL scores: without them there is no normalized score at all)."""
    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    env = gym.make("Pendulum-v1")
    obs = np.stack([env.reset(seed=0)[0]] * 5).astype(np.float32)
    buffer = EpisodeBuffer(observations=obs, actions=np.zeros((4, 1), np.float32), rewards=[-1.0] * 4,
                           terminations=[False] * 3 + [True], truncations=[False] * 4, infos={})
    minari.create_dataset_from_buffers("test/refs-v0", [buffer], env=env, ref_min_score=-1500.0,
                                       ref_max_score=-100.0)
    minari.create_dataset_from_buffers("test/norefs-v0", [buffer], env=env)
    assert load("minari:test/refs-v0").ref_scores == (-1500.0, -100.0)
    assert load("minari:test/norefs-v0").ref_scores is None
    for name in ("refs", "norefs"):
        algo = make_algo("td3bc", tmp_path / name, env="Pendulum-v1", dataset=f"minari:test/{name}-v0",
                         total_steps=4, eval_every=4, eval_episodes=1, log_every=4)
        algo.learn()
        algo.close()
    (row,) = [r for r in read_metrics(tmp_path / "refs") if "eval/mean_reward" in r]
    assert row["eval/normalized_score"] == pytest.approx(100 * (row["eval/mean_reward"] + 1500) / 1400)
    assert not any("eval/normalized_score" in r for r in read_metrics(tmp_path / "norefs"))


def test_d4rl_files_take_the_envs_reference_scores(tmp_path):
    path = tmp_path / "hopper.hdf5"
    write_d4rl(path, d4rl_data(10, obs_dim=11, act_dim=3))
    assert load(str(path), "Hopper-v5").ref_scores == REF_SCORES["hopper"]
    assert load(str(path)).ref_scores is None  # no env named, none given


def test_missing_minari_dataset_says_how_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    message = user_error(load, "minari:mujoco/hopper/medium-v0")
    assert f"MINARI_DATASETS_PATH={tmp_path}" in message
    assert "`minari download mujoco/hopper/medium-v0`" in message


def test_minari_not_installed_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "minari", None)  # `import minari` now raises ImportError
    assert "pip install 'ctrlrl[offline]'" in user_error(load, "minari:mujoco/hopper/medium-v0")


# ---------------------------------------------------------------- 6. env checks and file lookup


def test_observation_width_must_match_the_env(tmp_path):
    path = tmp_path / "five.hdf5"
    write_d4rl(path, d4rl_data(obs_dim=5))
    message = user_error(load, str(path), "Pendulum-v1")
    assert "observations have 5 dims" in message and "Pendulum-v1 observes 3" in message


def test_action_width_and_bounds_must_match_the_env(tmp_path):
    path = tmp_path / "acts.hdf5"
    write_d4rl(path, d4rl_data(act_dim=2))
    assert "actions have 2 dims but Pendulum-v1 takes 1" in user_error(load, str(path), "Pendulum-v1")
    data = d4rl_data(bound=2.0)
    data["actions"][3, 0] = 2.5
    write_d4rl(path, data)
    assert "actions[3, 0] = 2.5" in user_error(load, str(path), "Pendulum-v1")
    data["actions"][3, 0] = 2.00005  # within the 1e-4 tolerance
    write_d4rl(path, data)
    assert load(str(path), "Pendulum-v1").env_id == "Pendulum-v1"


def test_env_named_in_the_file_is_used_and_a_given_env_wins(tmp_path):
    path = tmp_path / "named.hdf5"
    write_d4rl(path, d4rl_data(bound=2.0, **{"metadata/env_id": "Pendulum-v1"}))
    assert load(str(path)).env_id == "Pendulum-v1"
    assert dataset_env(str(path)) == "Pendulum-v1"
    # the file's env is checked even when none is given: 3-dim data named as MountainCar (2 dims)
    write_d4rl(path, d4rl_data(bound=1.0, **{"metadata/env_id": "MountainCarContinuous-v0"}))
    assert "MountainCarContinuous-v0 observes 2" in user_error(load, str(path))
    # the user's env wins over the file's when the widths fit
    write_d4rl(path, d4rl_data(11, obs_dim=11, act_dim=3, **{"metadata/env_id": "Hopper-v4"}))
    with pytest.warns(UserWarning, match="Hopper-v4"):
        assert load(str(path), "Hopper-v5").env_id == "Hopper-v5"
    assert "unknown env id 'Nope-v0'" in user_error(load, str(path), "Nope-v0")


@pytest.fixture
def d4rl_dirs(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """data_dir() and D4RL's cache, both inside tmp_path."""
    monkeypatch.setenv("CTRLRL_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "d4rl-cache"))
    assert data_dir() == tmp_path / "data"
    return tmp_path / "data" / "d4rl", tmp_path / "d4rl-cache"


def test_missing_d4rl_task_gives_the_download_url(d4rl_dirs):
    ours, theirs = d4rl_dirs
    message = user_error(load, "d4rl:hopper-medium-replay-v2")
    url = "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/hopper_medium_replay-v2.hdf5"
    assert url in message and "never downloads" in message and "ctrlrl collect" in message
    assert str(ours / "hopper-medium-replay-v2.hdf5") in message
    assert str(theirs / "hopper-medium-replay-v2.hdf5") in message


def test_d4rl_task_file_is_found_under_either_name_and_mapped_to_its_env(d4rl_dirs):
    ours, theirs = d4rl_dirs
    write_d4rl(ours / "hopper_medium-v2.hdf5", d4rl_data(30, obs_dim=11, act_dim=3))  # D4RL's URL name
    data = load("d4rl:hopper-medium-v2")
    assert data.env_id == "Hopper-v5" and data.source == "d4rl:hopper-medium-v2" and len(data) == 24
    write_d4rl(theirs / "ant-medium-v2.hdf5", d4rl_data(obs_dim=111, act_dim=8))
    assert dataset_env("d4rl:ant-medium-v2") == "Ant-v5"
    message = user_error(load, "d4rl:ant-medium-v2")
    assert "111" in message and "105" in message and "contact forces" in message


def test_nonexistent_path_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "data.hdf5"
    message = user_error(load, str(missing))
    assert str(missing) in message and "d4rl:<task>" in message
    not_hdf5 = tmp_path / "text.hdf5"
    not_hdf5.write_text("hello")
    assert "cannot read it as HDF5" in user_error(load, str(not_hdf5))


def test_data_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("CTRLRL_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_dir() == tmp_path / "cache" / "ctrlrl" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data_dir() == Path.home() / ".cache" / "ctrlrl" / "data"


def test_medium_policy_is_checked_finer_once_past_half_its_target(tmp_path, monkeypatch):
    """The SAC run behind `medium` stops at the first evaluation at or above the target. Checks fall
    on multiples of 5000 steps, of 1000 from the first evaluation at half the target on (also after
    a drop and across a resume from a checkpoint between checks)."""
    from ctrlrl import api
    from ctrlrl.data import collect as collect_module

    class ScriptedSAC:
        def __init__(self, run_dir, step=0, returns=(100.0, 300.0, 560.0, 400.0, 700.0, 1100.0, 3000.0)):
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            self.step, self.stops, self.returns = step, [], iter(returns)

        def learn(self, until):
            self.step = until
            self.stops.append(until)

        def evaluate(self):
            return np.array([next(self.returns)])

    monkeypatch.setenv("CTRLRL_DATA", str(tmp_path))
    monkeypatch.setattr(api, "make", lambda *args, run_dir, **kwargs: ScriptedSAC(run_dir))
    algo, reached = collect_module._policy_run("Hopper-v5", 0, "medium", 1078.0, 100_000, False)
    assert reached == 1100.0 and algo.stops == [5000, 10000, 15000, 16000, 17000, 18000]
    run_dir = tmp_path / "policies" / "Hopper-v5-sac-seed0-medium"
    assert (run_dir / "reached.txt").read_text() == "1100.0"

    # stopped at step 16400 (Ctrl-C's checkpoint) after the check at 16000 (400), or at 17000
    # before its check: the resumed run checks at 17000 and 18000 as the uninterrupted one
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "latest.pt").touch()
    for step, stops in ((16400, [17000, 18000]), (17000, [18000])):
        (run_dir / "reached.txt").unlink()
        (run_dir / "checks.json").write_text('{"step": 16000, "best": 560.0}')
        stopped = ScriptedSAC(run_dir, step=step, returns=(700.0, 1100.0))
        monkeypatch.setattr(api, "resume", lambda *args, stopped=stopped, **kwargs: stopped)
        algo, reached = collect_module._policy_run("Hopper-v5", 0, "medium", 1078.0, 100_000, False)
        assert algo is stopped and reached == 1100.0 and algo.stops == stops
    # stopped at its last step before the last check: that check still decides
    (run_dir / "reached.txt").unlink()
    (run_dir / "checks.json").write_text('{"step": 16000, "best": 560.0}')
    stopped = ScriptedSAC(run_dir, step=17500, returns=(1100.0,))
    monkeypatch.setattr(api, "resume", lambda *args, **kwargs: stopped)
    algo, reached = collect_module._policy_run("Hopper-v5", 0, "medium", 1078.0, 17500, False)
    assert algo is stopped and reached == 1100.0 and algo.stops == []


# ---- behaviour files: the policy behind a generated dataset, kept to make its rows again -------
def _sac_and_behaviour_file(tmp_path):
    """A SAC run on Pendulum (actions in [-2, 2]) trained a little, and its behaviour file."""
    import torch

    from ctrlrl.data.collect import behaviour_file

    algo = make_algo("sac", tmp_path / "sac", env="Pendulum-v1", total_steps=120)
    algo.learn()
    with torch.no_grad():  # one action's log-std far above its clamp, so the clamp shows
        algo.actor.head.bias[1] = 30.0
    return algo, behaviour_file(algo, "medium", -150.0)


def test_a_behaviour_file_acts_as_the_sac_run_it_was_written_from(tmp_path):
    """Its actions are the run's stochastic `predict` actions, bit for bit, from the same torch
    seed: the clamped log-std, the tanh squashing and the scaling to the env's bounds included."""
    import torch

    from ctrlrl.data import behaviour

    algo, path = _sac_and_behaviour_file(tmp_path)
    policy = behaviour.load(path)
    rng = np.random.default_rng(1)
    for k in range(5):
        obs = rng.normal(size=3)
        torch.manual_seed(k)
        expected = algo.predict(obs, deterministic=False)
        torch.manual_seed(k)
        assert arrays_equal(policy.act(obs), expected)
    assert policy.meta["steps"] == algo.step and policy.meta["env_id"] == "Pendulum-v1"
    assert policy.meta["eval_return"] == -150.0


def test_collect_from_a_behaviour_file_makes_the_rows_of_the_run(tmp_path, monkeypatch):
    """`--policy FILE` writes the rows a collect from the SAC run itself wrote; the same seed gives
    the same rows, another seed others; the dataset names the file, its SHA-256 and the policy."""
    from ctrlrl.data import behaviour
    from ctrlrl.data.collect import collect

    monkeypatch.setenv("CTRLRL_DATA", str(tmp_path / "data"))
    collect("Pendulum-v1", "expert", tmp_path / "run.hdf5", size=450, expert_steps=120, progress=False)
    path = tmp_path / "data" / "policies" / "Pendulum-v1-sac-seed0-expert" / "behaviour.npz"

    def rows(name, seed):
        collect("Pendulum-v1", "expert", tmp_path / name, size=450, seed=seed, progress=False,
                policy=path)
        return load(str(tmp_path / name))

    first, again, other = rows("a.hdf5", 0), rows("b.hdf5", 0), rows("c.hdf5", 1)
    assert load(str(tmp_path / "run.hdf5")).digest() == first.digest() == again.digest() != other.digest()
    meta = read_d4rl(tmp_path / "a.hdf5")
    assert meta["metadata/expert_policy_sha256"] == behaviour.file_digest(path)
    assert meta["metadata/expert_policy_steps"] == 120
    assert np.abs(first.actions).max() > 1.0  # scaled to Pendulum's [-2, 2]


def test_behaviour_file_problems_are_one_line_each(tmp_path):
    from ctrlrl.data import behaviour
    from ctrlrl.data.collect import collect

    _, path = _sac_and_behaviour_file(tmp_path)
    message = user_error(collect, "Hopper-v5", "medium", tmp_path / "x.hdf5", policy=path)
    assert "Pendulum-v1" in message and "--env Pendulum-v1" in message
    message = user_error(collect, "Pendulum-v1", "medium-replay", tmp_path / "x.hdf5", policy=path)
    assert "medium or expert" in message
    assert "no such file" in user_error(behaviour.load, tmp_path / "none.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert "not a behaviour file" in user_error(behaviour.load, tmp_path / "bad.npz")
    with np.load(path) as f:
        arrays = dict(f)
    arrays["weight1"] = arrays["weight1"][:5]
    np.savez(tmp_path / "cut.npz", **arrays)
    assert "do not fit" in user_error(behaviour.load, tmp_path / "cut.npz")


KEPT_BEHAVIOUR = Path(__file__).resolve().parent.parent / "benchmarks" / "behaviour"


@pytest.mark.parametrize("name", sorted(p.name for p in KEPT_BEHAVIOUR.glob("*.npz")))
def test_kept_behaviour_files_make_the_recorded_rows_on_this_machine(name, tmp_path):
    """The behaviour files kept for the evidence datasets roll out to the rows recorded where they
    were made (`rows.json`: the digest of `ctrlrl collect --policy FILE --size 2000 --seed 0`), so
    runs made on different machines read the same data (an Intel CPU with AVX-512 too, through
    `behaviour.portable_blas`). Another MuJoCo or gymnasium version may step differently: then
    this check does not apply."""
    import json

    import gymnasium
    import mujoco

    from ctrlrl.data import behaviour
    from ctrlrl.data.collect import collect

    expected = json.loads((KEPT_BEHAVIOUR / "rows.json").read_text())[name]
    policy = behaviour.load(KEPT_BEHAVIOUR / name)
    versions = {"mujoco": mujoco.__version__, "gymnasium": gymnasium.__version__}
    if versions != {k: policy.meta[k] for k in versions}:
        pytest.skip(f"{name} was rolled out with {policy.meta['mujoco']=}, {policy.meta['gymnasium']=}")
    collect(policy.meta["env_id"], policy.meta["level"], tmp_path / "rows.hdf5", size=expected["size"],
            seed=0, progress=False, policy=KEPT_BEHAVIOUR / name)
    assert load(str(tmp_path / "rows.hdf5")).digest() == expected["sha256"]
