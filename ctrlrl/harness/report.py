"""Result tables and learning curves, regenerated from runs' own logs (`ctrlrl report`, `ctrlrl plot`).

Runs are grouped by env (one table block, one plot panel) and label (the algorithm, or a sweep's
`algo[key=value]` variant); the seeds of a group are the sample. Per group: the final and the best
evaluation (mean over seeds with a 95% percentile-bootstrap CI), the IQM of the final values, the
area under the evaluation curve, seeds, env steps, wall time and fps; optionally Welch's t-test
between two named labels. Offline runs report `eval/normalized_score` when they log it.
"""

from __future__ import annotations

import glob
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ctrlrl.core.errors import UserError
from ctrlrl.harness import stats

REPORT_METRICS = ("eval/normalized_score", "eval/mean_reward")
PLOT_METRICS = (*REPORT_METRICS, "rollout/ep_rew_mean")
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

    @property
    def steps(self) -> int:
        return max((max(p) for p in self.metrics.values() if p), default=0)

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
    cfg = yaml.safe_load(cfg_file.read_text())
    spec_file = path / "sweep.json"
    label = json.loads(spec_file.read_text())["label"] if spec_file.is_file() else cfg["algo"]
    # settings a run's version did not write yet count as their defaults
    run_cfg, algo_cfg = {**_defaults("run"), **cfg["run"]}, {**_defaults(cfg["algo"]), **cfg["config"]}
    settings = {f"run.{k}": v for k, v in run_cfg.items() if k not in _FREE_KEYS}
    settings.update({f"config.{k}": v for k, v in algo_cfg.items()})
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
            shown = ", ".join(f"{k}: {first.config.get(k)!r} vs {run.config.get(k)!r}" for k in diff[:3])
            raise UserError(f"{first.path} and {run.path} are both {run.label!r} on {run.env} but "
                            f"differ in {shown}; report them separately or sweep them with --vary")
        group.append(run)
    return {env: dict(labels) for env, labels in sorted(groups.items())}


def pick_metric(groups: dict[str, dict[str, list[Run]]], metric: str | None,
                candidates: tuple[str, ...] = REPORT_METRICS) -> str:
    """The metric every run logs: `metric` if given, else the first candidate some run logs.
    A run lacking it is an error that names the run and the fix."""
    runs = [r for labels in groups.values() for rs in labels.values() for r in rs]
    chosen = metric or next((m for m in candidates if any(r.metrics.get(m) for r in runs)), None)
    if chosen is None:
        raise UserError(f"no run logs any of {', '.join(candidates)} (were they trained with "
                        "--eval-every 0?); pass --metric with a logged name, e.g. rollout/ep_rew_mean")
    for run in runs:
        if not run.metrics.get(chosen):
            logged = ", ".join(sorted(k for k in run.metrics if "/" in k)[:8])
            raise UserError(f"{run.path} logs no {chosen!r} (it logs {logged or 'nothing yet'}); "
                            "pass --metric with a name every run logs, or leave that run out")
    return chosen


# ---- statistics -------------------------------------------------------------------------------
def summarize(runs: list[Run], metric: str) -> dict[str, Any]:
    """The statistics of one (env, label) group; each run's final/best/AUC first, then across seeds."""
    curves = [r.curve(metric) for r in runs]
    final = np.array([v[-1] for _, v in curves])
    best = np.array([v.max() for _, v in curves])
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


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# ---- the report -------------------------------------------------------------------------------
def read_groups(patterns: list[str]) -> dict[str, dict[str, list[Run]]]:
    return group_runs([load_run(p) for p in find_runs(patterns)])


def aggregate(groups: dict[str, dict[str, list[Run]]], metric: str) -> dict[str, list[Run]]:
    """label → its runs on every env, for one pooled row: only meaningful for a normalised score
    (returns of different envs live on different scales) and labels run on every env."""
    if len(groups) > 1 and "normalized" not in metric:
        raise UserError(f"--aggregate mixes runs of different envs ({', '.join(groups)}) into one "
                        f"panel, but {metric!r} is not normalised across envs; aggregate "
                        "eval/normalized_score (offline runs) or drop --aggregate")
    labels = set.intersection(*(set(labels) for labels in groups.values()))
    if not labels:
        raise UserError("--aggregate: no label has runs on every env; select runs that do")
    return {label: [r for env in groups.values() for r in env[label]] for label in sorted(labels)}


def build_report(groups: dict[str, dict[str, list[Run]]], metric: str,
                 welch: tuple[str, str] | None = None, pooled: bool = False) -> dict[str, Any]:
    """Everything the table shows, as plain data (also written as <output>.json).

    `pooled` adds one row per label over all envs' runs (see `aggregate`).
    """
    rows = []
    for env, labels in groups.items():
        for label, runs in sorted(labels.items()):
            rows.append({"env": env, "label": label, **summarize(runs, metric),
                         "runs": [str(r.path) for r in runs]})
    if pooled:
        for label, runs in aggregate(groups, metric).items():
            rows.append({"env": f"all {len(groups)} envs", "label": label,
                         **summarize(runs, metric), "runs": [str(r.path) for r in runs]})
    report: dict[str, Any] = {"metric": metric, "rows": rows}
    if welch:
        a, b = welch
        present = {r["label"] for r in rows}
        if a not in present or b not in present:
            raise UserError(f"--welch {a},{b}: no runs labelled {sorted({a, b} - present)}; labels "
                            f"here: {', '.join(sorted(present))}")
        report["welch"] = {"a": a, "b": b}
        for env in {r["env"] for r in rows}:
            ra = next((r for r in rows if r["env"] == env and r["label"] == a), None)
            rb = next((r for r in rows if r["env"] == env and r["label"] == b), None)
            if ra is None or rb is None or min(ra["seeds"], rb["seeds"]) < 2:
                continue
            ra["welch"] = {k: dict(zip(("t", "p"), stats.welch(ra[k], rb[k]), strict=True))
                           for k in ("final", "best")}
    return report


def markdown(report: dict[str, Any], title: str, image: str | None, command: str | None,
             notes: str | None = None) -> str:
    metric, welch = report["metric"], report.get("welch")
    lines = [f"# {title}", ""]
    if command:
        lines += [f"Regenerate: `{command}` ({date.today().isoformat()}).", ""]
    lines += [f"Metric `{metric}`. Final = last evaluation, best = highest evaluation of each run; "
              "mean over seeds with a 95% percentile-bootstrap CI "
              f"({stats.N_RESAMPLES} resamples, seed {stats.SEED}); IQM = interquartile mean of the "
              "final values; AUC = the evaluation curve's mean level (trapezoid / steps); wall time "
              "per run, fps = steps / wall time (training and evaluation); steps are env steps, "
              "or gradient steps for offline algorithms.", ""]
    head = ["Env", "Algorithm", "Seeds", "Steps", "Final", "Best", "IQM final", "AUC",
            "Wall time / run", "fps"]
    if welch:
        head.append(f"Welch {welch['a']} vs {welch['b']} (final; best)")
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["rows"]:
        steps = f"{r['steps_min']}" if r["steps_min"] == r["steps_max"] else \
            f"{r['steps_min']}–{r['steps_max']}"
        cells = [r["env"], r["label"], str(r["seeds"]), steps,
                 f"{_fmt(r['final_mean'])} [{_fmt(r['final_ci'][0])}, {_fmt(r['final_ci'][1])}]",
                 f"{_fmt(r['best_mean'])} [{_fmt(r['best_ci'][0])}, {_fmt(r['best_ci'][1])}]",
                 _fmt(r["iqm_final"]), _fmt(r["auc_mean"]), _fmt_time(r["wall_time_mean"]),
                 _fmt(r["fps_mean"])]
        if welch:
            w = r.get("welch")
            cells.append(f"t={w['final']['t']:.2f} p={w['final']['p']:.3g}; "
                         f"t={w['best']['t']:.2f} p={w['best']['p']:.3g}" if w else "")
        lines.append("| " + " | ".join(cells) + " |")
    if image:
        lines += ["", f"![learning curves]({image})"]
    if notes:
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


def write_report(patterns: list[str], output: str, metric: str | None = None,
                 welch: tuple[str, str] | None = None, title: str | None = None,
                 command: str | None = None, pooled: bool = False,
                 notes: str | None = None) -> list[Path]:
    """`<output>.md` (table, then the text of the `notes` file), `<output>.png` (curves),
    `<output>.json` (the numbers)."""
    if notes is not None:
        try:
            notes = Path(notes).read_text()
        except OSError as exc:
            raise UserError(f"--notes {notes}: cannot read it ({exc.strerror})") from None
    out = Path(output)
    if out.suffix in (".md", ".png", ".json"):
        out = out.with_suffix("")
    groups = read_groups(patterns)
    metric = pick_metric(groups, metric)
    report = build_report(groups, metric, welch, pooled)
    if pooled:
        groups = {**groups, f"all {len(groups)} envs": aggregate(groups, metric)}
    png = plot_groups(groups, metric, out.with_suffix(".png"))
    md = out.with_suffix(".md")
    md.write_text(markdown(report, title or out.name, png.name, command, notes))
    js = out.with_suffix(".json")
    js.write_text(json.dumps(report, indent=1))
    return [md, png, js]


# ---- curves -------------------------------------------------------------------------------------
def plot_runs(run_dirs: list[str], output: str, metric: str | None = None) -> Path:
    """`ctrlrl plot`: curves of any runs, falling back to training returns without evaluations."""
    groups = read_groups(run_dirs)
    return plot_groups(groups, pick_metric(groups, metric, PLOT_METRICS), Path(output))


def plot_groups(groups: dict[str, dict[str, list[Run]]], metric: str, out: Path) -> Path:
    """One panel per env, one line per label: mean across seeds with a 95% bootstrap CI band.

    Seeds are interpolated onto a common step grid, up to the shortest run of the group.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6), squeeze=False)
    for ax, (env, labels) in zip(axes[0], groups.items(), strict=True):
        for label, runs in sorted(labels.items()):
            curves = [r.curve(metric) for r in runs]
            start, end = min(s[0] for s, _ in curves), min(s[-1] for s, _ in curves)
            grid = np.linspace(start, end, 200 if end > start else 1)
            ys = np.stack([np.interp(grid, s, v) for s, v in curves])
            low, high = stats.bootstrap_ci(ys, n_resamples=2000)
            name = f"{label} (n={len(runs)})"
            if len(grid) == 1:  # one evaluation: a point with its interval
                ax.errorbar(grid, ys.mean(0), yerr=[ys.mean(0) - low, high - ys.mean(0)], fmt="o",
                            capsize=3, label=name)
                continue
            line, = ax.plot(grid, ys.mean(0), label=name)
            ax.fill_between(grid, low, high, alpha=0.25, color=line.get_color())
        ax.set_title(env)
        ax.set_xlabel("steps")  # env steps; gradient steps for offline runs
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 50k, 1M: long numbers overlap
        ax.set_ylabel(metric)
        ax.legend(fontsize="small")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
