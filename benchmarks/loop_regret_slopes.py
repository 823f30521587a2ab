"""Regret log-log slopes and switch counts of an average-reward sweep (docs/results/loop.md).

    python benchmarks/loop_regret_slopes.py runs/loop [-o docs/results/loop_loglog.png]

For each env and label: the confidence level δ, the regret Σ(J* − r_t) at T/10 and T (mean over
seeds), its ratio to UCRL2's on the same env (a comparison, not a claim of the papers: compare
labels run at the same δ), the log-log slope log10(R(T)/R(T/10)) per seed (mean, min, max; a slope
needs positive regrets, seeds where either is ≤ 0 are counted apart), the number of policy
switches at T, and the gap J* − J(π_T) of the policy held at T (exact, from the env's model; mean
over seeds, and how many seeds hold an optimal one).
With -o, a log-log plot of the mean regret curves (one panel per env).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ctrlrl.harness.report import read_groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("-o", "--output", default=None, help="log-log plot (PNG)")
    args = parser.parse_args()
    groups = read_groups(args.runs)
    print("| Env | Algorithm | δ | Seeds | T | Regret at T/10 | Regret at T | ÷ UCRL2's "
          "| Slope (mean [min, max]) | Switches at T | J* − J(π_T) (optimal at T) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for env, labels in groups.items():
        ucrl2 = [r for label, runs in labels.items() if label.startswith("ucrl2") for r in runs]
        ucrl2_regret = (np.mean([np.interp(min(r.steps for r in ucrl2), *r.curve("train/regret"))
                                 for r in ucrl2]) if ucrl2 else np.nan)
        for label, runs in sorted(labels.items()):
            T = min(r.steps for r in runs)
            at = np.array([[np.interp(t, *r.curve("train/regret")) for t in (T // 10, T)]
                           for r in runs])
            ok = (at > 0).all(1)
            slopes = np.log10(at[ok, 1] / at[ok, 0])
            switches = np.mean([np.interp(T, *r.curve("train/switches")) for r in runs])
            gap = np.array([r.curve("train/optimal_gain")[1][-1] - r.curve("train/policy_gain")[1][-1]
                            for r in runs])
            gap[np.abs(gap) < 1e-9] = 0.0  # the solvers' rounding
            slope = (f"{slopes.mean():.2f} [{slopes.min():.2f}, {slopes.max():.2f}]"
                     if ok.any() else "—") + ("" if ok.all() else f" ({(~ok).sum()} seeds ≤ 0)")
            delta = runs[0].config.get("config.delta", "—")
            print(f"| {env} | {label} | {delta} | {len(runs)} | {T} | {at[:, 0].mean():.0f} | "
                  f"{at[:, 1].mean():.0f} | {at[:, 1].mean() / ucrl2_regret:.2f} | {slope} | "
                  f"{switches:.0f} | "
                  f"{gap.mean():.3g} ({(gap < 1e-6).sum()}/{len(runs)}) |")
    if args.output:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.6), squeeze=False)
        for ax, (env, labels) in zip(axes[0], groups.items(), strict=True):
            for label, runs in sorted(labels.items()):
                T = min(r.steps for r in runs)
                grid = np.geomspace(1000, T, 100)
                mean = np.mean([np.interp(grid, *r.curve("train/regret")) for r in runs], 0)
                ax.plot(grid, np.maximum(mean, 1.0), label=label)
            ax.plot(grid, grid * 0.05, "k:", lw=0.8, label="slope 1")
            ax.plot(grid, 50 * np.sqrt(grid / 1000), "k--", lw=0.8, label="slope 1/2")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(env)
            ax.set_xlabel("steps")
            ax.set_ylabel("regret (mean over seeds)")
            ax.legend(fontsize="x-small")
        fig.tight_layout()
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.output, dpi=120)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
