"""`ctrlrl plot` and `ctrlrl report`: each run in its natural metric, one panel per metric, curves
rather than lone dots. Real runs (tiny) show which keys each algorithm family logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import FAST, assert_one_line_error, make_algo

import ctrlrl
from ctrlrl import cli
from ctrlrl.harness import report


def _train(algo: str, run_dir: Path, env: str | None = None, steps: int | None = None, **extra) -> Path:
    model = make_algo(algo, run_dir, env=env, total_steps=steps, **extra)
    model.setup_run_dir()
    model.learn()
    model.close()
    return run_dir


@pytest.fixture(scope="module")
def hopper_runs(tmp_path_factory) -> Path:
    """runs/Hopper-v5/<algo>/0 for an online run (PPO) and an offline one (TD3+BC), as the
    README's `ctrlrl plot runs/Hopper-v5/*/*` finds them; two evaluations each."""
    root = tmp_path_factory.mktemp("plots") / "runs" / "Hopper-v5"
    _train("ppo", root / "ppo" / "0", env="Hopper-v5", steps=128, eval_every=64, eval_episodes=1)
    _train("td3bc", root / "td3bc" / "0", steps=100, eval_every=50, eval_episodes=1)
    return root


def _write_run(path: Path, algo: str, metrics: dict[str, dict[int, float]], env: str = "Pendulum-v1",
               **run) -> Path:
    """A run dir as ctrlrl writes it, with chosen metrics."""
    path.mkdir(parents=True)
    cfg = {"algo": algo, "run": {"env": env, "seed": 0, **run}, "config": {}}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    steps = sorted({s for points in metrics.values() for s in points})
    rows = [{"step": s, **{k: v[s] for k, v in metrics.items() if s in v}} for s in steps]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _panels(fig) -> dict[str, object]:
    return {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}


# ---- each algorithm family's natural metric, from what it really logs ---------------------------
@pytest.mark.parametrize(("algo", "env", "steps", "extra", "metric"), [
    ("loop", None, None, {}, "train/regret"),
    ("ucrl2", None, None, {}, "train/regret"),
    ("orpo", None, None, {"eval_every": 256, "eval_episodes": 1}, "eval/true_reward"),
    # no evaluation curve (at most a final evaluation): the training curve, not a dot
    ("ppo", "CartPole-v1", 256, {}, "rollout/ep_rew_mean"),
])
def test_natural_metric_of_real_runs(algo, env, steps, extra, metric, tmp_path):
    run = report.load_run(_train(algo, tmp_path / algo, env=env, steps=steps, **extra))
    assert report.natural_metric([run]) == metric
    assert len(run.metrics[metric]) > 1  # a curve


def test_random_policy_is_shown_in_regret(tmp_path):
    model = ctrlrl.make("random-policy", "ctrlrl/RiverSwim-v0", seed=0, total_steps=200,
                        run_dir=str(tmp_path / "r"), overrides=FAST["loop"])
    model.setup_run_dir()
    model.learn()
    model.close()
    assert report.natural_metric([report.load_run(tmp_path / "r")]) == "train/regret"


def test_natural_metric_order_and_curve_preference(tmp_path):
    def natural(**metrics) -> str:
        path = tmp_path / str(len(list(tmp_path.iterdir())))
        return report.natural_metric([report.load_run(_write_run(path, "ppo", {
            k.replace("__", "/"): v for k, v in metrics.items()}))])

    curve, point = {100: 1.0, 200: 2.0}, {200: 2.0}
    assert natural(eval__mean_reward=curve, rollout__ep_rew_mean=curve) == "eval/mean_reward"
    assert natural(eval__mean_reward=point, rollout__ep_rew_mean=curve) == "rollout/ep_rew_mean"
    assert natural(eval__mean_reward=point, rollout__ep_rew_mean=point) == "eval/mean_reward"
    assert natural(eval__normalized_score=curve, eval__mean_reward=curve) == "eval/normalized_score"
    assert natural(eval__true_reward=point, rollout__true_ep_rew_mean=curve,
                   eval__mean_reward=curve) == "rollout/true_ep_rew_mean"


# ---- the README's command: an offline run beside an online one ----------------------------------
def test_plot_offline_beside_online(hopper_runs, tmp_path, capsys):
    out = tmp_path / "curves.png"
    assert cli.main(["plot", str(hopper_runs / "*" / "*"), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out) in capsys.readouterr().out

    groups = report.read_groups([str(hopper_runs / "*" / "*")])
    chosen = report.choose_metrics(groups)
    assert chosen == {("Hopper-v5", "ppo"): "eval/mean_reward",
                      ("Hopper-v5", "td3bc"): "eval/normalized_score"}
    panels = _panels(report.draw_curves(groups, chosen))
    assert set(panels) == {"Hopper-v5: eval/mean_reward", "Hopper-v5: eval/normalized_score"}
    assert panels["Hopper-v5: eval/normalized_score"].get_xlabel() == "gradient steps"
    assert panels["Hopper-v5: eval/mean_reward"].get_xlabel() == "env steps"
    for ax in panels.values():  # one curve each, drawn through many points
        (line,) = ax.get_lines()
        assert len(line.get_xdata()) > 2


def test_forced_metric_splits_offline_and_online_steps(hopper_runs):
    groups = report.read_groups([str(hopper_runs / "*" / "*")])
    chosen = report.choose_metrics(groups, "eval/mean_reward")
    assert set(chosen.values()) == {"eval/mean_reward"}
    axes = [ax for ax in report.draw_curves(groups, chosen).axes if ax.get_visible()]
    # the same metric, but gradient steps and env steps do not share an axis
    assert sorted(ax.get_xlabel() for ax in axes) == ["env steps", "gradient steps"]


def test_forced_metric_names_every_run_lacking_it(hopper_runs, capsys):
    assert cli.main(["plot", str(hopper_runs / "*" / "*"), "--metric", "eval/normalized_score",
                     "-o", str(hopper_runs / "x.png")]) == 2
    assert_one_line_error(capsys.readouterr().err, str(hopper_runs / "ppo" / "0"), "--metric")
    assert cli.main(["plot", str(hopper_runs / "*" / "*"), "--metric", "train/nothing",
                     "-o", str(hopper_runs / "x.png")]) == 2
    assert_one_line_error(capsys.readouterr().err, str(hopper_runs / "ppo" / "0"),
                          str(hopper_runs / "td3bc" / "0"), "2 run(s)")


def test_report_of_runs_in_different_metrics(hopper_runs, tmp_path, capsys):
    assert cli.main(["report", str(hopper_runs), "-o", str(tmp_path / "table")]) == 0
    data = json.loads((tmp_path / "table.json").read_text())
    assert data["metric"] is None
    assert {r["label"]: r["metric"] for r in data["rows"]} == {
        "ppo": "eval/mean_reward", "td3bc": "eval/normalized_score"}
    table = (tmp_path / "table.md").read_text()
    assert "| Metric |" in table and "`eval/normalized_score`" in table


def test_report_best_regret_is_the_lowest(tmp_path):
    _write_run(tmp_path / "a", "loop", {"train/regret": {100: 5.0, 200: 3.0, 300: 4.0}},
               env="ctrlrl/RiverSwim-v0")
    groups = report.read_groups([str(tmp_path / "a")])
    (row,) = report.build_report(groups, report.choose_metrics(groups, None,
                                                               report.REPORT_METRICS))["rows"]
    assert row["metric"] == "train/regret"
    assert (row["final_mean"], row["best_mean"]) == (4.0, 3.0)


# ---- drawing --------------------------------------------------------------------------------------
def test_a_lone_point_is_a_labelled_marker(tmp_path):
    _write_run(tmp_path / "a", "td3bc", {"eval/mean_reward": {500: 12.5}})
    groups = report.read_groups([str(tmp_path / "a")])
    fig = report.draw_curves(groups, report.choose_metrics(groups))
    (ax,) = _panels(fig).values()
    assert [t.get_text() for t in ax.texts] == ["12.5"]  # the value beside the marker
    assert "one point" in ax.get_legend().get_texts()[0].get_text()
    markers = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert len(markers) == 1 and list(markers[0].get_xdata()) == [500]


def test_unwritable_plot_output(hopper_runs, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert cli.main(["plot", str(hopper_runs / "*" / "*"), "-o", str(blocker / "c.png")]) == 2
    assert_one_line_error(capsys.readouterr().err, str(blocker / "c.png"))
    assert cli.main(["plot", str(hopper_runs / "*" / "*"), "-o", str(tmp_path / "c.xyz")]) == 2
    assert_one_line_error(capsys.readouterr().err, "c.xyz", "-o curves.png")
