"""The λ-sweep view of an ORPO reproduction: final true and proxy return against the coefficient,
per regulariser, from a sweep's run dirs (docs/results/orpo.md).

    python benchmarks/orpo_lambda.py runs/orpo/tomato runs/orpo/cheetah -o docs/results/orpo-lambda

Writes STEM.md (a table per env: regulariser, λ, seeds, final true / proxy return with 95%
bootstrap CIs) and STEM.png (true return solid, proxy dashed, against λ on a log axis; the
unregularised runs, λ = 0, as horizontal lines).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ctrlrl.harness.report import read_groups
from ctrlrl.harness.stats import bootstrap_ci

TRUE, PROXY = "eval/true_reward", "eval/mean_reward"


def regulariser(run) -> str:
    """'none' for λ = 0, else the algorithm and its divergence (e.g. 'orpo sqrt_chi2')."""
    if run.config.get("config.reg_coef", 0.0) == 0:
        return "none"
    algo = run.config["algo"]
    return f"{algo} {run.config.get('config.divergence', 'kl')}"


def collect(patterns: list[str]) -> dict[str, dict[tuple[str, float], dict[str, np.ndarray]]]:
    """env → (regulariser, λ) → {'true': finals, 'proxy': finals} over seeds."""
    out: dict[str, dict] = defaultdict(dict)
    for env, labels in read_groups(patterns).items():
        for runs in labels.values():
            runs = [r for r in runs if r.metrics.get(TRUE)]  # a run still before its first eval
            if not runs:
                continue
            key = (regulariser(runs[0]), float(runs[0].config.get("config.reg_coef", 0.0)))
            out[env][key] = {name: np.array([r.curve(metric)[1][-1] for r in runs])
                             for name, metric in (("true", TRUE), ("proxy", PROXY))}
    return out


def fmt(values: np.ndarray) -> str:
    low, high = bootstrap_ci(values)
    return f"{values.mean():.2f} [{low:.2f}, {high:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    data = collect(args.runs)
    lines = ["# ORPO: final true and proxy return against λ", "",
             f"`python benchmarks/orpo_lambda.py {' '.join(args.runs)} -o {args.output}`; the last "
             "evaluation of each run (deterministic episodes), mean over seeds with 95% bootstrap CI.",
             "", f"![true and proxy return against λ]({Path(args.output).name}.png)", ""]
    fig, axes = plt.subplots(1, len(data), figsize=(6 * len(data), 4.2), squeeze=False)
    for ax, (env, groups) in zip(axes[0], sorted(data.items()), strict=True):
        lines += [f"## {env}", "", "| regulariser | λ | seeds | true return | proxy return |",
                  "|---|---|---|---|---|"]
        by_reg: dict[str, list] = defaultdict(list)
        for (reg, lam), finals in sorted(groups.items()):
            lines.append(f"| {reg} | {lam:g} | {len(finals['true'])} | {fmt(finals['true'])} | "
                         f"{fmt(finals['proxy'])} |")
            by_reg[reg].append((lam, finals))
        lines.append("")
        for i, (reg, points) in enumerate(sorted(by_reg.items())):
            color = f"C{i}"
            if reg == "none":
                finals = points[0][1]
                ax.axhline(finals["true"].mean(), color=color, label="λ = 0 true")
                ax.axhline(finals["proxy"].mean(), color=color, ls="--", label="λ = 0 proxy")
                continue
            lams = np.array([p[0] for p in points])
            for name, ls in (("true", "-"), ("proxy", "--")):
                ax.plot(lams, [p[1][name].mean() for p in points], ls, marker="o", color=color,
                        label=f"{reg} {name}")
        ax.set_xscale("log")
        ax.set_xlabel("λ (reg_coef)")
        ax.set_ylabel("final return")
        ax.set_title(env)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f"{args.output}.png", dpi=110)
    Path(f"{args.output}.md").write_text("\n".join(lines))
    print(f"wrote {args.output}.md and {args.output}.png")


if __name__ == "__main__":
    main()
