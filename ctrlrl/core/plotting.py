"""Learning curves read from runs' own `metrics.jsonl`, grouped by (env, algo)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

from ctrlrl.core.errors import UserError

DEFAULT_METRICS = ("eval/mean_reward", "rollout/ep_rew_mean")


def read_curve(run_dir: Path, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one metric in a run; on duplicate steps (resume) the last wins."""
    points: dict[int, float] = {}
    with open(run_dir / "metrics.jsonl") as f:
        for line in f:
            row = json.loads(line)
            if metric in row:
                points[int(row["step"])] = float(row[metric])
    steps = np.array(sorted(points), dtype=np.int64)
    return steps, np.array([points[s] for s in steps])


def _run_info(run_dir: Path) -> tuple[str, str]:
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.is_file() or not (run_dir / "metrics.jsonl").is_file():
        raise UserError(f"{run_dir} is not a ctrlrl run dir (needs config.yaml and metrics.jsonl)")
    cfg = yaml.safe_load(cfg_file.read_text())
    return cfg["run"]["env"], cfg["algo"]


def plot_runs(run_dirs: list[str], output: str, metric: str | None = None) -> Path:
    """One panel per env, one line per algorithm: mean across seeds with a ±1 std band.

    Seeds are interpolated onto a common step grid, up to the shortest run of the group.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for d in map(Path, run_dirs):
        env, algo = _run_info(d)
        groups[env][algo].append(d)
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6), squeeze=False)
    for ax, (env, algos) in zip(axes[0], sorted(groups.items()), strict=True):
        for algo, dirs in sorted(algos.items()):
            key = metric or next((m for m in DEFAULT_METRICS
                                  if len(read_curve(dirs[0], m)[0]) > 0), DEFAULT_METRICS[0])
            curves = [c for c in (read_curve(d, key) for d in dirs) if len(c[0]) > 0]
            if not curves:
                raise UserError(f"no {key!r} values logged in {[str(d) for d in dirs]}; "
                                "pick another --metric")
            end = min(c[0][-1] for c in curves)
            grid = np.linspace(min(c[0][0] for c in curves), end, 200)
            ys = np.stack([np.interp(grid, s, v) for s, v in curves])
            mean, std = ys.mean(0), ys.std(0)
            ax.plot(grid, mean, label=f"{algo} (n={len(curves)})")
            ax.fill_between(grid, mean - std, mean + std, alpha=0.25)
            ax.set_ylabel(key)
        ax.set_title(env)
        ax.set_xlabel("env steps")
        ax.legend()
    fig.tight_layout()
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
