"""One per-run statistic of one metric over finished runs, per env and learner, and Welch's t with
a bootstrap CI of the difference for chosen pairs of learners: the figures a results page quotes
beside its report tables (a last training return, an entropy over a run's second half, ...).

    python benchmarks/run_stats.py runs/evidence/pdppo-lake --metric train/entropy_loss \
        --stat mean --after 100000 --negate --pair pdppo 'pdppo[critics=pre]' --pair pdppo ppo

Statistics of each run's curve: `max`, `last` (the last logged value) or `mean`; `--after STEP`
keeps only the points logged after STEP; `--negate` flips the sign (a logged loss −H → H). Only
runs with a done.json count, as with `ctrlrl report --finished`. Prints markdown.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ctrlrl.core.errors import UserError
from ctrlrl.harness import stats
from ctrlrl.harness.report import read_groups

STATS = {"max": np.max, "last": lambda v: v[-1], "mean": np.mean}


def finished_curves(root: Path, metric: str, after: int = 0) -> dict[str, dict[str, list[np.ndarray]]]:
    """env → label → each finished run's logged values of `metric` past step `after` (runs that
    log none there are left out, and labels left with no run)."""
    out: dict = {}
    for env, labels in read_groups([str(root)], finished=True).items():
        for label, group in labels.items():
            curves = [values[steps > after] for steps, values in (r.curve(metric) for r in group)]
            curves = [c for c in curves if len(c)]
            if curves:
                out.setdefault(env, {})[label] = curves
    return out


def per_run(root: Path, metric: str, stat: str, after: int = 0, negate: bool = False
            ) -> dict[str, dict[str, np.ndarray]]:
    """env → label → the statistic of each finished run's curve of `metric` past step `after`."""
    return {env: {label: np.array([STATS[stat](-c if negate else c) for c in curves])
                  for label, curves in labels.items()}
            for env, labels in finished_curves(root, metric, after).items()}


def num(x: float) -> str:
    """Four significant digits, without an exponent for large values (returns of -13,672)."""
    return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def table(values: dict[str, dict[str, np.ndarray]], pairs: list[tuple[str, str]]) -> str:
    lines = ["| Env | Learner | Runs | Mean ± std | 95% CI |", "|---|---|---|---|---|"]
    tests = []
    for env, labels in sorted(values.items()):
        for label, v in sorted(labels.items()):
            lo, hi = stats.bootstrap_ci(v)
            std = v.std(ddof=1) if len(v) > 1 else 0.0
            lines.append(f"| {env} | {label} | {len(v)} | {num(v.mean())} ± {num(std)} "
                         f"| [{num(lo)}, {num(hi)}] |")
        for a, b in pairs:
            if a in labels and b in labels and min(len(labels[a]), len(labels[b])) > 1:
                x, y = labels[a], labels[b]
                lo, hi = stats.bootstrap_diff_ci(x, y)
                tests.append(f"- {env}: {a} − {b} = {num(x.mean() - y.mean())} [{num(lo)}, {num(hi)}], "
                             f"Welch p = {stats.welch(x, y)[1]:.2g}")
    return "\n".join(lines + (["", *tests] if tests else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="a sweep's --out folder")
    parser.add_argument("--metric", required=True, help="a logged scalar, e.g. rollout/ep_rew_mean")
    parser.add_argument("--stat", choices=sorted(STATS), default="max")
    parser.add_argument("--after", type=int, default=0, metavar="STEP",
                        help="only the points logged after this step")
    parser.add_argument("--negate", action="store_true", help="flip the sign of every value")
    parser.add_argument("--pair", action="append", nargs=2, default=[], metavar=("A", "B"),
                        help="test learner A against B (repeatable); labels as the report's")
    args = parser.parse_args()
    try:
        values = per_run(args.root, args.metric, args.stat, args.after, args.negate)
    except UserError as problem:
        sys.exit(f"run_stats.py: {problem}")
    if not values:
        sys.exit(f"run_stats.py: no finished run under {args.root} logs {args.metric} after step "
                 f"{args.after}; check the metric's name in a run's metrics.jsonl")
    known = sorted({label for labels in values.values() for label in labels})
    unknown = sorted({label for pair in args.pair for label in pair} - set(known))
    if unknown:
        sys.exit(f"run_stats.py: --pair names {', '.join(unknown)}, which no finished run has; "
                 f"the learners here: {', '.join(known)}")
    flip = "−" if args.negate else ""
    print(f"{flip}{args.stat} of `{args.metric}` after step {args.after}, finished runs under "
          f"{args.root}.\n")
    print(table(values, [tuple(pair) for pair in args.pair]))


if __name__ == "__main__":
    main()
