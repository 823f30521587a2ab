"""Result tables and learning curves, regenerated from runs' own logs (`ctrlrl report`, `ctrlrl plot`).

Runs are grouped by env (one table block) and label (the algorithm, or a sweep's `algo[key=value]`
variant); the seeds of a group are the sample. Each group is shown in its natural metric (see
`NATURAL_METRICS`): regret for the average-reward learners, the true reward on reward-hacking envs,
the normalised score offline, else the evaluation return. Per group: the final and the best value
(mean over seeds with a 95% percentile-bootstrap CI), the IQM of the final values, the area under
the curve, seeds, steps, wall time and fps; optionally, between two named labels, the difference of
the means with its bootstrap CI and Welch's t-test.
Plots put each (env, metric, step unit) in its own panel.
"""

from __future__ import annotations

import glob
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from ctrlrl.core.config import read_run_config
from ctrlrl.core.errors import UserError
from ctrlrl.core.run_dir import DATASET_FILE
from ctrlrl.harness import stats

# Each group's natural metric, the first its runs log: cumulative regret for the average-reward
# learners (LOOP, UCRL2, random-policy), the true reward where a reward-hacking env reports it, the
# normalised score of offline runs, else the evaluation return, else the training return.
NATURAL_METRICS = ("train/regret", "eval/true_reward", "rollout/true_ep_rew_mean",
                   "eval/normalized_score", "eval/mean_reward", "rollout/ep_rew_mean")
# a result table reports evaluations (and regret), never the returns of exploring training episodes
REPORT_METRICS = tuple(m for m in NATURAL_METRICS if not m.startswith("rollout/"))
LOWER_IS_BETTER = {"train/regret"}
# settings that may differ between the seeds of one group (they do not change what is computed)
_FREE_KEYS = {"seed", "run_dir", "total_steps", "device", "progress", "tensorboard", "vec_mode",
              "checkpoint_every", "log_every", "eval_every", "eval_episodes"}


@dataclass
class Run:
    path: Path
    env: str
    label: str
    config: dict[str, Any]  # what must agree across the seeds of a group
    metrics: dict[str, dict[int, float]] = field(default_factory=dict)  # name → {step: value}

    def curve(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        points = self.metrics.get(metric, {})
        steps = np.array(sorted(points), dtype=np.int64)
        return steps, np.array([points[s] for s in steps], dtype=float)

    def cut(self, step: int) -> Run:
        """This run as it stood at `step`: its logs up to that step only."""
        metrics = {name: {s: v for s, v in points.items() if s <= step}
                   for name, points in self.metrics.items()}
        return Run(self.path, self.env, self.label, self.config, metrics)

    @property
    def steps(self) -> int:
        return max((max(p) for p in self.metrics.values() if p), default=0)

    @property
    def step_unit(self) -> str:
        """What the run's steps count: offline runs step through gradient updates."""
        return "gradient steps" if self.config.get("run.dataset") else "env steps"

    @property
    def wall_time(self) -> float:
        times = self.metrics.get("time/time_elapsed", {})
        return times[max(times)] if times else float("nan")


# ---- reading runs -----------------------------------------------------------------------------
def find_runs(patterns: list[str]) -> list[Path]:
    """Run dirs matched by shell-style globs; a matched folder that is not a run is searched."""
    found: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) or ([pattern] if Path(pattern).exists() else [])
        if not matches:
            raise UserError(f"no files match {pattern!r}; check the path (runs are in "
                            "runs/<env>/<algo>/... or <sweep out>/<env>/<label>/seed<k>)")
        before = len(found)
        for match in map(Path, matches):
            if (match / "config.yaml").is_file():
                found.append(match)
            elif match.is_dir():
                found += sorted(p.parent for p in match.rglob("config.yaml"))
        if len(found) == before:
            raise UserError(f"{pattern!r} matches no ctrlrl run dir (a folder with config.yaml "
                            "and metrics.jsonl); pass run dirs or a sweep's --out folder")
    return list(dict.fromkeys(found))  # a run matched twice counts once


def _defaults(name: str) -> dict[str, Any]:
    """Default settings of RunConfig ("run") or of an algorithm's config (an SB3 twin: its base's)."""
    from ctrlrl.api import REGISTRY
    from ctrlrl.core.config import RunConfig, to_dict
    from ctrlrl.harness.sweep import SB3_PREFIX

    if name == "run":
        return to_dict(RunConfig())
    cls = REGISTRY.get(name.removeprefix(SB3_PREFIX))
    return to_dict(cls.Config()) if cls is not None else {}


def load_run(path: Path) -> Run:
    cfg_file, metrics_file = path / "config.yaml", path / "metrics.jsonl"
    if not cfg_file.is_file() or not metrics_file.is_file():
        raise UserError(f"{path} is not a ctrlrl run dir (needs config.yaml and metrics.jsonl)")
    cfg = read_run_config(path)
    spec_file = path / "sweep.json"
    label = json.loads(spec_file.read_text())["label"] if spec_file.is_file() else cfg["algo"]
    # settings a run's version did not write yet count as their defaults
    run_cfg, algo_cfg = {**_defaults("run"), **cfg["run"]}, {**_defaults(cfg["algo"]), **cfg["config"]}
    settings = {f"run.{k}": v for k, v in run_cfg.items() if k not in _FREE_KEYS}
    settings.update({f"config.{k}": v for k, v in algo_cfg.items()})
    record = path / DATASET_FILE
    if record.is_file():  # an offline run's seeds must have read the same rows, too
        settings["dataset.sha256"] = json.loads(record.read_text()).get("sha256")
    run = Run(path, cfg["run"]["env"], label, {"algo": cfg["algo"], **settings})
    with open(metrics_file) as f:
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if n == 1 or line.endswith("\n"):  # only a run still writing may end mid-line
                    raise UserError(f"{metrics_file} line {n} is not JSON; the file is damaged") \
                        from None
                continue
            for key, value in row.items():
                if key != "step":  # on duplicate steps (resume) the last value wins
                    run.metrics.setdefault(key, {})[int(row["step"])] = float(value)
    return run


def group_runs(runs: list[Run]) -> dict[str, dict[str, list[Run]]]:
    """env → label → runs, checking that the seeds of a group were configured alike."""
    groups: dict[str, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        group = groups[run.env][run.label]
        if group and run.config != group[0].config:
            first = group[0]
            diff = sorted(k for k in run.config.keys() | first.config.keys()
                          if run.config.get(k) != first.config.get(k))
            if diff == ["dataset.sha256"]:
                known = first.config.get("dataset.sha256") and run.config.get("dataset.sha256")
                raise UserError(f"{first.path} and {run.path} are both {run.label!r} on {run.env} "
                                f"but may not have read the same rows of {run.config.get('run.dataset')} "
                                + (f"(their {DATASET_FILE} digests differ: the file changed between them)"
                                   if known else f"(one has no {DATASET_FILE}: it predates the record)")
                                + "; train again the runs made on the other file")
            shown = ", ".join(f"{k}: {first.config.get(k)!r} vs {run.config.get(k)!r}" for k in diff[:3])
            raise UserError(f"{first.path} and {run.path} are both {run.label!r} on {run.env} but "
                            f"differ in {shown}; report them separately or sweep them with --vary")
        group.append(run)
    return {env: dict(labels) for env, labels in sorted(groups.items())}


def natural_metric(runs: list[Run], candidates: tuple[str, ...] = NATURAL_METRICS) -> str:
    """The metric the seeds of one group are shown in: the first candidate they log, passing over
    one logged at a single step (a final evaluation) for a later one every run logs as a curve."""
    logged = [m for m in candidates if any(r.metrics.get(m) for r in runs)]
    if not logged:
        run = runs[0]
        has = ", ".join(sorted(k for k in run.metrics if "/" in k)[:8])
        raise UserError(f"{run.path} logs none of {', '.join(candidates)} (it logs {has or 'nothing yet'}"
                        "; trained with --eval-every 0?); pass --metric with a logged name, e.g. "
                        "rollout/ep_rew_mean")
    curves = [m for m in logged if all(len(r.metrics.get(m, ())) > 1 for r in runs)]
    return curves[0] if curves else logged[0]


def choose_metrics(groups: dict[str, dict[str, list[Run]]], metric: str | None = None,
                   candidates: tuple[str, ...] = NATURAL_METRICS) -> dict[tuple[str, str], str]:
    """(env, label) → the metric its runs are shown in: `metric` for all if given, else each
    group's natural one. Runs lacking their group's metric are an error that names them all."""
    chosen = {(env, label): metric or natural_metric(runs, candidates)
              for env, labels in groups.items() for label, runs in labels.items()}
    missing = [f"{r.path} ({chosen[env, label]})" for env, labels in groups.items()
               for label, runs in labels.items() for r in runs if not r.metrics.get(chosen[env, label])]
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise UserError(f"{len(missing)} run(s) do not log the metric they are shown in: {shown}; "
                        "pass --metric with a name every run logs, or leave those runs out")
    return chosen


# ---- statistics -------------------------------------------------------------------------------
def summarize(runs: list[Run], metric: str) -> dict[str, Any]:
    """The statistics of one (env, label) group; each run's final/best/AUC first, then across seeds."""
    curves = [r.curve(metric) for r in runs]
    final = np.array([v[-1] for _, v in curves])
    best = np.array([v.min() if metric in LOWER_IS_BETTER else v.max() for _, v in curves])
    auc = np.array([stats.area_under_curve(s, v) for s, v in curves])
    steps = np.array([r.steps for r in runs])
    wall = np.array([r.wall_time for r in runs])
    out: dict[str, Any] = {"seeds": len(runs), "steps_min": int(steps.min()), "steps_max": int(steps.max()),
                           "iqm_final": stats.iqm(final), "auc_mean": float(auc.mean()),
                           "wall_time_mean": float(np.nanmean(wall)) if np.isfinite(wall).any() else None,
                           "fps_mean": float(np.nanmean(steps / wall)) if np.isfinite(wall).any() else None,
                           "final": final.tolist(), "best": best.tolist()}
    for name, values in (("final", final), ("best", best)):
        low, high = stats.bootstrap_ci(values)
        out[f"{name}_mean"], out[f"{name}_ci"] = float(values.mean()), [float(low), float(high)]
    return out


def _fmt(x: float | None) -> str:
    if x is None or not np.isfinite(x):
        return "—"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"


# With 2 or 3 seeds a resample made of the lowest seed alone has probability 1/4 or 1/27, above the
# 2.5% tail, so the percentile interval is the seeds' own range: the caption says so.
_FEW_SEEDS_CAVEAT = (" With 2 or 3 seeds that percentile interval is the seeds' own range, their "
                     "lowest and highest values: read it as a range, not a confidence interval.")


def _fmt_mean_ci(row: dict[str, Any], name: str) -> str:
    """'mean [low, high]'; one seed has no spread to bootstrap, so its row says so instead."""
    if row["seeds"] < 2:
        return f"{_fmt(row[f'{name}_mean'])} (one seed, no CI)"
    low, high = row[f"{name}_ci"]
    return f"{_fmt(row[f'{name}_mean'])} [{_fmt(low)}, {_fmt(high)}]"


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# ---- the report -------------------------------------------------------------------------------
def read_groups(patterns: list[str], finished: bool = False, at_step: int | None = None
                ) -> dict[str, dict[str, list[Run]]]:
    """The runs `patterns` match, grouped; with `finished`, only those a sweep finished; with
    `at_step`, only those that have reached that step, each as it stood there (cells compared at
    one budget while their runs train on)."""
    paths = find_runs(patterns)
    if finished:
        from ctrlrl.harness.sweep import DONE_FILE

        paths = [p for p in paths if (p / DONE_FILE).is_file()]
        if not paths:
            raise UserError(f"--finished: none of the runs {' '.join(patterns)} matches has "
                            f"finished ({DONE_FILE}, written by `ctrlrl sweep`); drop --finished "
                            "to report runs still training or trained by `ctrlrl train`")
    runs = [load_run(p) for p in paths]
    if at_step is not None:
        if at_step <= 0:
            raise UserError(f"--at-step {at_step}: pass a positive step, e.g. --at-step 100000")
        runs = [r.cut(at_step) for r in runs if r.steps >= at_step]
        if not runs:
            raise UserError(f"--at-step {at_step}: none of the runs {' '.join(patterns)} matches "
                            "has reached that step; pass a smaller one")
    return group_runs(runs)


def pool_envs(groups: dict[str, dict[str, list[Run]]], chosen: dict[tuple[str, str], str]
              ) -> tuple[dict[str, dict[str, list[Run]]], dict[tuple[str, str], str]]:
    """`groups` and `chosen` with one more env, "all N envs": per label, its runs on every env
    pooled. Only meaningful for a normalised score (returns of different envs live on different
    scales) and labels run on every env."""
    labels = sorted(set.intersection(*(set(labels) for labels in groups.values())))
    if not labels:
        raise UserError("--aggregate: no label has runs on every env; select runs that do")
    not_normalised = sorted({chosen[env, label] for env in groups for label in labels} -
                            {"eval/normalized_score"})
    if len(groups) > 1 and not_normalised:
        raise UserError(f"--aggregate mixes runs of different envs ({', '.join(groups)}) into one "
                        f"panel, but {', '.join(not_normalised)} is not normalised across envs; "
                        "aggregate eval/normalized_score (offline runs) or drop --aggregate")
    pooled = f"all {len(groups)} envs"
    runs = {label: [r for env in groups.values() for r in env[label]] for label in labels}
    first_env = next(iter(groups))
    return ({**groups, pooled: runs},
            {**chosen, **{(pooled, label): chosen[first_env, label] for label in labels}})


def build_report(groups: dict[str, dict[str, list[Run]]], chosen: dict[tuple[str, str], str],
                 welch: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """Everything the table shows, as plain data (also written as <output>.json): one row per
    (env, label) in its metric `chosen[env, label]` (see `choose_metrics`)."""
    rows = []
    for env, labels in groups.items():
        for label, runs in sorted(labels.items()):
            metric = chosen[env, label]
            rows.append({"env": env, "label": label, "metric": metric, **summarize(runs, metric),
                         "runs": [str(r.path) for r in runs]})
    metrics = {r["metric"] for r in rows}
    # one metric for the whole table, or None where rows differ (each row names its own)
    report: dict[str, Any] = {"metric": metrics.pop() if len(metrics) == 1 else None, "rows": rows}
    present = {r["label"] for r in rows}
    if welch:
        report["welch"] = [{"a": a, "b": b} for a, b in welch]
    for a, b in welch:
        if a not in present or b not in present:
            raise UserError(f"--welch {a},{b}: no runs labelled {sorted({a, b} - present)}; labels "
                            f"here: {', '.join(sorted(present))}")
        for env in {r["env"] for r in rows}:
            ra = next((r for r in rows if r["env"] == env and r["label"] == a), None)
            rb = next((r for r in rows if r["env"] == env and r["label"] == b), None)
            if (ra is None or rb is None or min(ra["seeds"], rb["seeds"]) < 2
                    or ra["metric"] != rb["metric"]):
                continue
            # keyed by the label compared against: one label may be compared with several
            ra.setdefault("welch", {})[b] = {
                k: {**dict(zip(("t", "p"), stats.welch(ra[k], rb[k]), strict=True)),
                    "diff": ra[f"{k}_mean"] - rb[f"{k}_mean"],
                    "diff_ci": list(stats.bootstrap_diff_ci(ra[k], rb[k]))}
                for k in ("final", "best")}
    return report


def markdown(report: dict[str, Any], title: str, image: str | None, command: str | None,
             notes: str | None = None) -> str:
    metric, welch = report["metric"], report.get("welch", [])
    pairs = ", ".join(f"{w['a']} − {w['b']}" for w in welch)
    lines = [f"# {title}", ""]
    if command:
        lines += [f"Regenerate: `{command}` ({date.today().isoformat()}).", ""]
    shown = f"Metric `{metric}`" if metric else "Metric: each algorithm's natural one (column Metric)"
    lines += [f"{shown}. Final = last value, best = best value of each run (the highest; the lowest "
              "for regret); mean over seeds with a 95% percentile-bootstrap CI "
              f"({stats.N_RESAMPLES} resamples, seed {stats.SEED}); IQM = interquartile mean of the "
              "final values; AUC = the curve's mean level (trapezoid / steps); wall time "
              "per run, fps = steps / wall time (training and evaluation); steps are env steps, "
              "or gradient steps for offline algorithms."
              + (f" {pairs}: difference of the two labels' means with its 95% bootstrap CI (each "
                 "label's seeds resampled on their own) and Welch's t-test." if welch else "")
              + (_FEW_SEEDS_CAVEAT if any(2 <= r["seeds"] <= 3 for r in report["rows"]) else ""),
              ""]
    head = ["Env", "Algorithm", *([] if metric else ["Metric"]), "Seeds", "Steps", "Final", "Best",
            "IQM final", "AUC", "Wall time / run", "fps"]
    head += [f"{w['a']} − {w['b']}: Δ [CI], Welch t, p (final; best)" for w in welch]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        steps = f"{r['steps_min']}" if r["steps_min"] == r["steps_max"] else \
            f"{r['steps_min']}–{r['steps_max']}"
        cells = [r["env"], r["label"], *([] if metric else [f"`{r['metric']}`"]), str(r["seeds"]), steps,
                 _fmt_mean_ci(r, "final"), _fmt_mean_ci(r, "best"),
                 _fmt(r["iqm_final"]), _fmt(r["auc_mean"]), _fmt_time(r["wall_time_mean"]),
                 _fmt(r["fps_mean"])]
        for pair in welch:
            w = r.get("welch", {}).get(pair["b"]) if r["label"] == pair["a"] else None
            cells.append("; ".join(f"{_fmt(w[k]['diff'])} [{_fmt(w[k]['diff_ci'][0])}, "
                                   f"{_fmt(w[k]['diff_ci'][1])}] t={w[k]['t']:.2f} p={w[k]['p']:.3g}"
                                   for k in ("final", "best")) if w else "")
        lines.append("| " + " | ".join(cells) + " |")
    if image:
        lines += ["", f"![learning curves]({image})"]
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


def write_report(patterns: list[str], output: str, metric: str | None = None,
                 welch: Sequence[tuple[str, str]] = (), title: str | None = None,
                 command: str | None = None, pooled: bool = False,
                 notes: str | None = None, finished: bool = False,
                 at_step: int | None = None) -> list[Path]:
    """`<output>.md` (table, then the text of the `notes` file), `<output>.png` (curves),
    `<output>.json` (the numbers); with `finished`, of the runs a sweep finished only; with
    `at_step`, of the runs that reached that step, as they stood there."""
    if notes is not None:
        try:
            notes = Path(notes).read_text()
        except OSError as exc:
            raise UserError(f"--notes {notes}: cannot read it ({exc.strerror})") from None
    out = Path(output)
    if out.suffix in (".md", ".png", ".json"):
        out = out.with_suffix("")
    groups = read_groups(patterns, finished, at_step)
    chosen = choose_metrics(groups, metric, REPORT_METRICS)
    if pooled:
        groups, chosen = pool_envs(groups, chosen)
    report = build_report(groups, chosen, welch)
    png = plot_groups(groups, chosen, out.with_suffix(".png"))
    md = out.with_suffix(".md")
    md.write_text(markdown(report, title or out.name, png.name, command, notes))
    js = out.with_suffix(".json")
    js.write_text(json.dumps(report, indent=1))
    return [md, png, js]


# ---- curves -------------------------------------------------------------------------------------
def plot_runs(run_dirs: list[str], output: str, metric: str | None = None) -> Path:
    """`ctrlrl plot`: curves of any runs, each group in its natural metric (or `metric`)."""
    groups = read_groups(run_dirs)
    return plot_groups(groups, choose_metrics(groups, metric), Path(output))


def plot_groups(groups: dict[str, dict[str, list[Run]]], chosen: dict[tuple[str, str], str],
                out: Path) -> Path:
    """`draw_curves` written to `out` (its suffix names the format)."""
    import matplotlib.pyplot as plt

    fig = draw_curves(groups, chosen)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
    except (OSError, ValueError) as exc:  # an unwritable folder; a format matplotlib cannot write
        raise UserError(f"cannot write {out}: {getattr(exc, 'strerror', None) or exc}; choose another "
                        "output file, e.g. -o curves.png") from None
    finally:
        plt.close(fig)
    return out


def draw_curves(groups: dict[str, dict[str, list[Run]]], chosen: dict[tuple[str, str], str]) -> Any:
    """A matplotlib figure with one panel per (env, metric, step unit) and one line per label: the
    mean across seeds with a 95% bootstrap CI band; a label with a single point is a marker with
    its value written beside it.

    Seeds are interpolated onto a common step grid, up to the shortest run of the group.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    panels: dict[tuple[str, str, str], dict[str, list[Run]]] = defaultdict(dict)
    for env, labels in groups.items():
        for label, runs in labels.items():  # the seeds of a group share their config: one unit
            panels[env, chosen[env, label], runs[0].step_unit][label] = runs
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, ((env, metric, unit), labels) in zip(axes.flat, panels.items(), strict=False):
        for label, runs in sorted(labels.items()):
            curves = [r.curve(metric) for r in runs]
            start, end = min(s[0] for s, _ in curves), min(s[-1] for s, _ in curves)
            grid = np.linspace(start, end, 200 if end > start else 1)
            ys = np.stack([np.interp(grid, s, v) for s, v in curves])
            low, high = stats.bootstrap_ci(ys, n_resamples=2000)
            mean = ys.mean(0)
            if len(grid) == 1:  # nothing to draw a line through: a marker, its interval, its value
                bar = ax.errorbar(grid, mean, yerr=[mean - low, high - mean], fmt="o", capsize=3,
                                  label=f"{label} (n={len(runs)}, one point)")
                ax.annotate(f"{_fmt(mean[0])}", (grid[0], mean[0]), xytext=(6, 4),
                            textcoords="offset points", fontsize="small",
                            color=bar.lines[0].get_color())
                continue
            line, = ax.plot(grid, mean, label=f"{label} (n={len(runs)})")
            ax.fill_between(grid, low, high, alpha=0.25, color=line.get_color())
        ax.set_title(f"{env}: {metric}", fontsize="medium")
        ax.set_xlabel(unit)
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 50k, 1M: long numbers overlap
        ax.set_ylabel(metric.split("/")[-1] + (" (lower is better)" if metric in LOWER_IS_BETTER else ""))
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig
