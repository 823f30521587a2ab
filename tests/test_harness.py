"""The experiment harness: sweeps that survive being stopped, reports with checked statistics,
stable-baselines3 twins under the same evaluation protocol, and clear errors on bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import OFFLINE_DATA, REPO, assert_one_line_error, make_algo

from ctrlrl import cli
from ctrlrl.core.config import parse_set
from ctrlrl.core.errors import UserError
from ctrlrl.core.signals import TrainingInterrupted
from ctrlrl.harness import report, stats, sweep

# 2 algorithms × 2 envs × 2 seeds at a tiny budget: evaluations at 400 and 800 steps
SETS = ["eval_every=400", "eval_episodes=2", "checkpoint_every=200", "tensorboard=false",
        "hidden_sizes=[32,32]", "ppo.n_envs=1", "ppo.n_steps=200", "ppo.batch_size=50",
        "ppo.n_epochs=2", "ppo.normalize_obs=false", "ppo.normalize_reward=false",
        "td3.learning_starts=100", "td3.batch_size=32", "td3.buffer_size=2000"]
GRID = ["--algos", "ppo,td3", "--envs", "Pendulum-v1,InvertedPendulum-v5", "--seeds", "0-1",
        "--total-steps", "800", *(a for s in SETS for a in ("--set", s))]


def eval_rows(run_dir: Path) -> list[tuple[int, float]]:
    """(step, eval/mean_reward) of each evaluation a run logged."""
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [(r["step"], r["eval/mean_reward"]) for r in rows if "eval/mean_reward" in r]


def grid_specs(out: Path) -> list[sweep.RunSpec]:
    return sweep.expand_grid(["ppo", "td3"], ["Pendulum-v1", "InvertedPendulum-v5"], [0, 1], 800,
                             str(out), parse_set(SETS))


def sweep_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ctrlrl.cli", "sweep", *GRID, "--workers", "2", "--out", str(out),
            *extra]


@pytest.fixture(scope="module")
def stopped_and_finished(tmp_path_factory):
    """The grid, stopped with Ctrl-C once one run has finished and another is midway (has a
    checkpoint), then run again to the end.

    Returns (out dir, {run dir: its files when stopped} for runs complete then, states planned
    for the second run, the second run's stderr).
    """
    out = tmp_path_factory.mktemp("sweep") / "out"

    def midway() -> bool:
        done = {p.parent for p in out.glob("*/*/*/done.json")}
        started = {p.parent.parent for p in out.glob("*/*/*/checkpoints/latest.pt")}
        return bool(done) and bool(started - done)

    # On a loaded machine the midway run can finish between the check and the stop reaching its
    # worker; then the stop is repeated on the rest of the grid until one run is left midway.
    for _ in range(3):
        proc = subprocess.Popen(sweep_cmd(out), cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while not midway():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err
        assert "run the same command again" in err
        states = {spec.run_dir: state for spec, state in sweep.plan(grid_specs(out))}
        if "resume" in states.values():
            break
    complete = {d.parent: {f: (d.parent / f).read_bytes() for f in ("metrics.jsonl", "done.json")}
                for d in out.glob("*/*/*/done.json")}
    again = subprocess.run(sweep_cmd(out), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    return out, complete, states, again.stderr


def test_stopped_sweep_reruns_only_the_missing_work(stopped_and_finished):
    out, complete, states, err = stopped_and_finished
    assert 1 <= len(complete) < 8
    assert {d for d, s in states.items() if s == "complete"} == set(complete)
    assert f"{len(complete)} complete (skipped)" in err
    assert "resume" in states.values(), "the run stopped midway should continue from its checkpoint"
    assert err.count("[done]") == 8 - len(complete)
    for run_dir, files in complete.items():  # finished runs were not touched again
        for name, data in files.items():
            assert (run_dir / name).read_bytes() == data
    runs = sorted(out.glob("*/*/seed*"))
    assert len(runs) == 8
    for run_dir in runs:
        assert json.loads((run_dir / "done.json").read_text())["steps"] >= 800
        # a stopped run checkpoints where it stopped: no evaluation is lost or repeated
        assert [step for step, _ in eval_rows(run_dir)] == [400, 800]


def test_resumed_sweep_run_equals_a_straight_run(stopped_and_finished, tmp_path):
    out, _, states, _ = stopped_and_finished
    resumed = next(d for d, s in states.items() if s == "resume")
    spec = next(s for s in grid_specs(tmp_path) if s.run_dir.relative_to(tmp_path) ==
                resumed.relative_to(out))
    spec = sweep.plan([spec])[0][0]
    assert sweep.run_one(spec)["status"] == "done"

    assert eval_rows(spec.run_dir) == eval_rows(resumed)


def test_a_finished_run_given_a_larger_budget_is_unfinished_until_it_reaches_it(tmp_path,
                                                                                monkeypatch):
    sets = parse_set([s for s in SETS if not s.startswith("td3.")])
    spec = sweep.plan(sweep.expand_grid(["ppo"], ["Pendulum-v1"], [0], 400, str(tmp_path), sets))[0][0]
    assert sweep.run_one(spec)["status"] == "done"
    longer, state = sweep.plan([dataclasses.replace(spec, total_steps=800)])[0]
    assert state == "resume"

    def cut_short(spec):  # as Ctrl-C midway through the longer budget
        raise TrainingInterrupted(spec.run_dir / "checkpoints")

    monkeypatch.setattr(sweep, "_train_ctrlrl", cut_short)
    assert sweep.run_one(longer)["status"] == "stopped"
    assert not (spec.run_dir / "done.json").exists(), "a report --finished would take it at 400 steps"


def test_a_finished_run_without_its_checkpoint_trains_again_from_step_0(tmp_path, capsys):
    """Checkpoints stay on the machine that trained a run (the repository keeps its logs): a larger
    budget on another machine cannot continue it, so the sweep says so and trains it anew."""
    sets = parse_set([s for s in SETS if not s.startswith("td3.")])
    spec = sweep.plan(sweep.expand_grid(["ppo"], ["Pendulum-v1"], [0], 400, str(tmp_path), sets))[0][0]
    assert sweep.run_one(spec)["status"] == "done"
    shutil.rmtree(spec.run_dir / "checkpoints")
    longer = dataclasses.replace(spec, total_steps=800)
    assert sweep.plan([longer])[0][1] == "restart"
    assert sweep.sweep([longer], workers=1, progress=False)["done"] == 1
    err = capsys.readouterr().err
    assert "1 to train again from step 0 (no checkpoint here), 0 to start" in err
    assert f"{spec.run_dir} logged 400 steps" in err
    assert [step for step, _ in eval_rows(spec.run_dir)] == [400, 800]  # no step logged twice


def test_a_run_past_a_smaller_budget_is_complete_for_it(tmp_path):
    """A grid run in stages: the short stage's command, rerun while (or after) the runs train on
    to the full budget, trains nothing; a run cut short at its own budget still resumes."""
    sets = parse_set([s for s in SETS if not s.startswith("td3.")])
    spec = sweep.plan(sweep.expand_grid(["ppo"], ["Pendulum-v1"], [0], 400, str(tmp_path), sets))[0][0]
    assert sweep.run_one(spec)["status"] == "done"

    def stopped_at_400_of(budget: int) -> None:  # as a sweep at that budget leaves it when stopped
        config = yaml.safe_load((spec.run_dir / "config.yaml").read_text())
        config["run"]["total_steps"] = budget
        (spec.run_dir / "config.yaml").write_text(yaml.safe_dump(config))
        (spec.run_dir / "done.json").unlink(missing_ok=True)

    stopped_at_400_of(1200)
    states = [sweep.plan([dataclasses.replace(spec, total_steps=n)])[0][1] for n in (200, 400, 800)]
    assert states == ["complete", "complete", "resume"]
    stopped_at_400_of(400)  # its final evaluation logged, done.json not yet written
    assert sweep.plan([spec])[0][1] == "resume"


def test_a_finished_offline_run_on_rows_since_replaced_is_refused(tmp_path):
    """A dataset file regenerated with other rows: the sweep will not count a run that read the old
    rows as this grid's (new seeds could not be pooled with it); the same rows again are fine."""
    from ctrlrl.data.collect import collect

    data = tmp_path / "data.hdf5"
    collect("Hopper-v5", "random", data, size=300, seed=0, progress=False)
    sets = parse_set([f"dataset={data}", "eval_every=0", "tensorboard=false", "batch_size=32",
                      "hidden_sizes=[32,32]"])
    grid = sweep.expand_grid(["bc"], ["Hopper-v5"], [0], 50, str(tmp_path / "out"), sets)
    assert sweep.run_one(sweep.plan(grid)[0][0])["status"] == "done"
    collect("Hopper-v5", "random", data, size=300, seed=0, progress=False)
    assert sweep.plan(grid)[0][1] == "complete"
    collect("Hopper-v5", "random", data, size=300, seed=1, progress=False)
    with pytest.raises(UserError, match=r"bc/seed0 read other rows of .*data\.hdf5.*move it out"):
        sweep.plan(grid)


def test_report_of_the_sweep(stopped_and_finished, tmp_path, capsys):
    out, *_ = stopped_and_finished
    assert cli.main(["report", str(out), "-o", str(tmp_path / "res" / "grid"),
                     "--welch", "ppo,td3", "--welch", "td3,ppo"]) == 0
    table = (tmp_path / "res" / "grid.md").read_text()
    data = json.loads((tmp_path / "res" / "grid.json").read_text())
    assert {(r["env"], r["label"], r["seeds"]) for r in data["rows"]} == {
        (e, a, 2) for e in ("InvertedPendulum-v5", "Pendulum-v1") for a in ("ppo", "td3")}
    assert data["metric"] == "eval/mean_reward"
    assert data["welch"] == [{"a": "ppo", "b": "td3"}, {"a": "td3", "b": "ppo"}]
    for row in data["rows"]:
        assert row["final_ci"][0] <= row["final_mean"] <= row["final_ci"][1]
        assert row["best_mean"] >= row["final_mean"]
        assert row["steps_min"] >= 800 and row["fps_mean"] > 0 and row["wall_time_mean"] > 0
        other = next(r for r in data["rows"] if r["env"] == row["env"] and r["label"] != row["label"])
        assert list(row["welch"]) == [other["label"]]  # each pair's A row, against its B
        for k in ("final", "best"):
            diff = row["welch"][other["label"]][k]
            assert diff["diff"] == pytest.approx(row[f"{k}_mean"] - other[f"{k}_mean"])
            assert diff["diff_ci"] == list(stats.bootstrap_diff_ci(row[k], other[k]))
    # one column per pair, each filled on its own A's rows only
    head, _, *lines = [[c.strip() for c in line.strip("|").split("|")]
                       for line in table.splitlines() if line.startswith("|")]
    assert head[-2:] == ["ppo − td3: Δ [CI], Welch t, p (final; best)",
                         "td3 − ppo: Δ [CI], Welch t, p (final; best)"]
    for cells in lines:
        assert (bool(cells[-2]), bool(cells[-1])) == (cells[1] == "ppo", cells[1] == "td3")
    assert table.count("| Pendulum-v1 |") == 2
    png = (tmp_path / "res" / "grid.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


# ---- statistics, against hand-computed values --------------------------------------------------
def test_bootstrap_ci_hand_computed():
    # the mean of a resample of [0, 0, 0, 1] is K/4 with K ~ Binomial(4, 1/4):
    # P(K = 0) = 0.316 > 2.5%, so the lower bound is 0; P(K ≤ 2) = 0.949 < 97.5% ≤ P(K ≤ 3) = 0.996,
    # so the upper bound is 3/4. With 10 000 resamples the Monte-Carlo error (≈ 0.2%) cannot move them.
    low, high = stats.bootstrap_ci(np.array([0.0, 0.0, 0.0, 1.0]))
    assert (float(low), float(high)) == (0.0, 0.75)
    low, high = stats.bootstrap_ci(np.array([5.0, 5.0, 5.0, 9.0]))  # shift and scale carry over
    assert (float(low), float(high)) == (5.0, 8.0)


def test_bootstrap_ci_fixed_seed_and_normal_theory():
    x = np.random.default_rng(1).normal(3.0, 2.0, size=200)
    a, b = stats.bootstrap_ci(x), stats.bootstrap_ci(x)
    assert (a[0], a[1]) == (b[0], b[1])  # same logs, same report
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert float(a[0]) == pytest.approx(x.mean() - half, abs=0.1 * half)
    assert float(a[1]) == pytest.approx(x.mean() + half, abs=0.1 * half)
    assert stats.bootstrap_ci(np.array([7.0])) == (7.0, 7.0)


def test_bootstrap_diff_ci_hand_computed():
    # b is constant, so mean(b) is 5 in every resample and the interval is a's shifted by −5;
    # a's interval is [0, 3/4] (test above)
    assert stats.bootstrap_diff_ci(np.array([0.0, 0.0, 0.0, 1.0]), np.full(3, 5.0)) == (-5.0, -4.25)
    # swapping the groups mirrors the interval; each group is resampled on its own
    assert stats.bootstrap_diff_ci(np.full(3, 5.0), np.array([0.0, 0.0, 0.0, 1.0])) == (4.25, 5.0)
    assert stats.bootstrap_diff_ci(np.array([3.0]), np.array([1.0, 2.0])) == (1.5, 1.5)


def test_iqm_hand_computed():
    assert stats.iqm([10, 1, 2, 3, 4, 100, 5, 6]) == 4.5  # drops 1, 2 and 10, 100
    assert stats.iqm([1, 2, 3, 4, 100]) == 3.0  # ⌊5/4⌋ = 1 dropped at each end


def test_welch_and_auc_hand_computed():
    a, b = np.array([1.0, 2.0, 3.0, 6.0]), np.array([0.0, 1.0, 1.0])
    t = (a.mean() - b.mean()) / np.sqrt(a.var(ddof=1) / 4 + b.var(ddof=1) / 3)
    assert stats.welch(a, b)[0] == pytest.approx(t)
    assert 0 < stats.welch(a, b)[1] < 1
    assert stats.area_under_curve(np.array([0, 10, 20]), np.array([0.0, 10.0, 10.0])) == 7.5


def write_run(path: Path, env: str, algo: str, seed: int, evals: dict[int, float],
              metric: str = "eval/mean_reward", **config) -> Path:
    """A run dir as ctrlrl writes it, with chosen evaluation values."""
    path.mkdir(parents=True)
    cfg = {"algo": algo, "run": {"env": env, "seed": seed, "total_steps": max(evals)},
           "config": {"learning_rate": 3e-4, **config}}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = [{"step": s, metric: v} for s, v in evals.items()]
    rows.append({"step": max(evals), "time/time_elapsed": 10.0})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_report_numbers_hand_computed(tmp_path):
    finals = [1.0, 2.0, 3.0, 10.0]
    for seed, final in enumerate(finals):
        write_run(tmp_path / f"a{seed}", "Pendulum-v1", "ppo", seed, {100: 0.0, 200: 20.0, 300: final})
    groups = report.read_groups([str(tmp_path / "a*")])
    row = report.build_report(groups, report.choose_metrics(groups, "eval/mean_reward"))["rows"][0]
    assert row["seeds"] == 4 and row["final_mean"] == 4.0 and row["best_mean"] == 20.0
    assert row["iqm_final"] == 2.5  # mean of 2 and 3
    assert row["auc_mean"] == pytest.approx(np.mean([(10 + 10 + f / 2) / 2 for f in finals]))
    assert row["fps_mean"] == 30.0 and row["steps_min"] == row["steps_max"] == 300


def test_report_compares_two_learners_with_one_baseline(tmp_path):
    # as the offline page's A2PR − TD3+BC and O-DICE − TD3+BC: each column on its own learner's row
    finals = {"ppo": [5.0, 7.0], "sac": [1.0, 2.0], "td3": [3.0, 3.5]}
    for algo, values in finals.items():
        for seed, final in enumerate(values):
            write_run(tmp_path / f"{algo}{seed}", "Pendulum-v1", algo, seed, {100: 0.0, 200: final})
    groups = report.read_groups([str(tmp_path)])
    data = report.build_report(groups, report.choose_metrics(groups), [("ppo", "td3"), ("sac", "td3")])
    rows = {r["label"]: r for r in data["rows"]}
    assert rows["ppo"]["welch"]["td3"]["final"]["diff"] == pytest.approx(6.0 - 3.25)
    assert rows["sac"]["welch"]["td3"]["final"]["diff"] == pytest.approx(1.5 - 3.25)
    assert "welch" not in rows["td3"]
    table = report.markdown(data, "t", None, None)
    cells = {c[1]: c[-2:] for c in ([c.strip() for c in line.strip("|").split("|")]
                                    for line in table.splitlines() if line.startswith("| Pendulum"))}
    assert cells["ppo"][0].startswith("2.75 [") and cells["ppo"][1] == ""
    assert cells["sac"][0] == "" and cells["sac"][1].startswith("-1.75 [")
    assert cells["td3"] == ["", ""]


def test_report_gives_a_single_seed_no_interval(tmp_path):
    write_run(tmp_path / "one", "Pendulum-v1", "ppo", 0, {100: 0.0, 200: 4.0})
    for seed in (0, 1):
        write_run(tmp_path / f"two{seed}", "Pendulum-v1", "sac", seed, {100: 0.0, 200: 2.0 + 2 * seed})
    groups = report.read_groups([str(tmp_path)])
    table = report.markdown(report.build_report(groups, report.choose_metrics(groups)), "t", None, None)
    cells = {c[1]: c[4:6] for c in ([c.strip() for c in line.strip("|").split("|")]
                                    for line in table.splitlines() if line.startswith("| Pendulum"))}
    assert cells["ppo"] == ["4 (one seed, no CI)", "4 (one seed, no CI)"]
    assert cells["sac"][0].startswith("3 [2")
    assert "seeds' own range" in table


def test_report_says_a_few_seeds_interval_is_their_range(tmp_path):
    finals = {0: 1.0, 1: 5.0, 2: 9.0, 3: 20.0}
    for seed, final in finals.items():
        write_run(tmp_path / str(seed), "Pendulum-v1", "sac", seed, {100: 0.0, 200: final})
    low, high = stats.bootstrap_ci(np.array([1.0, 5.0, 9.0]))
    assert (float(low), float(high)) == (1.0, 9.0)    # three seeds: the interval is their range
    low, high = stats.bootstrap_ci(np.array(list(finals.values())))
    assert 1.0 < low < high < 20.0                     # four: it lies inside their range
    groups = report.read_groups([str(tmp_path)])
    table = report.markdown(report.build_report(groups, report.choose_metrics(groups)), "t", None, None)
    assert "seeds' own range" not in table             # four seeds: no caveat
    shutil.rmtree(tmp_path / "3")
    groups = report.read_groups([str(tmp_path)])
    table = report.markdown(report.build_report(groups, report.choose_metrics(groups)), "t", None, None)
    assert "seeds' own range" in table


def test_aggregate_pools_normalised_scores_across_envs(tmp_path):
    for env, score in (("Hopper-v5", 40.0), ("Walker2d-v5", 60.0)):
        for seed in (0, 1):
            write_run(tmp_path / env / str(seed), env, "td3bc", seed, {100: score + seed},
                      metric="eval/normalized_score")
    paths = report.write_report([str(tmp_path)], str(tmp_path / "out"), pooled=True)
    rows = json.loads(paths[2].read_text())["rows"]
    pooled = next(r for r in rows if r["env"] == "all 2 envs")
    assert pooled["seeds"] == 4 and pooled["final_mean"] == 50.5


# ---- stable-baselines3 rows ----------------------------------------------------------------------
def test_sb3_twin_uses_the_same_evaluation_protocol(tmp_path, capsys):
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO

    from ctrlrl.core.envs import VecEnv
    from ctrlrl.core.evaluation import evaluate

    out = tmp_path / "bench"
    sets = ["eval_every=200", "eval_episodes=3", "n_envs=1", "n_steps=100", "batch_size=50",
            "n_epochs=2", "normalize_obs=false", "normalize_reward=false", "tensorboard=false"]
    assert cli.main(["bench", "--vs", "sb3", "--algos", "ppo", "--envs", "Pendulum-v1",
                     "--seeds", "3", "--total-steps", "400", "--workers", "2", "--out", str(out),
                     *(a for s in sets for a in ("--set", s))]) == 0
    ours, twin = out / "Pendulum-v1" / "ppo" / "seed3", out / "Pendulum-v1" / "sb3-ppo" / "seed3"
    config = yaml.safe_load((twin / "config.yaml").read_text())
    assert config["algo"] == "sb3-ppo" and config["library"].startswith("stable-baselines3")
    assert config["config"] == yaml.safe_load((ours / "config.yaml").read_text())["config"]

    assert [s for s, _ in eval_rows(twin)] == [s for s, _ in eval_rows(ours)] == [200, 400]
    # the logged evaluation is ctrlrl's protocol: deterministic, 3 episodes, seeds 10003, 10004, ...
    model = PPO.load(twin / "checkpoints" / "sb3_model.zip", device="cpu")
    env = VecEnv("Pendulum-v1", 3)
    returns = evaluate(lambda obs: model.predict(obs, deterministic=True)[0], env, 3 + 10_000)
    env.close()
    assert returns.mean() == pytest.approx(eval_rows(twin)[-1][1], rel=1e-6)
    groups = report.read_groups([str(out)])
    assert set(groups["Pendulum-v1"]) == {"ppo", "sb3-ppo"}


def test_sb3_twin_gets_ctrlrls_hyperparameters(tmp_path):
    pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.env_util import make_vec_env

    from ctrlrl.harness.sb3 import _build

    spec = sweep.expand_grid(["sb3-sac"], ["Pendulum-v1"], [0], 1000, str(tmp_path),
                             {"learning_rate": 1e-3, "hidden_sizes": [64, 32], "tau": 0.01})[0]
    _, run, cfg = sweep.resolve_spec(spec)
    model = _build("sb3-sac", make_vec_env("Pendulum-v1", 1), run, cfg, "cpu")
    assert model.learning_rate == 1e-3 and model.tau == 0.01 and model.gamma == cfg.gamma
    assert model.learning_starts == cfg.learning_starts and model.batch_size == cfg.batch_size
    assert [m.out_features for m in model.actor.latent_pi if hasattr(m, "out_features")] == [64, 32]


# ---- bad input: one clear line each ------------------------------------------------------------
def test_report_of_an_empty_glob(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nothing*"), "-o", str(tmp_path / "r")]) == 2
    assert_one_line_error(capsys.readouterr().err, "nothing*", "no files match")


def test_report_refuses_different_envs_in_one_panel(tmp_path, capsys):
    write_run(tmp_path / "h", "Hopper-v5", "ppo", 0, {100: 1.0})
    write_run(tmp_path / "w", "Walker2d-v5", "ppo", 0, {100: 2.0})
    assert cli.main(["report", str(tmp_path), "-o", str(tmp_path / "r"), "--aggregate"]) == 2
    assert_one_line_error(capsys.readouterr().err, "different envs", "Hopper-v5", "Walker2d-v5")


def test_report_refuses_differently_configured_seeds(tmp_path, capsys):
    write_run(tmp_path / "a", "Hopper-v5", "ppo", 0, {100: 1.0})
    write_run(tmp_path / "b", "Hopper-v5", "ppo", 1, {100: 2.0}, learning_rate=1e-3)
    assert cli.main(["report", str(tmp_path), "-o", str(tmp_path / "r")]) == 2
    assert_one_line_error(capsys.readouterr().err, "learning_rate", "--vary")


def test_report_refuses_seeds_trained_on_different_rows_of_one_dataset(tmp_path, capsys):
    """A dataset regenerated between sittings must not mix into one row of a results table."""
    for seed, digest in enumerate(("aa", "aa", "bb")):
        run = write_run(tmp_path / str(seed), "Hopper-v5", "td3bc", seed, {100: 1.0})
        (run / "dataset.json").write_text(json.dumps({"dataset": "h.hdf5", "sha256": digest}))
    assert cli.main(["report", str(tmp_path / "[01]"), "-o", str(tmp_path / "r")]) == 0
    assert cli.main(["report", str(tmp_path / "[0-2]"), "-o", str(tmp_path / "r")]) == 2
    assert_one_line_error(capsys.readouterr().err, str(tmp_path / "2"), "same rows",
                          "dataset.json digests differ")
    write_run(tmp_path / "3", "Hopper-v5", "td3bc", 3, {100: 1.0})  # trained before the record
    assert cli.main(["report", str(tmp_path / "[013]"), "-o", str(tmp_path / "r")]) == 2
    assert_one_line_error(capsys.readouterr().err, str(tmp_path / "3"), "no dataset.json")


def test_report_names_a_missing_metric(tmp_path, capsys):
    write_run(tmp_path / "a", "Hopper-v5", "ppo", 0, {100: 1.0})
    write_run(tmp_path / "b", "Hopper-v5", "ppo", 1, {100: 1.0}, metric="rollout/ep_rew_mean")
    assert cli.main(["report", str(tmp_path), "-o", str(tmp_path / "r")]) == 2
    assert_one_line_error(capsys.readouterr().err, str(tmp_path / "b"), "eval/mean_reward", "--metric")
    assert cli.main(["report", str(tmp_path / "b"), "-o", str(tmp_path / "r")]) == 2
    assert_one_line_error(capsys.readouterr().err, "--eval-every 0", "--metric")
    assert cli.main(["report", str(tmp_path / "a"), "-o", str(tmp_path / "r"), "--welch", "ppo,xyz"]) == 2
    assert_one_line_error(capsys.readouterr().err, "xyz")


@pytest.mark.parametrize(("args", "needle"), [
    (["sweep", "--algos", "ppo,nope", "--envs", "Pendulum-v1"], "nope"),
    (["sweep", "--algos", "ppo", "--envs", "NoSuchEnv-v0"], "NoSuchEnv-v0"),
    (["sweep", "--algos", "ppo", "--envs", "Pendulum-v1", "--set", "sac.tau=0.1"], "sac"),
    (["sweep", "--algos", "ppo", "--envs", "Pendulum-v1", "--seeds", "a-b"], "--seeds"),
    (["sweep", "--algos", "ppo", "--envs", "Pendulum-v1", "--vary", "gamma"], "--vary"),
    (["bench", "--vs", "sb3", "--algos", "ppo,mdpo", "--envs", "Pendulum-v1"], "mdpo"),
])
def test_sweep_bad_input(args, needle, tmp_path, capsys):
    assert cli.main([*args, "--out", str(tmp_path)]) == 2
    assert_one_line_error(capsys.readouterr().err, needle)


def test_sweep_refuses_an_out_dir_made_with_other_settings(tmp_path, capsys):
    run_dir = grid_specs(tmp_path)[0].run_dir
    write_run(run_dir, "Pendulum-v1", "ppo", 0, {100: 1.0}, gamma=0.5)
    assert cli.main(["sweep", *GRID, "--out", str(tmp_path)]) == 2
    assert_one_line_error(capsys.readouterr().err, str(run_dir), "another --out")


def test_grid_order_labels_and_scoped_settings(tmp_path):
    specs = sweep.expand_grid(["ppo", "sb3-ppo", "td3"], ["Pendulum-v1"], [0, 1], 10, str(tmp_path),
                              {"gamma": 0.9, "ppo.n_steps": 64},
                              sweep.parse_vary(["learning_rate=1e-3,3e-4"]))
    assert [s.seed for s in specs] == [0] * 6 + [1] * 6  # seed-major
    first = specs[0]
    assert first.label == "ppo[learning_rate=1e-3]"  # as typed
    _, run, cfg = sweep.resolve_spec(first)
    assert (cfg.gamma, cfg.n_steps, cfg.learning_rate, run.total_steps) == (0.9, 64, 1e-3, 10)
    assert specs[2].overrides["n_steps"] == 64  # the twin shares its base algorithm's settings
    assert "n_steps" not in specs[4].overrides
    assert "[" not in str(first.run_dir)
    assert sweep.parse_seeds("0-2,7") == [0, 1, 2, 7]


# ---- Ray ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("storage", ["shared", "copy"])
def test_ray_backend_matches_the_local_report(storage, stopped_and_finished, tmp_path):
    pytest.importorskip("ray")
    local, *_ = stopped_and_finished
    out = tmp_path / "ray"
    proc = subprocess.run(sweep_cmd(out, "--backend", "ray", "--ray-storage", storage), cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    tables = []
    for runs in (local, out):
        paths = report.write_report([str(runs)], str(tmp_path / runs.name))
        rows = json.loads(paths[2].read_text())["rows"]
        tables.append([(r["env"], r["label"], r["seeds"], r["steps_min"], len(r["final"]))
                       for r in rows])
    assert tables[0] == tables[1]
    # the same seeds give the same evaluations wherever they ran (CPU, one thread each)
    for run_dir in local.glob("*/*/seed*"):
        assert eval_rows(out / run_dir.relative_to(local)) == eval_rows(run_dir)


def test_ray_backend_without_ray_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if not installed
    assert cli.main(["sweep", *GRID, "--backend", "ray", "--out", str(tmp_path)]) == 2
    assert_one_line_error(capsys.readouterr().err, "pip install 'ctrlrl[ray]'")


@pytest.mark.parametrize("text", ["algo: [ppo\n", "- a list\n", "algo: ppo\nrun: {}\nconfig: {}\n",
                                  "\udcff".encode("utf-8", "surrogatepass").decode("latin-1")])
def test_a_damaged_config_yaml_ends_plot_report_and_sweep_in_one_line(tmp_path, capsys, text):
    run_dir = tmp_path / "runs" / "CartPole-v1" / "ppo" / "seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(text)
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "rollout/ep_rew_mean": 1.0}\n')
    for argv in (["plot", str(run_dir), "-o", str(tmp_path / "c.png")],
                 ["report", str(run_dir), "-o", str(tmp_path / "r")],
                 ["sweep", "--algos", "ppo", "--envs", "CartPole-v1", "--seeds", "0",
                  "--out", str(tmp_path / "runs"), "--workers", "1"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ctrlrl: error:") and "config.yaml" in err and "\n" not in err, err


def test_a_saved_run_matches_the_command_that_made_it_across_versions():
    """A sweep re-run compares each run dir with its command: `auto` precision matches what it
    resolved to, and a config from when compile was a switch matches today's modes."""
    from ctrlrl import api
    from ctrlrl.core.config import to_dict

    cls, run, cfg = api.resolve("td3", "Pendulum-v1")
    saved = {"run": {**to_dict(run), "precision": "fp32", "compile": False}, "config": to_dict(cfg)}
    assert api.config_diffs(saved, cls, run, cfg) == []
    saved["run"]["precision"] = "bf16"
    assert api.config_diffs(saved, cls, run, cfg) == [
        "precision: run has 'bf16', this command has 'fp32'"]


def test_pdppo_paper_stats_hand_computed(tmp_path):
    """The PDPPO paper's table: per learner the mean ± population std of each finished run's
    maximum and sum, and Welch's t against the baseline; unfinished runs are left out."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import pdppo_paper_stats

    curves = {"pdppo": [[-5.0, -1.0, -3.0], [-4.0, -2.0, -2.0]],
              "ppo": [[-9.0, -6.0, -7.0], [-8.0, -8.0, -4.0], [-9.0, -9.0, -9.0]]}
    for algo, runs in curves.items():
        for seed, values in enumerate(runs):
            run = write_run(tmp_path / algo / f"seed{seed}", "ctrlrl/LotSizing-20x10-v0", algo, seed,
                            dict(zip((4000, 8000, 12000), values, strict=True)))
            (run / "done.json").write_text("{}")
    write_run(tmp_path / "ppo" / "seed9", "ctrlrl/LotSizing-20x10-v0", "ppo", 9, {4000: 100.0})
    got = pdppo_paper_stats.per_run(tmp_path, "eval/mean_reward")["ctrlrl/LotSizing-20x10-v0"]
    np.testing.assert_array_equal(got["pdppo"]["max"], [-1.0, -2.0])
    np.testing.assert_array_equal(got["pdppo"]["sum"], [-9.0, -8.0])
    np.testing.assert_array_equal(got["ppo"]["max"], [-6.0, -4.0, -9.0])  # seed 9 unfinished
    lines = pdppo_paper_stats.table({"env": got}, "ppo").splitlines()
    t_max = stats.welch(np.array([-1.0, -2.0]), np.array([-6.0, -4.0, -9.0]))[0]
    assert lines[2].startswith("| env | pdppo | 2 | -1.5 ± 0.5 | -8.5 ± 0.5 | ")
    assert f"t={t_max:.2f}" in lines[2]
    assert lines[3].startswith("| env | ppo | 3 | -6.3 ± 2.1 | ")  # population std of -6, -4, -9


def test_run_stats_hand_computed(tmp_path):
    """benchmarks/run_stats.py: each finished run's max / last / mean past a step, negated on
    request; a pair's line is the difference of means and Welch's p of those per-run values."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import run_stats

    curves = {"a": [[-0.9, -0.5, -0.1], [-0.8, -0.6, -0.4]], "b": [[-0.3, -0.2, -0.7],
                                                                  [-0.1, -0.1, -0.2]]}
    for algo, runs in curves.items():
        for seed, values in enumerate(runs):
            run = write_run(tmp_path / algo / f"seed{seed}", "Pendulum-v1", algo, seed,
                            dict(zip((100, 200, 300), values, strict=True)), "train/entropy_loss")
            (run / "done.json").write_text("{}")
    write_run(tmp_path / "b" / "seed9", "Pendulum-v1", "b", 9, {100: 5.0}, "train/entropy_loss")

    def get(*args):
        return run_stats.per_run(tmp_path, "train/entropy_loss", *args)["Pendulum-v1"]

    np.testing.assert_allclose(get("max")["a"], [-0.1, -0.4])
    np.testing.assert_allclose(get("last")["b"], [-0.7, -0.2])  # seed 9 unfinished
    np.testing.assert_allclose(get("mean", 100, True)["a"], [0.3, 0.5])  # steps 200, 300
    values = get("mean", 100, True)
    lines = run_stats.table({"env": values}, [("a", "b")]).splitlines()
    assert lines[2].startswith("| env | a | 2 | 0.4 ± 0.1414 | ")
    p = stats.welch(values["a"], values["b"])[1]
    assert lines[-1].startswith("- env: a − b = 0.1 [") and lines[-1].endswith(f"Welch p = {p:.2g}")


def test_critic_probe_reads_the_learners_own_inputs(tmp_path):
    """benchmarks/critic_probe.py scores a restored run on raw dataset rows as the learner saw
    them in training: Q1 at the data's actions equals Q1 on the training buffer's (standardised)
    rows, and the policy's figures are those of its actor there."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import critic_probe
    import torch

    from ctrlrl import api
    from ctrlrl.data import load

    algo = make_algo("td3bc", tmp_path / "run", total_steps=50)
    algo.learn()
    model = api.load(tmp_path / "run", replay=False)
    data, rows = load(str(OFFLINE_DATA)), np.arange(0, 3000, 7)
    got = critic_probe.probe(model, data, rows)
    o = algo.obs_dim
    stored = algo.replay.storage[torch.as_tensor(rows)]  # rows as the buffer holds them
    obs, actions = stored[:, :o], stored[:, o:o + algo.act_dim]
    with torch.no_grad():
        pi = algo.actor(obs)
        assert got["q_data"] == pytest.approx(algo.critic(obs, actions)[0].mean().item(), rel=1e-5)
        assert got["q_pi"] == pytest.approx(algo.critic(obs, pi)[0].mean().item(), rel=1e-5)
        assert got["distance"] == pytest.approx(((pi - actions) ** 2).mean().item(), rel=1e-5)
    assert got["data_at_bounds"] == pytest.approx((actions.abs() > 0.99).float().mean().item())


def test_npg_robustness_extends_a_best_at_the_grid_edge():
    """benchmarks/npg_robustness.py edges: a method whose best mean final return is its grid's
    largest or smallest γ_0 gets one more value past that edge, at the edge's ratio to its
    neighbour; a best inside the grid, or a one-value grid, gets none; diverged seeds rank last."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import npg_robustness

    data = {"E": {"top": {0.1: [1.0, 1.0], 0.3: [2.0, 2.0], 1.0: [3.0, 2.9]},
                  "inside": {0.1: [1.0], 0.3: [5.0], 1.0: [2.0]},
                  "bottom": {0.0005: [3.0, 3.0], 0.0015: [2.0, 2.0], 0.005: [1.0, 1.0]},
                  "diverged": {0.03: [9.0, -math.inf], 0.1: [4.0, 4.0]},
                  "alone": {0.3: [1.0]}}}
    assert npg_robustness.edges(data) == {"E": {"top": 3.3, "bottom": 0.00017, "diverged": 0.33}}


def test_orpo_lambda_verdict_hand_computed(tmp_path):
    """benchmarks/orpo_lambda.py: seeds that hack (true down, proxy up from the first evaluation,
    each by more than 5%),
    each ORPO divergence at its best λ against action-distribution KL at its best, and the λ
    whose final true return is above each unregularised reference's (ORPO's and PPO's λ = 0, kept
    apart) at Welch p < 0.05."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import orpo_lambda

    cells = {  # (algo, config): per seed (first, last) true return, then (first, last) proxy
        ("orpo", (("reg_coef", 0.0),)): [((10, 5), (10, 20)), ((10, 6), (10, 19)), ((6, 7), (10, 30))],
        ("orpo", (("divergence", "sqrt_chi2"), ("reg_coef", 0.1))): [((10, t), (10, 9)) for t in (9, 10, 11)],
        ("orpo", (("divergence", "sqrt_chi2"), ("reg_coef", 1.0))): [((10, t), (10, 9)) for t in (5, 7, 9)],
        ("ppo-adreg", (("reg_coef", 0.0),)): [((10, t), (10, 20)) for t in (9.9, 10, 10.1)],  # PPO
        ("ppo-adreg", (("reg_coef", 0.1),)): [((10, t), (10, 9)) for t in (8, 9, 10)],
        ("ppo-adreg", (("reg_coef", 1.0),)): [((10, t), (10, 10.3)) for t in (6, 6.5, 7)],  # +3%
        ("orpo", (("divergence", "kl"), ("reg_coef", 0.5))): [((10, 100), (10, 9))],  # one seed: no test
        ("orpo", (("divergence", "sqrt_chi2"), ("penalty_clip", 10.0), ("reg_coef", 0.1))):
            [((10, t), (10, 12)) for t in (3, 4)],  # a cell of its own, not λ 0.1's
    }
    for i, ((algo, config), seeds) in enumerate(cells.items()):
        for seed, (true, proxy) in enumerate(seeds):
            run = write_run(tmp_path / f"{i}" / f"seed{seed}", "E-v0", algo, seed,
                            dict(zip((100, 200), true, strict=True)), orpo_lambda.TRUE, **dict(config))
            with (run / "metrics.jsonl").open("a") as f:
                for step, value in zip((100, 200), proxy, strict=True):
                    f.write(json.dumps({"step": step, orpo_lambda.PROXY: value}) + "\n")
            label = f"{algo}[{','.join(f'{k}={v}' for k, v in config)}]"  # as a sweep names it
            (run / "sweep.json").write_text(json.dumps({"label": label, "variant": dict(config)}))
    groups = orpo_lambda.collect([str(tmp_path)])["E-v0"]
    assert groups[("none (orpo)", 0.0)]["hacks"].tolist() == [True, True, False]
    assert not groups[("none (ppo-adreg)", 0.0)]["hacks"].any(), "true return held: no hack"
    assert not groups[("orpo sqrt_chi2", 0.1)]["hacks"].any()
    assert groups[("orpo sqrt_chi2 clip 10", 0.1)]["hacks"].all()
    assert not groups[("ppo-adreg kl", 1.0)]["hacks"].any(), "a 3% proxy gain is within the margin"
    np.testing.assert_allclose(groups[("none (orpo)", 0.0)]["proxy"], [20, 19, 30])

    lines = orpo_lambda.verdict(groups)
    p = stats.welch(np.array([9, 10, 11]), np.array([8, 9, 10]))[1]
    assert lines[0].startswith("- best λ: orpo sqrt_chi2 (λ 0.1) − ppo-adreg kl (λ 0.1) = 1.00 [")
    assert lines[0].endswith(f"Welch p = {p:.2g}")
    assert lines[1].startswith("- best λ: orpo sqrt_chi2 clip 10 (λ 0.1) − ppo-adreg kl (λ 0.1) = -5.50 [")
    orpo_none = "- above the true return of none (orpo) (Welch p < 0.05): "
    ppo_none = "- above the true return of none (ppo-adreg) (Welch p < 0.05): "
    assert lines[2:] == [f"{orpo_none}orpo sqrt_chi2 at λ 0.1 of 0.1, 1",
                         f"{orpo_none}orpo sqrt_chi2 clip 10 at λ none of 0.1",
                         f"{orpo_none}ppo-adreg kl at λ 0.1 of 0.1, 1",
                         # PPO's reference (mean 10) is above every cell: each is judged against both
                         f"{ppo_none}orpo sqrt_chi2 at λ none of 0.1, 1",
                         f"{ppo_none}orpo sqrt_chi2 clip 10 at λ none of 0.1",
                         f"{ppo_none}ppo-adreg kl at λ none of 0.1, 1"]


def test_report_at_step_takes_each_run_as_it_stood_there(tmp_path, capsys):
    write_run(tmp_path / "seed0", "Pendulum-v1", "ppo", 0, {100: 1.0, 200: 5.0})
    write_run(tmp_path / "seed1", "Pendulum-v1", "ppo", 1, {100: 3.0, 200: 7.0, 300: 100.0})
    write_run(tmp_path / "seed2", "Pendulum-v1", "ppo", 2, {100: 50.0})  # not at step 200 yet
    out = tmp_path / "r"
    assert cli.main(["report", str(tmp_path), "-o", str(out), "--at-step", "200"]) == 0
    row = json.loads(out.with_suffix(".json").read_text())["rows"][0]
    assert row["seeds"] == 2 and row["final"] == [5.0, 7.0] and row["best"] == [5.0, 7.0]
    assert row["steps_min"] == row["steps_max"] == 200
    for step in ("0", "400"):
        assert cli.main(["report", str(tmp_path), "-o", str(out), "--at-step", step]) == 2
        assert_one_line_error(capsys.readouterr().err, f"--at-step {step}")


def test_report_finished_leaves_out_runs_without_done_json(tmp_path, capsys):
    for seed, final in enumerate([1.0, 3.0, 100.0]):
        run = write_run(tmp_path / f"seed{seed}", "Pendulum-v1", "ppo", seed, {100: final})
        if seed < 2:  # seed 2 is still training
            (run / "done.json").write_text("{}")
    out = tmp_path / "r"
    assert cli.main(["report", str(tmp_path), "-o", str(out), "--finished"]) == 0
    row = json.loads(out.with_suffix(".json").read_text())["rows"][0]
    assert row["seeds"] == 2 and row["final_mean"] == 2.0
    assert cli.main(["report", str(tmp_path / "seed2"), "-o", str(out), "--finished"]) == 2
    assert_one_line_error(capsys.readouterr().err, "--finished")
