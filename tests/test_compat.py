"""Algorithm/env mismatches and options that cannot take effect are refused before a run starts:
one line naming what does not fit and what would, no run dir, never another exception."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import gymnasium
import pytest
import torch
from conftest import ENV, FAST, OFFLINE_DATA, QUIET, assert_one_line_error

import ctrlrl
from ctrlrl import api
from ctrlrl.algos.base import Algorithm
from ctrlrl.algos.off_policy import OffPolicyAlgorithm
from ctrlrl.cli import main
from ctrlrl.core.compiled_step import training_step
from ctrlrl.core.envs import env_unavailable
from ctrlrl.core.errors import UserError

MATRIX_ENVS = ("CartPole-v1", "Pendulum-v1", "ctrlrl/RiverSwim-v0", "ctrlrl/LotSizing-15x5-v0",
               "ctrlrl/Tomato-v0", "Hopper-v2", "Hopper-v5")


def tiny(algo: str) -> dict[str, Any]:
    """Quiet, small settings for `algo`; offline algorithms get the test dataset."""
    out = {**QUIET, **FAST.get(algo, {})}
    if api.algo_class(algo).kind == "offline":
        out["dataset"] = str(OFFLINE_DATA)
    return out


def fitting_env(algo: str) -> str:
    kind = api.algo_class(algo).kind
    return ENV.get(algo) or {"average-reward": "ctrlrl/RiverSwim-v0", "offline": "Hopper-v5"}[kind]


@pytest.fixture
def nothing_built(monkeypatch):
    """Building any algorithm fails the test: refusals must come before."""
    def built(self, *args):
        raise AssertionError(f"{type(self).__name__} was built before the refusal")
    monkeypatch.setattr(Algorithm, "__init__", built)


def cli_error(capsys, *argv: str) -> str:
    """The one stderr line of a `ctrlrl` command refused with exit status 2."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert_one_line_error(err, "ctrlrl: error:")
    return err


@pytest.mark.parametrize("algo", api.list_algos())
def test_every_env_starts_a_run_or_is_refused_in_one_line(algo, tmp_path):
    started = []
    for env in MATRIX_ENVS:
        run_dir = tmp_path / env.replace("/", "_")
        model = None
        try:  # as `ctrlrl train` does: build, make the run dir (an offline run reads its data)
            model = api.make(algo, env, tiny(algo), total_steps=1, run_dir=str(run_dir))
            model.setup_run_dir()
        except UserError as exc:
            assert_one_line_error(str(exc))
            assert not run_dir.exists(), f"{algo} on {env}: refused, yet a run dir was made"
            if model is not None:
                model.close()
            continue
        try:
            model.learn()
        finally:
            model.close()
        assert (run_dir / "checkpoints" / "latest.pt").is_file()
        started.append(env)
    assert started, f"{algo} started on none of {MATRIX_ENVS}"
    assert "Hopper-v2" not in started


@pytest.mark.parametrize(("algo", "env", "needles"), [
    ("loop", "Hopper-v5", ("exact model", "ctrlrl/RiverSwim-v0")),
    ("ucrl2", "CartPole-v1", ("exact model", "ctrlrl/RiverSwim-v0")),
    ("ppo", "Hopper-v2", ("mujoco-py", "use Hopper-v5")),
    ("sac", "CartPole-v1", ("needs Box actions", "Discrete(2)", "sac presets: Hopper-v5")),
    ("pdppo", "Pendulum-v1", ("post_decision", "ctrlrl/LotSizing")),
    ("orpo", "CartPole-v1", ("base_action_probs", "--base-policy")),
    ("td3bc", "Hopper-v5", ("learns offline", "--dataset")),
])
def test_mismatch_names_what_fits(algo, env, needles, capsys, tmp_path, nothing_built):
    err = cli_error(capsys, "train", algo, "--env", env, "--run-dir", str(tmp_path / "run"))
    assert_one_line_error(err, *needles)
    assert not (tmp_path / "run").exists()


def test_env_unavailable_names_the_retired_mujoco_py_ids():
    assert "mujoco-py" in env_unavailable("Hopper-v3")
    assert env_unavailable("Hopper-v5") is None
    assert env_unavailable("ctrlrl/RiverSwim-v0") is None


@pytest.mark.parametrize(("argv", "needles"), [
    (("ppo", "--env", "CartPole-v1", "--dataset", "data.hdf5"),
     ("dataset='data.hdf5'", "learns online", "drop it")),
    (("ppo", "--env", "CartPole-v1", "--set", "keep_timeouts=true"), ("keep_timeouts=True", "drop it")),
    (("ppo", "--env", "CartPole-v1", "--base-policy", "scripted"),
     ("base_policy is a setting of orpo, ppo-adreg", "not of ppo")),
    (("pg", "--env", "CartPole-v1", "--n-envs", "2"), ("n_envs=2 (pg learns from one env: n_envs=1)",)),
    (("loop", "--env", "ctrlrl/RiverSwim-v0", "--n-envs", "4"), ("n_envs=4",)),
    (("loop", "--env", "ctrlrl/RiverSwim-v0", "--compile"), ("compile='step'", "compile=eager")),
    (("loop", "--env", "ctrlrl/RiverSwim-v0", "--device", "cuda"),
     ("device='cuda' (loop computes with numpy",)),
    (("bc", "--env", "Hopper-v5", "--dataset", str(OFFLINE_DATA), "--n-envs", "2"),
     ("n_envs=2",)),
    (("ppo", "--env", "ctrlrl/RiverSwim-v0", "--eval-every", "100"),
     ("eval_every=100", "continuing task")),
    (("pg", "--env", "ctrlrl/RiverSwim-v0", "--set", "horizon=20", "--eval-every", "100"),
     ("eval_every=100", "continuing task")),
    (("sac", "--env", "Pendulum-v1", "--set", "normalize_obs=true"), ("normalize_obs", "drop")),
    (("orpo", "--env", "ctrlrl/Tomato-v0", "--base-policy", "no/such/run"),
     ("no/such/run does not exist",)),
    (("pdppo", "--env", "ctrlrl/LotSizing-15x5-v0", "--set", "normalize_reward=true"),
     ("normalize_reward", "post_return=shared")),
])
def test_an_option_that_cannot_take_effect_is_refused(argv, needles, capsys, tmp_path,
                                                     nothing_built):
    err = cli_error(capsys, "train", *argv, "--run-dir", str(tmp_path / "run"))
    assert_one_line_error(err, *needles)
    assert not (tmp_path / "run").exists()


def test_continuing_task_without_eval_every_trains_without_evaluating(tmp_path):
    """The default evaluation interval applies where an algorithm can evaluate; given
    explicitly, it is refused above."""
    _, run, _ = api.resolve("ppo", "ctrlrl/RiverSwim-v0")
    assert run.eval_every == 0
    _, run, _ = api.resolve("loop", "ctrlrl/RiverSwim-v0", eval_every=100)  # a fixed horizon
    assert run.eval_every == 100
    _, run, _ = api.resolve("ppo", "CartPole-v1")
    assert run.eval_every > 0


@pytest.mark.parametrize("algo", api.list_algos())
def test_compile_modes_declare_what_torch_compile_is_given(algo, monkeypatch):
    """`compile_modes` (which decides whether compile=step is refused) matches what is handed to
    torch.compile: a loss when the learner is built, or the whole update when the off-policy loop
    builds its training step."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **_: compiled.append(fn) or fn)
    cls, run, cfg = api.resolve(algo, fitting_env(algo), tiny(algo))
    learner = cls(dataclasses.replace(run, compile="step"), cfg)
    if isinstance(learner, OffPolicyAlgorithm) and "step" in cls.compile_modes:
        training_step(learner, "step")  # what the loop's first `train_step` builds
    learner.close()
    assert bool(compiled) == ("step" in cls.compile_modes)


def test_resume_refuses_options_it_would_ignore(capsys, tmp_path):
    run_dir = tmp_path / "run"
    ctrlrl.make("ppo", "CartPole-v1", tiny("ppo"), total_steps=64, run_dir=str(run_dir)).learn()
    resume = ("train", "ppo", "--resume", str(run_dir))
    assert_one_line_error(cli_error(capsys, *resume, "--run-dir", str(tmp_path / "other")),
                          "drop --run-dir")
    assert not (tmp_path / "other").exists()
    assert_one_line_error(cli_error(capsys, *resume, "--total-steps", "32"),
                          "already at step 64", "--total-steps")
    assert_one_line_error(cli_error(capsys, *resume, "--dataset", "data.hdf5"), "dataset")
    assert_one_line_error(cli_error(capsys, *resume, "--base-policy", "scripted"),
                          "base_policy is a setting of orpo")


def test_eval_refuses_options_it_would_ignore(capsys, tmp_path):
    run_dir = tmp_path / "run"
    ctrlrl.make("ppo", "CartPole-v1", tiny("ppo"), total_steps=64, run_dir=str(run_dir)).learn()
    assert_one_line_error(cli_error(capsys, "eval", str(run_dir), "--env", "Pendulum-v1"),
                          "drop --env")
    assert_one_line_error(cli_error(capsys, "eval", "--policy", "heuristic", "--env",
                                    "ctrlrl/LotSizing-15x5-v0", "--device", "cpu"),
                          "drop --device")


def test_refusals_leave_no_run_dir_in_the_working_folder(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    cli_error(capsys, "train", "loop", "--env", "Hopper-v5")
    assert not Path("runs").exists()


@pytest.mark.parametrize(("algo", "env", "settings", "needle"), [
    ("ppo", "CartPole-v1", {"log_std_init": -1.0}, "log_std_init=-1.0 (it starts a Gaussian"),
    ("ppo", "CartPole-v1", {"clip_obs": 5.0}, "clip_obs=5.0 (it clips normalised observations"),
    ("loop", "ctrlrl/RiverSwim-v0", {"ridge": 2.0}, "ridge=2.0 (it belongs to instantiation=linear"),
    ("loop", "ctrlrl/RiverSwim-v0", {"instantiation": "linear", "confidence": "per_pair"},
     "confidence='per_pair' (it belongs to the tabular"),
    ("loop", "ctrlrl/RiverSwim-v0", {"confidence": "per_pair", "max_plan_rounds": 3},
     "max_plan_rounds"),
    ("pg", "CartPole-v1", {"eta0": 0.5, "hess_batch_steps": 8}, "eta0=0.5 (pg has no momentum"),
    ("npg-momentum", "CartPole-v1", {"hess_batch_steps": 8}, "hess_batch_steps=8 (only (n-)harpg"),
    ("pg", "CartPole-v1", {"baseline": "none", "baseline_reg": 0.1}, "baseline_reg"),
    ("td3bc", "Hopper-v5", {"dataset": str(OFFLINE_DATA), "vec_mode": "async"}, "vec_mode"),
])
def test_a_setting_the_run_would_not_use_is_refused(algo, env, settings, needle, nothing_built):
    with pytest.raises(UserError) as err:
        api.resolve(algo, env, settings)
    assert_one_line_error(str(err.value), needle, "cannot use", "drop")


@pytest.mark.parametrize(("algo", "env", "settings"), [
    ("ppo", "Pendulum-v1", {"log_std_init": -1.0}),
    ("ppo", "Pendulum-v1", {"normalize_obs": True, "clip_obs": 5.0}),
    ("loop", "ctrlrl/RiverSwim-v0", {"instantiation": "linear", "ridge": 2.0}),
    ("loop", "ctrlrl/RiverSwim-v0", {"max_plan_rounds": 3}),
    ("npg-momentum", "CartPole-v1", {"eta0": 0.5}),
    ("harpg", "CartPole-v1", {"hess_batch_steps": 8, "baseline_reg": 0.1}),
    ("n-harpg", "CartPole-v1", {"hess_batch_steps": 8}),
    ("ppo", "ctrlrl/RiverSwim-v0", {"eval_every": 0}),
    ("ppo", "CartPole-v1", {}),  # an unused default (log_std_init, clip_obs) is no one's choice
])
def test_the_same_setting_where_it_is_used_is_accepted(algo, env, settings):
    api.resolve(algo, env, settings)


@pytest.mark.parametrize("algo", api.list_algos())
def test_unused_settings_are_settings(algo):
    cls, run, cfg = api.resolve(algo, fitting_env(algo), tiny(algo))
    probe = gymnasium.make(run.env)
    names = {f.name for f in dataclasses.fields(run)} | {f.name for f in dataclasses.fields(cfg)}
    assert cls.unused_settings(probe, run, cfg).keys() <= names
    probe.close()
