"""Same seed → same run; train N + resume to 2N == train 2N; safe checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import (
    ENV,
    STEPS,
    assert_one_line_error,
    assert_same_state,
    make_algo,
    read_metrics,
    run_cli,
)

import ctrlrl
from ctrlrl import api
from ctrlrl.algos.base import CHECKPOINT_NAME

ALGOS = ["ppo", "sac", "td3"]


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
    with pytest.raises(AssertionError):
        assert_same_state(a, b)
    a.close()
    b.close()


def _straight_and_resumed(algo, tmp_path, extra=None, ckpt_every=(0, 0)):
    extra = extra or {}
    n = STEPS[algo]
    straight = make_algo(algo, tmp_path / "straight", seed=1, total_steps=2 * n,
                         checkpoint_every=ckpt_every[0], **extra).learn()
    first = make_algo(algo, tmp_path / "split", seed=1, total_steps=n,
                      checkpoint_every=ckpt_every[1], **extra).learn()
    first.close()
    resumed = api.resume(tmp_path / "split", total_steps=2 * n)
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
def test_resume_equals_straight_run_with_normalisation_and_eval(algo, tmp_path):
    extra = {"normalize_obs": True, "normalize_reward": True, "n_envs": 2,
             "eval_every": STEPS[algo], "eval_episodes": 2}
    straight, resumed = _straight_and_resumed(algo, tmp_path, extra, ckpt_every=(10, 0))
    rows_s, rows_r = read_metrics(tmp_path / "straight"), read_metrics(tmp_path / "split")
    assert any("eval/mean_reward" in r for r in rows_s)
    assert rows_s == rows_r
    assert_same_state(straight, resumed)
    assert np.array_equal(straight.env.obs_rms.mean, resumed.env.obs_rms.mean)
    straight.close()
    resumed.close()


@pytest.mark.parametrize("algo", ALGOS)
def test_save_load_predict(algo, tmp_path):
    a = make_algo(algo, tmp_path / "run", seed=2, normalize_obs=True).learn()
    path = a.save(tmp_path / "model.pt")
    b = ctrlrl.load(path)
    c = ctrlrl.load(tmp_path / "run")  # a run dir resolves to checkpoints/latest.pt
    assert (tmp_path / "run" / "checkpoints" / CHECKPOINT_NAME).is_file()
    obs = np.random.default_rng(0).normal(size=(16, *a.env.observation_space.shape))
    obs = obs.astype(np.float32)
    act = a.predict(obs)
    assert act.shape == (16, *a.env.action_space.shape)
    assert np.all(act >= a.env.action_space.low) and np.all(act <= a.env.action_space.high)
    assert np.array_equal(act, b.predict(obs))
    assert np.array_equal(act, c.predict(obs))
    single = b.predict(obs[0])
    assert single.shape == a.env.action_space.shape
    assert np.array_equal(single, act[0])
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
    assert files == [CHECKPOINT_NAME]
    assert ctrlrl.load(tmp_path / "run").step == 60
    a.close()


def test_env_names_match_config(tmp_path):
    a = make_algo("sac", tmp_path / "run", total_steps=60)
    assert a.run.env == ENV["sac"]
    a.close()
