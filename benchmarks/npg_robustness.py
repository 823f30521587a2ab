"""γ_0 robustness of the PG family: final return vs initial step size, per method.

Reads a sweep's run dirs, `<out>/<env>/<algo>__gamma0=<v>/seed<k>/` (`ctrlrl sweep --vary
gamma0=...`), and takes each run's last `eval/mean_reward`; a run that failed (diverged: NaN/inf
weights or metrics) counts as diverged and is drawn as a cross at the bottom of its panel.

    python benchmarks/npg_robustness.py best runs/npg            # best γ_0 per env and method
    python benchmarks/npg_robustness.py edges runs/npg           # the next γ_0 past a best at an edge
    python benchmarks/npg_robustness.py plot runs/npg -o docs/results/npg-robustness

`best` ranks by the mean final return over the grid's seeds (`--grid-seeds`, default 0,1: the
seeds every γ_0 was run with, so added seeds of the chosen γ_0 cannot change the choice; diverged
seeds rank last); `edges` names, for each method whose best is its grid's smallest or largest value,
one more γ_0 past that edge at the same ratio as the edge's step from its neighbour (two significant
digits), so a one-sided tuning can be extended until the best lies inside the grid;
`plot` writes <out>.png (envs with a γ_0 grid; top row: normalised methods, whose γ_0 is a
step length; bottom row: unnormalised ones, whose γ_0 multiplies the gradient) and <out>.json
(every env), and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

NORMALISED = ("npg-momentum", "npg-igt", "n-harpg")
PLAIN = ("pg", "harpg")
_DIR = re.compile(r"^(?P<algo>[a-z-]+)__gamma0=(?P<g>[0-9.e+-]+)$")


def final_return(run: Path) -> float | None:
    """Last eval/mean_reward of a finished run; −inf for a failed one; None if still running."""
    if (run / "error.txt").is_file():
        return -math.inf
    if not (run / "done.json").is_file():
        return None
    last = None
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "eval/mean_reward" in row:
            last = row["eval/mean_reward"]
    return last


def collect(root: Path, seeds: set[int] | None = None) -> dict[str, dict[str, dict[float, list[float]]]]:
    """env → algo → γ_0 → final returns of its seeds (only `seeds` if given)."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for spec in sorted(root.rglob("sweep.json")):
        run = spec.parent
        m = _DIR.match(run.parent.name)
        if not m:
            continue
        meta = json.loads(spec.read_text())
        env = meta["env"]
        if seeds is not None and meta["seed"] not in seeds:
            continue
        value = final_return(run)
        if value is not None:
            out[env][m["algo"]][float(m["g"])].append(value)
    return out


def best(data) -> dict[str, dict[str, float]]:
    picks: dict[str, dict[str, float]] = {}
    for env, algos in data.items():
        for algo, grid in algos.items():
            picks.setdefault(env, {})[algo] = max(grid, key=lambda g: np.mean(grid[g]))
    return picks


def edges(data) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for env, picks in best(data).items():
        for algo, g in picks.items():
            grid = sorted(data[env][algo])
            if len(grid) < 2 or grid[0] < g < grid[-1]:
                continue
            neighbour = grid[1] if g == grid[0] else grid[-2]
            out.setdefault(env, {})[algo] = float(f"{g * g / neighbour:.2g}")
    return out


def table(data) -> str:
    lines = ["| Env | Method | γ_0 | seeds | final return (mean ± sd) | diverged |",
             "|---|---|---|---|---|---|"]
    for env, algos in sorted(data.items()):
        for algo in (*PLAIN[:1], *NORMALISED, *PLAIN[1:]):
            for g, vals in sorted(algos.get(algo, {}).items()):
                ok = [v for v in vals if math.isfinite(v)]
                cell = f"{np.mean(ok):.1f} ± {np.std(ok):.1f}" if ok else "—"
                lines.append(f"| {env} | {algo} | {g:g} | {len(vals)} | {cell} | "
                             f"{len(vals) - len(ok)} |")
    return "\n".join(lines)


def plot(data, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted(env for env, algos in data.items() if any(len(g) > 1 for g in algos.values()))
    fig, axes = plt.subplots(2, len(envs), figsize=(4.2 * len(envs), 6.5), squeeze=False)
    for col, env in enumerate(envs):
        finite = [v for a in data[env].values() for vs in a.values() for v in vs if math.isfinite(v)]
        floor = min(finite) if finite else 0.0
        for row, group in enumerate((NORMALISED, PLAIN)):
            ax = axes[row][col]
            for algo in group:
                grid = data[env].get(algo)
                if not grid:
                    continue
                gs = sorted(grid)
                means = [np.mean([v for v in grid[g] if math.isfinite(v)] or [np.nan]) for g in gs]
                (line,) = ax.plot(gs, means, "o-", label=algo)
                for g in gs:
                    vals = np.array(grid[g])
                    ok = np.isfinite(vals)
                    ax.scatter([g] * ok.sum(), vals[ok], s=10, alpha=0.4, color=line.get_color())
                    if (~ok).any():
                        ax.scatter([g], [floor], marker="x", s=60, color=line.get_color())
            ax.set_xscale("log")
            ax.set_title(f"{env} ({'normalised' if row == 0 else 'unnormalised'})", fontsize=9)
            ax.set_xlabel("γ_0")
            if col == 0:
                ax.set_ylabel("final eval return")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    serial = {env: {a: {str(g): v for g, v in grid.items()} for a, grid in algos.items()}
              for env, algos in data.items()}
    out.with_suffix(".json").write_text(json.dumps(serial, indent=1, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("best", "edges", "plot"))
    parser.add_argument("runs", type=Path)
    parser.add_argument("-o", "--out", type=Path, default=Path("docs/results/npg-robustness"))
    parser.add_argument("--grid-seeds", default="0,1")
    args = parser.parse_args()
    if args.mode in ("best", "edges"):
        grid_seeds = {int(k) for k in args.grid_seeds.split(",")}
        pick = best if args.mode == "best" else edges
        for env, picks in pick(collect(args.runs, grid_seeds)).items():
            for algo, g in picks.items():
                print(env, algo, g)
    else:
        data = collect(args.runs)
        plot(data, args.out)
        print(table(data))


if __name__ == "__main__":
    main()
