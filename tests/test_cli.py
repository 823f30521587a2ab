"""The `ctrlrl` command line: user errors are one line, runs write what they promise."""

from __future__ import annotations

import re

import pytest
import torch
import yaml
from conftest import assert_one_line_error, read_metrics, run_cli

from ctrlrl import cli
from ctrlrl.core.checkpoint import load_checkpoint

# a tiny PPO run on Pendulum (episodes of 200 steps, so 256 steps finish one per env)
TINY = ["--env", "Pendulum-v1", "--device", "cpu", "--n-envs", "1", "--eval-every", "0",
        "--set", "n_steps=64", "--set", "batch_size=32", "--set", "n_epochs=2",
        "--set", "hidden_sizes=[32,32]", "--set", "log_every=64", "--set", "progress=false"]


def _train_in_process(run_dir, *extra: str, steps: int = 256, tensorboard: bool = False) -> int:
    return cli.main(["train", "ppo", *TINY, "--total-steps", str(steps), "--run-dir", str(run_dir),
                     "--set", f"tensorboard={str(tensorboard).lower()}", *extra])


# ---------------------------------------------------------------------------------------------
# user errors, in real subprocesses: exit code != 0, one line on stderr, no traceback


def test_unknown_algorithm(tmp_path):
    proc = run_cli("train", "dqn9000", "--env", "Pendulum-v1", "--run-dir", str(tmp_path / "r"),
                   cwd=tmp_path)
    assert proc.returncode != 0
    assert_one_line_error(proc.stderr, "dqn9000", "ppo", "sac", "td3")
    assert not (tmp_path / "r").exists()


def test_unknown_algorithm_without_env(tmp_path):
    proc = run_cli("train", "dqn9000", cwd=tmp_path)
    assert proc.returncode != 0
    assert_one_line_error(proc.stderr, "dqn9000", "ppo")


def test_unknown_env_id(tmp_path):
    proc = run_cli("train", "ppo", "--env", "NoSuchEnv-v0", "--run-dir", str(tmp_path / "r"),
                   cwd=tmp_path)
    assert proc.returncode != 0
    assert_one_line_error(proc.stderr, "NoSuchEnv-v0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_does_not_fall_back(tmp_path):
    proc = run_cli("train", "ppo", *TINY, "--device", "cuda", "--total-steps", "64",
                   "--run-dir", str(tmp_path / "r"), cwd=tmp_path)
    assert proc.returncode != 0
    assert_one_line_error(proc.stderr, "cuda")
    assert not (tmp_path / "r" / "checkpoints" / "latest.pt").exists()


def test_unknown_set_key(tmp_path):
    proc = run_cli("train", "ppo", "--env", "Pendulum-v1", "--set", "learnign_rate=1e-3",
                   "--run-dir", str(tmp_path / "r"), cwd=tmp_path)
    assert proc.returncode != 0
    assert_one_line_error(proc.stderr, "learnign_rate", "learning_rate")


def test_unwritable_run_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    run_dir = blocker / "run"
    proc = run_cli("train", "ppo", *TINY, "--total-steps", "64", "--run-dir", str(run_dir),
                   cwd=tmp_path)
    assert proc.returncode != 0
    assert_one_line_error(proc.stderr, str(run_dir))
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize(("args", "needle"), [
    (["--set", "n_steps=abc"], "n_steps"),
    (["--set", "n_steps"], "n_steps"),
    (["--set", "hidden_sizes=64"], "hidden_sizes"),
    (["--set", "normalize_obs=maybe"], "normalize_obs"),
])
def test_bad_set_values(args, needle, tmp_path, capsys):
    code = cli.main(["train", "ppo", "--env", "Pendulum-v1", "--run-dir", str(tmp_path / "r"),
                     *args])
    assert code != 0
    assert_one_line_error(capsys.readouterr().err, needle)


def test_bad_device_string(tmp_path, capsys):
    code = cli.main(["train", "ppo", *TINY, "--device", "tpu", "--total-steps", "64",
                     "--run-dir", str(tmp_path / "r")])
    assert code != 0
    assert_one_line_error(capsys.readouterr().err, "tpu")


def test_argparse_errors_are_one_line(tmp_path):
    proc = run_cli("train", cwd=tmp_path)  # missing ALGO
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr)


def test_eval_missing_checkpoint(tmp_path, capsys):
    code = cli.main(["eval", str(tmp_path / "nothing_here")])
    assert code != 0
    assert_one_line_error(capsys.readouterr().err, "nothing_here")


def test_resume_with_different_setting_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert _train_in_process(run_dir, steps=64) == 0
    before = (run_dir / "config.yaml").read_text()
    ckpt_before = (run_dir / "checkpoints" / "latest.pt").read_bytes()
    capsys.readouterr()
    proc = run_cli("train", "ppo", "--resume", str(run_dir), "--set", "n_epochs=5",
                   "--total-steps", "128", cwd=tmp_path)
    assert proc.returncode != 0
    assert_one_line_error(proc.stderr, "n_epochs")
    # the run is untouched
    assert (run_dir / "config.yaml").read_text() == before
    assert (run_dir / "checkpoints" / "latest.pt").read_bytes() == ckpt_before
    # other mismatches, in process
    for extra, needle in ((["--seed", "9"], "seed"), (["--env", "CartPole-v1"], "CartPole-v1")):
        code = cli.main(["train", "ppo", "--resume", str(run_dir), *extra])
        assert code != 0
        assert_one_line_error(capsys.readouterr().err, needle)
    code = cli.main(["train", "sac", "--resume", str(run_dir)])
    assert code != 0
    assert_one_line_error(capsys.readouterr().err, "sac")


def test_resume_of_a_non_run(tmp_path, capsys):
    code = cli.main(["train", "ppo", "--resume", str(tmp_path)])
    assert code != 0
    assert_one_line_error(capsys.readouterr().err, "config.yaml")


# ---------------------------------------------------------------------------------------------
# commands that work


def test_list_prints_algorithms(tmp_path):
    proc = run_cli("list", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("ppo", "sac", "td3"):
        assert re.search(rf"^  {name} ", proc.stdout, re.M), proc.stdout
    assert "Pendulum-v1" in proc.stdout
    assert "Hopper-v5" in proc.stdout


def test_train_writes_config_metrics_tensorboard_checkpoint(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    assert _train_in_process(run_dir, tensorboard=True) == 0
    out = capsys.readouterr().out
    assert str(run_dir) in out

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["algo"] == "ppo"
    assert cfg["run"]["env"] == "Pendulum-v1"
    assert cfg["run"]["total_steps"] == 256
    assert cfg["config"]["n_steps"] == 64
    assert cfg["config"]["hidden_sizes"] == [32, 32]

    rows = read_metrics(run_dir, drop_time=False)
    assert [r["step"] for r in rows] == [64, 128, 192, 256]
    assert "rollout/ep_rew_mean" in rows[-1]
    assert "time/fps" in rows[-1]

    events = list(run_dir.glob("events.out.tfevents.*"))
    assert events, list(run_dir.iterdir())
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("rollout/ep_rew_mean", "time/fps", "train/approx_kl", "train/value_loss"):
        assert tag in tags, sorted(tags)
    assert [e.step for e in acc.Scalars("train/value_loss")] == [64, 128, 192, 256]

    ckpt = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert ckpt["step"] == 256
    assert ckpt["algo"] == "ppo"


def test_eval_a_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert _train_in_process(run_dir, steps=64) == 0
    capsys.readouterr()
    assert cli.main(["eval", str(run_dir), "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "mean return" in out and "2 deterministic episodes" in out


def test_plot_writes_png(tmp_path):
    runs = []
    for seed in (0, 1):
        run_dir = tmp_path / f"run{seed}"
        assert _train_in_process(run_dir, "--seed", str(seed), steps=256) == 0
        runs.append(str(run_dir))
    out = tmp_path / "plots" / "out.png"
    proc = run_cli("plot", *runs, "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000


def test_plot_of_a_non_run(tmp_path, capsys):
    code = cli.main(["plot", str(tmp_path), "-o", str(tmp_path / "x.png")])
    assert code != 0
    assert_one_line_error(capsys.readouterr().err, str(tmp_path))


@pytest.mark.parametrize(("algo", "setting"), [
    ("ppo", "gamma=abc"),
    ("ppo", "activation=foo"),
    ("ppo", "n_envs=0"),
    ("ppo", "n_steps=0"),
    ("ppo", "batch_size=0"),
    ("ppo", "n_epochs=0"),
    ("ppo", "learning_rate=-1"),
    ("sac", "buffer_size=0"),
    ("sac", "hidden_sizes=[]"),
    ("td3", "buffer_size=0"),
])
def test_out_of_range_settings_are_user_errors(algo, setting, tmp_path, capsys):
    key = setting.split("=")[0]
    # later --set items win, so `setting` comes last
    args = ["train", algo, "--env", "Pendulum-v1", "--total-steps", "64", "--eval-every", "0",
            "--run-dir", str(tmp_path / "r"), "--set", "progress=false",
            "--set", "tensorboard=false", "--set", "n_envs=1"]
    if algo == "ppo":
        args += ["--set", "n_steps=64"] if key != "n_steps" else []
    else:
        args += ["--set", "learning_starts=10"]
    code = cli.main([*args, "--set", setting])
    assert code != 0
    assert_one_line_error(capsys.readouterr().err, key)


def test_diverged_training_stops_with_a_clear_error_and_keeps_checkpoint(tmp_path, monkeypatch):
    """A non-finite loss ends the run with a UserError before NaN weights are checkpointed."""
    import ctrlrl
    from ctrlrl.algos.sac import SAC

    run_dir = tmp_path / "r"
    overrides = {"progress": False, "tensorboard": False, "eval_every": 0, "n_envs": 1,
                 "learning_starts": 20, "log_every": 20, "checkpoint_every": 20,
                 "hidden_sizes": [16, 16], "batch_size": 8}
    real_update, diverged = SAC.update, [False]

    def update(self, batch):  # patched before the loop binds its training step
        metrics = real_update(self, batch)
        return metrics | {"critic_loss": torch.tensor(float("nan"))} if diverged[0] else metrics

    monkeypatch.setattr(SAC, "update", update)
    algo = ctrlrl.make("sac", "Pendulum-v1", overrides, total_steps=40, run_dir=str(run_dir))
    algo.learn()
    ckpt = run_dir / "checkpoints" / "latest.pt"
    good = ckpt.read_bytes()
    diverged[0] = True
    with pytest.raises(ctrlrl.UserError, match=r"diverged: train/critic_loss is nan at step 60"):
        algo.learn(total_steps=100)
    assert ckpt.read_bytes() == good


def test_every_evaluation_is_logged_even_between_log_dumps(tmp_path):
    import ctrlrl

    run_dir = tmp_path / "r"
    overrides = {"progress": False, "tensorboard": False, "n_envs": 1, "eval_every": 100,
                 "eval_episodes": 2, "log_every": 1000, "learning_starts": 50,
                 "hidden_sizes": [16, 16], "batch_size": 8}
    ctrlrl.make("td3", "Pendulum-v1", overrides, total_steps=400, run_dir=str(run_dir)).learn()
    steps = [row["step"] for row in read_metrics(run_dir) if "eval/mean_reward" in row]
    assert steps == [100, 200, 300, 400]


def test_negative_seed_is_one_line(tmp_path, capsys):
    code = cli.main(["train", "ppo", "--env", "Pendulum-v1", "--run-dir", str(tmp_path / "r"),
                     "--seed", "-1"])
    assert code != 0
    assert_one_line_error(capsys.readouterr().err, "seed")


def test_unsupported_observation_space_is_one_line(tmp_path, capsys):
    code = cli.main(["train", "ppo", "--env", "FrozenLake-v1", "--run-dir", str(tmp_path / "r")])
    assert code != 0
    assert_one_line_error(capsys.readouterr().err, "FrozenLake-v1")


def test_scientific_notation_in_set_is_a_number(tmp_path):
    from ctrlrl.api import resolve
    from ctrlrl.core.config import parse_set

    _, _, cfg = resolve("sac", "Pendulum-v1", parse_set(["learning_rate=1e-4",
                                                            "buffer_size=1e5"]))
    assert cfg.learning_rate == 1e-4 and cfg.buffer_size == 100_000


def test_off_policy_refuses_normalisation(tmp_path):
    import ctrlrl

    with pytest.raises(ctrlrl.UserError, match="normalize_obs"):
        ctrlrl.make("sac", "Pendulum-v1", {"normalize_obs": True}, run_dir=str(tmp_path / "r"))
