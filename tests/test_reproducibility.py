"""Same seed → same run; train N + resume to 2N == train 2N; safe checkpoints."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from conftest import (
    STEPS,
    assert_one_line_error,
    assert_same_state,
    make_algo,
    read_metrics,
    run_cli,
)

import ctrlrl
from ctrlrl import api
from ctrlrl.core.checkpoint import CHECKPOINT_NAME
from ctrlrl.core.run_dir import LOCK_NAME
from ctrlrl.core.signals import TrainingInterrupted, request_stop

ALGOS = api.list_algos()  # every registered algorithm, with conftest's fast settings


@pytest.mark.parametrize("algo", ALGOS)
def test_same_seed_same_run(algo, tmp_path):
    a = make_algo(algo, tmp_path / "a", seed=3).learn()
    b = make_algo(algo, tmp_path / "b", seed=3).learn()
    rows_a, rows_b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert len(rows_a) >= 2
    assert any(k.startswith("train/") for k in rows_a[-1])
    assert rows_a == rows_b
    assert_same_state(a, b)
    a.close()
    b.close()


@pytest.mark.parametrize("algo", ALGOS)
def test_different_seed_different_run(algo, tmp_path):
    """Guards the test above: it must be able to fail."""
    a = make_algo(algo, tmp_path / "a", seed=3).learn()
    b = make_algo(algo, tmp_path / "b", seed=4).learn()
    assert read_metrics(tmp_path / "a") != read_metrics(tmp_path / "b")
    if algo != "random-policy":  # it learns nothing: no state for the seed to change
        with pytest.raises(AssertionError):
            assert_same_state(a, b)
    a.close()
    b.close()


def _stop_at(n: int, learner) -> None:
    """Train `learner` until its first iteration ending at step >= n, then stop it as Ctrl-C
    does (checkpoint written, TrainingInterrupted raised)."""
    iteration = learner.train_iteration

    def then_stop() -> None:
        iteration()
        if learner.step >= n:
            request_stop()

    learner.train_iteration = then_stop
    with pytest.raises(TrainingInterrupted):
        learner.learn()
    learner.close()


def _straight_and_resumed(algo, tmp_path, extra=None, ckpt_every=(0, 0)):
    extra = extra or {}
    n = STEPS[algo]
    straight = make_algo(algo, tmp_path / "straight", seed=1, total_steps=2 * n,
                         checkpoint_every=ckpt_every[0], **extra).learn()
    # the split run has the straight run's budget (schedules such as MDPO's t_k and annealed
    # learning rates depend on it) and is stopped at n the way Ctrl-C stops it
    _stop_at(n, make_algo(algo, tmp_path / "split", seed=1, total_steps=2 * n,
                          checkpoint_every=ckpt_every[1], **extra))
    resumed = api.resume(tmp_path / "split")
    assert resumed.step == n
    resumed.learn()
    assert resumed.step == straight.step == 2 * n
    return straight, resumed


@pytest.mark.parametrize("algo", ALGOS)
def test_resume_equals_straight_run(algo, tmp_path):
    straight, resumed = _straight_and_resumed(algo, tmp_path, ckpt_every=(0, 37))
    rows_s, rows_r = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "split")
    assert [r["step"] for r in rows_s] == [r["step"] for r in rows_r]
    assert rows_s == rows_r
    assert_same_state(straight, resumed)
    assert straight.n_updates == resumed.n_updates
    # and the checkpoints written at the end hold the same step
    for d in ("straight", "split"):
        ckpt = ctrlrl.load(tmp_path / d)
        assert ckpt.step == 2 * STEPS[algo]
        ckpt.close()
    straight.close()
    resumed.close()


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_run_stopped_on_its_last_iteration_finishes_on_resume(algo, tmp_path):
    """A stop during the last iteration leaves the final evaluation undone; resuming with the
    run's own budget again (what a sweep passes) evaluates then, as the straight run did, and
    resuming the finished run again adds nothing."""
    n, extra = STEPS[algo], {"eval_every": 10 * STEPS[algo], "eval_episodes": 2}
    straight = make_algo(algo, tmp_path / "straight", seed=1, **extra).learn()
    assert straight.last_evaluation.step == n
    _stop_at(n, make_algo(algo, tmp_path / "split", seed=1, **extra))
    assert not any("eval/mean_reward" in r for r in read_metrics(tmp_path / "split"))
    for _ in range(2):
        resumed = api.resume(tmp_path / "split", total_steps=n).learn()
        resumed.close()
        assert resumed.last_evaluation.step == n
        assert np.array_equal(resumed.last_evaluation.returns, straight.last_evaluation.returns)
        assert read_metrics(tmp_path / "split") == read_metrics(tmp_path / "straight")
    straight.close()


@pytest.mark.parametrize(("algo", "normalize"), [("ppo", True), ("sac", False)])
def test_resume_equals_straight_run_with_normalisation_and_eval(algo, normalize, tmp_path):
    extra = {"normalize_obs": normalize, "normalize_reward": normalize, "n_envs": 2,
             "eval_every": STEPS[algo], "eval_episodes": 2}
    straight, resumed = _straight_and_resumed(algo, tmp_path, extra, ckpt_every=(10, 0))
    rows_s, rows_r = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "split")
    assert any("eval/mean_reward" in r for r in rows_s)
    assert rows_s == rows_r
    assert_same_state(straight, resumed)
    if normalize:
        assert np.array_equal(straight.env.obs_rms.mean, resumed.env.obs_rms.mean)
    straight.close()
    resumed.close()


@pytest.mark.parametrize("algo", ALGOS)
def test_save_load_predict(algo, tmp_path):
    a = make_algo(algo, tmp_path / "run", seed=2, normalize_obs=algo == "ppo").learn()
    path = a.save(tmp_path / "model.pt")
    b = ctrlrl.load(path)
    c = ctrlrl.load(tmp_path / "run")  # a run dir resolves to checkpoints/latest.pt
    assert (tmp_path / "run" / "checkpoints" / CHECKPOINT_NAME).is_file()
    obs = np.random.default_rng(0).normal(size=(16, *a.env.observation_space.shape))
    obs = obs.astype(np.float32)

    def predict(algo, x):  # from the same RNG state: random-policy's actions are draws
        torch.manual_seed(0)
        return algo.predict(x)

    act = predict(a, obs)
    assert act.shape == (16, *a.env.action_space.shape)
    space = a.env.action_space
    if isinstance(space, gym.spaces.Box):
        assert np.all(act >= space.low) and np.all(act <= space.high)
    else:
        assert all(space.contains(x) for x in act)
    assert np.array_equal(act, predict(b, obs))
    assert np.array_equal(act, predict(c, obs))
    single = predict(b, obs[0])
    assert single.shape == a.env.action_space.shape
    # a batch of one may take another BLAS path than a batch of 16: equal up to rounding
    np.testing.assert_allclose(single, act[0], rtol=1e-5, atol=1e-6)
    assert np.array_equal(single, predict(c, obs[0]))
    assert b.name == algo and b.step == a.step
    assert_same_state(a, b)
    for x in (a, b, c):
        x.close()


def test_loaded_policy_uses_saved_normalisation(tmp_path):
    """predict normalises with the run's statistics: a loaded model must not start from zero."""
    a = make_algo("ppo", tmp_path / "run", seed=2, normalize_obs=True).learn()
    b = ctrlrl.load(tmp_path / "run")
    assert np.array_equal(b.env.obs_rms.mean, a.env.obs_rms.mean)
    assert b.env.obs_rms.count == a.env.obs_rms.count
    a.close()
    b.close()


class Payload:
    """Any class: pickling it by reference is what weights_only loading refuses."""

    def __reduce__(self):
        return (print, ("this ran code",))


@pytest.fixture
def pickled_checkpoint(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"ctrlrl_format": 1, "algo": "ppo", "x": Payload()}, path)
    return path


def test_pickled_checkpoint_refused(pickled_checkpoint, capsys):
    with pytest.raises(ctrlrl.UserError, match="pickled"):
        ctrlrl.load(pickled_checkpoint)
    assert "this ran code" not in capsys.readouterr().out


def test_pickled_checkpoint_refused_by_cli(pickled_checkpoint):
    proc = run_cli("eval", str(pickled_checkpoint))
    assert proc.returncode != 0
    assert "this ran code" not in proc.stdout
    assert_one_line_error(proc.stderr, str(pickled_checkpoint))


def test_not_a_checkpoint_refused(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file at all")
    with pytest.raises(ctrlrl.UserError):
        ctrlrl.load(junk)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(ctrlrl.UserError, match="not a ctrlrl checkpoint"):
        ctrlrl.load(tmp_path / "plain.pt")
    with pytest.raises(ctrlrl.UserError, match="does not exist"):
        ctrlrl.load(tmp_path / "missing.pt")


def test_checkpoint_save_is_atomic(tmp_path):
    """No temporary file is left behind and the file is a complete checkpoint."""
    a = make_algo("td3", tmp_path / "run", total_steps=60).learn()
    files = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert files == sorted([CHECKPOINT_NAME, LOCK_NAME])
    assert ctrlrl.load(tmp_path / "run").step == 60
    a.close()



def test_evaluation_does_not_perturb_training(tmp_path):
    a = make_algo("td3", tmp_path / "a", seed=1, total_steps=150).learn()
    b = make_algo("td3", tmp_path / "b", seed=1, total_steps=150, eval_every=50,
                  eval_episodes=2).learn()
    rows_b = read_metrics(tmp_path / "b")
    assert sum("eval/mean_reward" in r for r in rows_b) == 3
    assert_same_state(a, b)
    # evaluations are logged in rows of their own; the training rows must be unchanged
    train_rows = [r for r in rows_b if not any(k.startswith("eval/") for k in r)]
    assert train_rows == read_metrics(tmp_path / "a")
    a.close()
    b.close()


def test_discrete_ppo_reproducible_and_resumable(tmp_path):
    """CartPole exercises the Discrete (categorical) path of the collector and buffer."""
    kw = dict(env="CartPole-v1", seed=5)
    straight = make_algo("ppo", tmp_path / "straight", total_steps=256, **kw).learn()
    again = make_algo("ppo", tmp_path / "again", total_steps=256, **kw).learn()
    assert read_metrics(tmp_path / "straight") == read_metrics(tmp_path / "again")
    assert_same_state(straight, again)
    make_algo("ppo", tmp_path / "split", total_steps=128, **kw).learn().close()
    resumed = api.resume(tmp_path / "split", total_steps=256).learn()
    assert read_metrics(tmp_path / "split") == read_metrics(tmp_path / "straight")
    assert_same_state(straight, resumed)
    act = resumed.predict(np.zeros((3, 4), np.float32))
    assert act.shape == (3,) and np.issubdtype(act.dtype, np.integer)
    for x in (straight, again, resumed):
        x.close()


def test_resume_applies_vec_mode(tmp_path):
    from gymnasium.vector import AsyncVectorEnv

    straight, resumed = _straight_and_resumed_with("ppo", tmp_path, {"n_envs": 2},
                                                   {"vec_mode": "async"})
    assert resumed.run.vec_mode == "async"
    assert isinstance(resumed.env.envs.vector, AsyncVectorEnv)
    assert_same_state(straight, resumed)
    straight.close()
    resumed.close()


def test_resume_with_other_thread_count_is_refused_or_exact(tmp_path):
    try:
        straight, resumed = _straight_and_resumed_with("ppo", tmp_path, {}, {"threads": 2})
    except ctrlrl.UserError:
        return  # refused: fine
    assert torch.get_num_threads() == 2  # the setting the run records is the one in effect
    assert_same_state(straight, resumed)
    straight.close()
    resumed.close()


def _straight_and_resumed_with(algo, tmp_path, extra, resume_overrides):
    n = STEPS[algo]
    straight = make_algo(algo, tmp_path / "straight", seed=1, total_steps=2 * n, **extra).learn()
    make_algo(algo, tmp_path / "split", seed=1, total_steps=n, **extra).learn().close()
    resumed = api.resume(tmp_path / "split", overrides=resume_overrides, total_steps=2 * n)
    resumed.learn()
    saved = yaml.safe_load((tmp_path / "split" / "config.yaml").read_text())
    for key, value in resume_overrides.items():
        assert saved["run"][key] == value
    return straight, resumed


def test_fresh_train_does_not_clobber_an_existing_run(tmp_path):
    run_dir = tmp_path / "run"
    make_algo("td3", run_dir, seed=1, total_steps=60).learn().close()
    ckpt = (run_dir / "checkpoints" / CHECKPOINT_NAME).read_bytes()
    rows = read_metrics(run_dir)
    try:
        make_algo("td3", run_dir, seed=2, total_steps=60).learn().close()
    except ctrlrl.UserError as exc:
        assert "resume" in str(exc)
    assert (run_dir / "checkpoints" / CHECKPOINT_NAME).read_bytes() == ckpt
    assert read_metrics(run_dir) == rows


def test_td3_resume_on_a_critic_only_step_logs_the_same_rows(tmp_path):
    n = 61  # learning_starts=50: the first update after the resume is a critic-only one
    straight = make_algo("td3", tmp_path / "straight", seed=1, total_steps=2 * n,
                         log_every=1).learn()
    make_algo("td3", tmp_path / "split", seed=1, total_steps=n, log_every=1).learn().close()
    resumed = api.resume(tmp_path / "split", total_steps=2 * n).learn()
    assert_same_state(straight, resumed)  # the training itself is exact ...
    assert read_metrics(tmp_path / "split") == read_metrics(tmp_path / "straight")  # ... the log not
    straight.close()
    resumed.close()
