"""The PDPPO paper's statistics of finished runs: per env and learner, the mean ± std over runs of
each run's maximum and of its cumulative (summed over the logged points) value of one metric, and
Welch's t-test of every learner against a baseline on both. The std is the population std (ddof 0),
as the authors' table script computes it.

    python benchmarks/pdppo_paper_stats.py runs/evidence/pdppo                       # eval return
    python benchmarks/pdppo_paper_stats.py runs/evidence/pdppo --metric rollout/ep_rew_mean

The paper's "reward" is the training return its code logs (the mean return of the episodes that
ended in the last logging window); `rollout/ep_rew_mean` is ctrlrl's (the last 100 episodes).
Only runs with a done.json count, so the table is the same on every checkout of the kept runs.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from run_stats import finished_curves  # benchmarks/ is on sys.path when a script here runs

from ctrlrl.harness import stats


def per_run(root: Path, metric: str) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """env → label → {"max": per-run maxima, "sum": per-run sums} of `metric` over finished runs."""
    return {env: {label: {"max": np.array([c.max() for c in curves]),
                          "sum": np.array([c.sum() for c in curves])}
                  for label, curves in labels.items()}
            for env, labels in finished_curves(root, metric).items()}


def table(values: dict[str, dict[str, dict[str, np.ndarray]]], baseline: str) -> str:
    lines = ["| Env | Learner | Runs | Max (mean ± std) | Cumulative (mean ± std) | "
             f"vs {baseline}: Welch t, p (max; cumulative) |", "|---|---|---|---|---|---|"]
    for env, labels in sorted(values.items()):
        base = labels.get(baseline)
        for label, v in sorted(labels.items()):
            cells = [env, label, str(len(v["max"]))]
            cells += [f"{v[k].mean():.1f} ± {v[k].std():.1f}" for k in ("max", "sum")]
            if base is not None and label != baseline and min(len(v["max"]), len(base["max"])) > 1:
                cells.append("; ".join("t={:.2f} p={:.3g}".format(*stats.welch(v[k], base[k]))
                                       for k in ("max", "sum")))
            else:
                cells.append("")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a sweep's --out folder")
    parser.add_argument("--metric", default="eval/mean_reward")
    parser.add_argument("--baseline", default="ppo", help="the label the others are tested against")
    args = parser.parse_args()
    print(f"Metric `{args.metric}`, finished runs under {args.root}.\n")
    print(table(per_run(args.root, args.metric), args.baseline))


if __name__ == "__main__":
    main()
