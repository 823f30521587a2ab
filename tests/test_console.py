"""What the console says about a run: the final evaluation, the progress display, each algorithm's
headline numbers, `ctrlrl eval`, runs that end past --total-steps, and `ctrlrl collect`'s progress."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
import torch
from conftest import FAST, OFFLINE_DATA, read_metrics

import ctrlrl
from ctrlrl import cli
from ctrlrl.core.logger import Logger, Progress
from ctrlrl.data import reference_scores

RIVER = "ctrlrl/RiverSwim-v0"


def _sets(settings: dict) -> list[str]:
    return [a for key, value in settings.items() for a in ("--set", f"{key}={json.dumps(value)}")]


def _train(capsys, algo: str, env: str, run_dir, *extra: str, **settings) -> tuple[str, str]:
    """`ctrlrl train` in-process with the tiny settings for `algo` (FAST), `settings` on top;
    returns (stdout, stderr)."""
    args = ["train", algo, "--env", env, "--run-dir", str(run_dir),
            *_sets({**FAST.get(algo, {}), **settings}), *extra]
    assert cli.main(args) == 0, capsys.readouterr().err
    return capsys.readouterr()


def _eval_rows(run_dir) -> list[dict]:
    return [row for row in read_metrics(run_dir) if "eval/mean_reward" in row]


def _last_value(line: str, label: str) -> float:
    return float(re.search(rf"{label} (-?[\d.e+-]+)", line).group(1))


# ---- 1. every run ends with a final evaluation ---------------------------------------------------
def test_offline_run_ends_with_a_final_evaluation_and_its_normalised_score(tmp_path, capsys):
    out, _ = _train(capsys, "td3bc", "Hopper-v5", tmp_path / "r", "--dataset", str(OFFLINE_DATA),
                    "--total-steps", "100", eval_every=10_000, eval_episodes=2)
    (row,) = _eval_rows(tmp_path / "r")  # no periodic evaluation in 100 steps: the final one
    assert row["step"] == 100
    ref_min, ref_max = reference_scores("Hopper-v5")
    assert row["eval/normalized_score"] == pytest.approx(
        100 * (row["eval/mean_reward"] - ref_min) / (ref_max - ref_min))
    line = next(line for line in out.splitlines() if line.startswith("final evaluation"))
    assert "at step 100" in line and "over 2 deterministic episodes" in line
    assert _last_value(line, "return") == pytest.approx(row["eval/mean_reward"], abs=0.01)
    assert _last_value(line, "eval normalized score") == pytest.approx(
        row["eval/normalized_score"], abs=0.1)


@pytest.mark.parametrize(("eval_every", "eval_steps"), [(64, [64, 128, 192]), (100, [128, 192])])
def test_final_evaluation_only_where_the_last_periodic_one_is_not_final(eval_every, eval_steps,
                                                                        tmp_path, capsys):
    out, _ = _train(capsys, "ppo", "Pendulum-v1", tmp_path / "r", "--total-steps", "192",
                    eval_every=eval_every, eval_episodes=1)
    assert [row["step"] for row in _eval_rows(tmp_path / "r")] == eval_steps
    assert "final evaluation at step 192" in out


def test_a_run_without_evaluation_says_why(tmp_path, capsys):
    out, _ = _train(capsys, "ppo", "Pendulum-v1", tmp_path / "r", "--total-steps", "64",
                    eval_every=0)
    assert _eval_rows(tmp_path / "r") == []
    assert "no final evaluation: evaluation is disabled (eval_every=0)" in out


def test_a_finished_run_resumed_is_not_evaluated_again(tmp_path, capsys):
    _train(capsys, "ppo", "Pendulum-v1", tmp_path / "r", "--total-steps", "64",
           eval_every=10_000, eval_episodes=1)
    assert cli.main(["train", "ppo", "--resume", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "nothing to train: the run is at step 64 of total_steps=64" in out
    assert "final evaluation at step 64: return" in out  # the one made before, kept in the checkpoint
    assert len(_eval_rows(tmp_path / "r")) == 1


def test_evaluation_leaves_the_training_rng_alone(tmp_path):
    """random-policy's evaluation draws its actions from torch's RNG: on state of its own."""
    algo = ctrlrl.make("random-policy", RIVER, overrides={**FAST["loop"], "eval_horizon": 20},
                       total_steps=50, run_dir=str(tmp_path / "r"))
    before = torch.get_rng_state()
    evaluation = algo.run_evaluation(2)
    assert torch.equal(torch.get_rng_state(), before)
    assert evaluation.returns.shape == (2,)
    algo.close()


# ---- 2. the progress display -----------------------------------------------------------------
def test_plain_progress_lines_keep_the_latest_evaluation_beside_the_return(tmp_path, capsys):
    logger = Logger(tmp_path, total_steps=200, tensorboard=False, progress=True)
    logger.record("eval/mean_reward", 3.0)
    logger.dump(100)
    logger.record("rollout/ep_rew_mean", -1.5)
    logger.record("time/fps", 1000.0)
    logger.dump(200, {"regret": 12.25})
    logger.close()
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("train 200/200 steps")
    assert re.search(r"fps 1000\.0 +return -1\.5 +eval 3\.0 +regret 12\.2 +elapsed \d:\d\d:\d\d",
                     last), last


def test_rich_bar_labels_its_columns(monkeypatch):
    import io

    from rich.console import Console

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = Progress(1000, start=0, order=("return", "eval"))
    try:
        bar.update(400, {"eval": "3.0", "return": "-1.5"})
        console = Console(width=250, record=True, file=io.StringIO())
        console.print(bar._bar.make_tasks_table(bar._bar.tasks))
    finally:
        bar.close()
    text = console.export_text()
    assert re.search(r"400/1000 steps +return -1\.5 +eval 3\.0 +elapsed \S+ +ETA \S+", text), text


# ---- 3. headline numbers -----------------------------------------------------------------------
@pytest.mark.parametrize("algo", ["loop", "ucrl2", "random-policy"])
def test_average_reward_runs_show_regret_and_gain(algo, tmp_path, capsys):
    out, err = _train(capsys, algo, RIVER, tmp_path / "r", "--total-steps", "200",
                      **{**FAST["loop"], "progress": True})
    train = read_metrics(tmp_path / "r")[-1]
    line = next(line for line in out.splitlines() if line.startswith("no final evaluation"))
    assert _last_value(line, "regret") == pytest.approx(train["train/regret"], abs=0.05)
    assert _last_value(line, "optimal gain") == pytest.approx(train["train/optimal_gain"], rel=0.01)
    assert re.search(r"\bgain ", line.replace("optimal gain", ""))
    assert "regret" in err.splitlines()[-1]  # the progress line
    assert "note:" not in out  # the last block is cut at the budget


def test_reward_hacking_runs_show_the_true_return(tmp_path, capsys):
    out, err = _train(capsys, "ppo", "ctrlrl/Tomato-v0", tmp_path / "r", "--total-steps", "128",
                      "--n-envs", "1", eval_every=10_000, eval_episodes=2, progress=True)
    (row,) = _eval_rows(tmp_path / "r")
    line = next(line for line in out.splitlines() if line.startswith("final evaluation"))
    assert _last_value(line, "eval true return") == pytest.approx(row["eval/true_reward"], abs=0.05)
    assert "eval true return" in err.splitlines()[-1]


# ---- 4. ctrlrl eval ------------------------------------------------------------------------------
def test_eval_prints_the_true_return_and_the_normalised_score(tmp_path, capsys):
    _train(capsys, "ppo", "ctrlrl/Tomato-v0", tmp_path / "tomato", "--total-steps", "64",
           "--n-envs", "1", eval_every=0)
    assert cli.main(["eval", str(tmp_path / "tomato"), "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    loaded = ctrlrl.load(tmp_path / "tomato")
    evaluation = loaded.run_evaluation(2)
    loaded.close()
    assert _last_value(out, "eval true return") == pytest.approx(np.mean(evaluation.true_returns),
                                                                 abs=0.05)

    _train(capsys, "td3bc", "Hopper-v5", tmp_path / "hopper", "--dataset", str(OFFLINE_DATA),
           "--total-steps", "50", eval_every=0)
    assert cli.main(["eval", str(tmp_path / "hopper"), "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    mean = _last_value(out, "mean return")
    ref_min, ref_max = reference_scores("Hopper-v5")
    assert _last_value(out, "eval normalized score") == pytest.approx(
        100 * (mean - ref_min) / (ref_max - ref_min), abs=0.1)


# ---- 5. budgets in whole iterations --------------------------------------------------------------
@pytest.mark.parametrize(("algo", "env", "total", "end", "settings"), [
    ("ppo", "Pendulum-v1", 150, 256, {"n_envs": 2}),  # n_steps 64 × 2 envs
    ("orpo", "ctrlrl/Tomato-v0", 300, 512, {}),  # (64 learner + 64 base steps) × 2 envs
    ("sac", "Pendulum-v1", 101, 102, {"n_envs": 2}),  # one step in each of 2 envs
])
def test_a_run_past_its_budget_says_where_it_ends_first(algo, env, total, end, settings, tmp_path,
                                                        capsys):
    out, _ = _train(capsys, algo, env, tmp_path / "r", "--total-steps", str(total), **settings)
    lines = out.splitlines()
    note = next(i for i, line in enumerate(lines) if line.startswith("note:"))
    assert f"ends at step {end}, past total_steps={total}" in lines[note]
    assert note < next(i for i, line in enumerate(lines) if line.startswith("done:"))
    assert f"done: {end} steps" in out
    assert read_metrics(tmp_path / "r")[-1]["step"] == end


def test_a_budget_of_whole_iterations_gets_no_note(tmp_path, capsys):
    out, _ = _train(capsys, "ppo", "Pendulum-v1", tmp_path / "r", "--total-steps", "128")
    assert "note:" not in out and "done: 128 steps" in out


# ---- 6. ctrlrl collect -------------------------------------------------------------------------
def test_collect_shows_training_and_recording_progress(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("CTRLRL_DATA", str(tmp_path / "data"))
    out = tmp_path / "expert.hdf5"
    # 200 SAC steps (all before learning starts), one evaluation, then 1500 recorded transitions
    # (by the rollout's own process, hence `capfd`)
    assert cli.main(["collect", "--env", "Pendulum-v1", "--level", "expert", "--size", "1500",
                     "--expert-steps", "200", "-o", str(out)]) == 0
    err = capfd.readouterr().err.splitlines()
    assert any(re.match(r"sac expert 200/200 steps +eval -?\d", line) for line in err), err
    assert [line.split("  ")[0] for line in err if line.startswith("record")] == [
        "record expert 1000/1500 transitions", "record expert 1500/1500 transitions"]
