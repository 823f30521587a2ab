"""The λ-sweep view of an ORPO reproduction: final true and proxy return against the coefficient,
per regulariser, from a sweep's run dirs (docs/results/orpo.md, orpo-cheetah.md).

    python benchmarks/orpo_lambda.py runs/orpo/tomato runs/orpo/cheetah -o docs/results/orpo-lambda

Writes STEM.md (a table per env: regulariser, λ, seeds, final true / proxy return with 95%
bootstrap CIs, seeds that hack) and STEM.png (true return solid, proxy dashed, against λ on a log
axis; the unregularised runs, λ = 0, as horizontal lines). Under each table, the two questions the
ORPO paper answers: each occupancy-measure regulariser at its best λ against action-distribution
regularisation at its best (difference of final true returns, bootstrap CI, Welch's p), and the λ
at which each regulariser's final true return is above each unregularised reference's (Welch
p < 0.05): ORPO at λ = 0 and PPO (ppo-adreg at λ = 0), where the sweep ran them.
A seed *hacks* when its last evaluation's true return is more than 5% below its first and its
proxy return more than 5% above (every learner starts from the same safe base; 5% is above the
evaluations' seed-to-seed noise at the base). `--finished` keeps only runs a sweep finished.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ctrlrl.core.errors import UserError
from ctrlrl.harness.report import read_groups
from ctrlrl.harness.stats import bootstrap_ci, bootstrap_diff_ci, welch

TRUE, PROXY = "eval/true_reward", "eval/mean_reward"


def regulariser(run) -> str:
    """'none (ALGO)' for λ = 0, else the algorithm, its divergence and any clip of the penalty
    (e.g. 'orpo sqrt_chi2', 'orpo sqrt_chi2 clip 10'). The unregularised runs keep their algorithm:
    ORPO's spends half its steps on the base policy's rollouts and PPO's (ppo-adreg at λ = 0) does
    not, so they are two references, not one."""
    if run.config.get("config.reg_coef", 0.0) == 0:
        return f"none ({run.config['algo']})"
    name = f"{run.config['algo']} {run.config.get('config.divergence', 'kl')}"
    clip = float(run.config.get("config.penalty_clip", math.inf))
    return f"{name} clip {clip:g}" if math.isfinite(clip) else name


def hacks(true: np.ndarray, proxy: np.ndarray, margin: float = 0.05) -> bool:
    """True return down and proxy up from the first evaluation to the last, each by > margin."""
    return bool(true[-1] < true[0] - margin * abs(true[0])
                and proxy[-1] > proxy[0] + margin * abs(proxy[0]))


def collect(patterns: list[str], finished: bool = False
            ) -> dict[str, dict[tuple[str, float], dict[str, np.ndarray]]]:
    """env → (regulariser, λ) → {'true': finals, 'proxy': finals, 'hacks': bool per seed}."""
    out: dict[str, dict] = defaultdict(dict)
    for env, labels in read_groups(patterns, finished).items():
        for runs in labels.values():
            runs = [r for r in runs if r.metrics.get(TRUE)]  # a run still before its first eval
            if not runs:
                continue
            key = (regulariser(runs[0]), float(runs[0].config.get("config.reg_coef", 0.0)))
            curves = {name: [r.curve(metric)[1] for r in runs]
                      for name, metric in (("true", TRUE), ("proxy", PROXY))}
            out[env][key] = {name: np.array([c[-1] for c in cs]) for name, cs in curves.items()}
            out[env][key]["hacks"] = np.array([hacks(t, p) for t, p in
                                               zip(curves["true"], curves["proxy"], strict=True)])
    return out


def verdict(groups: dict[tuple[str, float], dict[str, np.ndarray]]) -> list[str]:
    """The two answers under an env's table (module docstring), as markdown lines."""
    by_reg: dict[str, dict[float, np.ndarray]] = defaultdict(dict)
    for (reg, lam), finals in groups.items():
        if len(finals["true"]) > 1:  # Welch's t needs two seeds a side
            by_reg[reg][lam] = finals["true"]
    references = {reg: by_reg.pop(reg)[0.0] for reg in sorted(by_reg) if reg.startswith("none")}
    best = {reg: max(lams, key=lambda lam: lams[lam].mean()) for reg, lams in by_reg.items()}
    action = [reg for reg in best if reg.startswith("ppo-adreg")]
    lines = []
    for reg in sorted(set(best) - set(action)):
        for other in action:
            x, y = by_reg[reg][best[reg]], by_reg[other][best[other]]
            low, high = bootstrap_diff_ci(x, y)
            lines.append(f"- best λ: {reg} (λ {best[reg]:g}) − {other} (λ {best[other]:g}) = "
                         f"{x.mean() - y.mean():.2f} [{low:.2f}, {high:.2f}], Welch p = "
                         f"{welch(x, y)[1]:.2g}")
    for ref, none in references.items():
        for reg, lams in sorted(by_reg.items()):
            above = [lam for lam, x in sorted(lams.items())
                     if x.mean() > none.mean() and welch(x, none)[1] < 0.05]
            tried = ", ".join(f"{lam:g}" for lam in sorted(lams))
            lines.append(f"- above the true return of {ref} (Welch p < 0.05): {reg} at λ "
                         f"{', '.join(f'{lam:g}' for lam in above) or 'none'} of {tried}")
    return lines


def fmt(values: np.ndarray) -> str:
    low, high = bootstrap_ci(values)
    return f"{values.mean():.2f} [{low:.2f}, {high:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--finished", action="store_true",
                        help="only runs a sweep finished (done.json), as `ctrlrl report --finished`")
    args = parser.parse_args()
    try:
        data = collect(args.runs, args.finished)
    except UserError as problem:
        sys.exit(f"orpo_lambda.py: {problem}")
    command = " ".join(["python benchmarks/orpo_lambda.py", *args.runs, "-o", args.output,
                        *(["--finished"] if args.finished else [])])
    lines = ["# ORPO: final true and proxy return against λ", "",
             f"`{command}`; the last "
             "evaluation of each run (deterministic episodes), mean over seeds with 95% bootstrap CI.",
             "", f"![true and proxy return against λ]({Path(args.output).name}.png)", ""]
    fig, axes = plt.subplots(1, len(data), figsize=(6 * len(data), 4.2), squeeze=False)
    for ax, (env, groups) in zip(axes[0], sorted(data.items()), strict=True):
        lines += [f"## {env}", "",
                  "| regulariser | λ | seeds | true return | proxy return | seeds hacking |",
                  "|---|---|---|---|---|---|"]
        by_reg: dict[str, list] = defaultdict(list)
        for (reg, lam), finals in sorted(groups.items()):
            lines.append(f"| {reg} | {lam:g} | {len(finals['true'])} | {fmt(finals['true'])} | "
                         f"{fmt(finals['proxy'])} | {finals['hacks'].sum()} |")
            by_reg[reg].append((lam, finals))
        lines += ["", *verdict(groups), ""]
        for i, (reg, points) in enumerate(sorted(by_reg.items())):
            color = f"C{i}"
            if reg.startswith("none"):
                finals = points[0][1]
                ax.axhline(finals["true"].mean(), color=color, label=f"{reg} true")
                ax.axhline(finals["proxy"].mean(), color=color, ls="--", label=f"{reg} proxy")
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
