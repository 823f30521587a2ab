"""Regret log-log slopes, switch counts and comparisons of an average-reward sweep (docs/results/loop.md).

    python benchmarks/loop_regret_slopes.py runs/loop [-o docs/results/loop_loglog.png]

Three markdown tables, from each run's logged `train/regret`, `train/switches`, `train/policy_gain`
and `train/optimal_gain`:

1. Regret. Per env and label: the confidence level δ, the regret Σ(J* − r_t) at T/10 and T (mean
   over seeds), its ratio to UCRL2's on the same env (a comparison, not a claim of the papers:
   compare labels run at the same δ), the log-log slope log10(R(T)/R(T/10)) over the last decade
   per seed — mean, 95% percentile-bootstrap CI of the mean (`ctrlrl.harness.stats.bootstrap_ci`:
   10 000 resamples, seed 0), min and max; a slope needs positive regrets, seeds where either is
   ≤ 0 are left out of it and counted apart — the slope of the mean regret over the decade before
   (T/100 → T/10; a falling slope shows as a smaller value in the last decade), the gap
   J* − J(π_T) of the policy held at T (exact, from the env's model; mean over seeds, and how many
   seeds hold an optimal one), and the standard deviation at T of an optimal policy's own regret
   (its realised rewards' noise, exact from the model).
2. Switches (policy plans, the first included) against a bound with known constants: for LOOP the
   bound of the determinant-doubling rule it runs, 1 + d·log2(1 + T/(λ·d)) with d = S·A for the
   tabular instantiation (Gram matrix diag(1 + N), λ = 1) or the feature dimension for the linear
   one (λ = `ridge`; features of norm ≤ 1) — the paper's logarithmic (d·log T) switching, read
   with this rule; for UCRL2 its published episode bound S·A·log2(8T/(S·A)) (Jaksch, Ortner, Auer
   2010, Prop. 18). With the count at T (mean, max over seeds): the growth, as the least-squares
   slope of switches against log2 t (switches added per doubling of t) over [T/100, T/10] and over
   [T/10, T] (mean over seeds; the latter with its bootstrap CI), beside the bound's rate d (resp.
   S·A). Logarithmic growth shows as a per-doubling rate that stays bounded (by d for the rule's
   bound) from one decade to the next.
3. Comparisons of the regret at T, Welch's t-test (`ctrlrl.harness.stats.welch`): every LOOP label
   against UCRL2 and random play on the same env, and the LOOP labels against each other.
With -o, a figure: the mean regret curves on log-log axes (top row, one panel per env) and the mean
switch counts against log t with the LOOP rule's bound (bottom row).
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ctrlrl.harness import stats
from ctrlrl.harness.report import read_groups


def env_dims(env_id: str) -> tuple[int, int, int]:
    """(S, A, feature dimension) of a finite average-reward env, from its exact model."""
    import gymnasium as gym

    import ctrlrl  # noqa: F401  (registers the envs)

    env = gym.make(env_id).unwrapped
    return env.n_states, env.n_actions, env.features().shape[-1]


def optimal_regret_sd(env_id: str, T: int) -> float:
    """Standard deviation of an optimal policy's own regret Σ(J* − r_t) at T (its realised rewards'
    noise), from the env's exact outcome tables: σ·√T with σ² = Σ_s μ(s) Σ_k p_k·(r_k − J* +
    h(s'_k) − h(s))², the martingale part of the reward sum (h the bias, μ the stationary law of
    the optimal policy π* of relative value iteration)."""
    import gymnasium as gym

    import ctrlrl  # noqa: F401  (registers the envs)
    from ctrlrl.algos.loop import relative_value_iteration

    env = gym.make(env_id).unwrapped
    if not all(hasattr(env, name) for name in ("_next", "_prob", "_reward")):
        return np.nan
    P, R = env.model()
    _, _, pi = relative_value_iteration(P, R)
    S = len(pi)
    P_pi, r_pi = P[np.arange(S), pi], R[np.arange(S), pi]
    mu = np.linalg.lstsq(np.vstack([P_pi.T - np.eye(S), np.ones(S)]), np.r_[np.zeros(S), 1.0],
                         rcond=None)[0]
    J = mu @ r_pi
    h = np.linalg.solve(np.eye(S) - P_pi + np.outer(np.ones(S), mu), r_pi - J)
    nxt, prob, rew = (x[np.arange(S), pi] for x in (env._next, env._prob, env._reward))
    var = np.sum(mu[:, None] * prob * (rew - J + h[nxt] - h[:, None]) ** 2)
    return float(np.sqrt(var * T))


def switch_bound(run, dims: tuple[int, int, int]) -> tuple[str, int, float, Callable] | None:
    """(formula, rate per doubling, λ, bound(T)) for the run's switching rule; None for no rule."""
    S, A, d_features = dims
    algo = run.config.get("algo", "")
    if algo == "loop":
        linear = run.config.get("config.instantiation", "tabular") == "linear"
        d = d_features if linear else S * A
        lam = float(run.config.get("config.ridge", 1.0)) if linear else 1.0
        formula = (f"1 + d·log2(1 + T/(λd)), d = {d}, λ = {lam:g}" if linear
                   else f"1 + SA·log2(1 + T/SA), SA = {d}")
        return formula, d, lam, lambda T: 1 + d * np.log2(1 + T / (lam * d))
    if algo == "ucrl2":
        return (f"SA·log2(8T/SA), SA = {S * A}", S * A, 1.0,
                lambda T: S * A * np.log2(8 * T / (S * A)))
    return None


def per_doubling(run, lo: float, hi: float) -> float:
    """Least-squares slope of switches against log2 t over [lo, hi] (geometric grid of 50 points)."""
    grid = np.geomspace(lo, hi, 50)
    switches = np.interp(grid, *run.curve("train/switches"))
    return float(np.polyfit(np.log2(grid), switches, 1)[0])


def ci(values: np.ndarray) -> str:
    low, high = stats.bootstrap_ci(values)
    return f"[{float(low):.2f}, {float(high):.2f}]"


def regret_table(groups) -> None:
    print("| Env | Algorithm | δ | Seeds | T | Regret at T/10 | Regret at T | ÷ UCRL2's "
          "| Slope: mean [95% CI] (min, max) | Slope of the mean, T/100→T/10 "
          "| J* − J(π_T) (optimal at T) | π*'s own regret sd at T |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for env, labels in groups.items():
        ucrl2 = [r for label, runs in labels.items() if label.startswith("ucrl2") for r in runs]
        ucrl2_regret = (np.mean([np.interp(min(r.steps for r in ucrl2), *r.curve("train/regret"))
                                 for r in ucrl2]) if ucrl2 else np.nan)
        for label, runs in sorted(labels.items()):
            T = min(r.steps for r in runs)
            at = np.array([[np.interp(t, *r.curve("train/regret")) for t in (T // 10, T)]
                           for r in runs])
            before = np.mean([np.interp([T / 100, T / 10], *r.curve("train/regret")) for r in runs], 0)
            earlier = (f"{np.log10(before[1] / before[0]):.2f}" if (before > 0).all() else "—")
            ok = (at > 0).all(1)
            slopes = np.log10(at[ok, 1] / at[ok, 0])
            gap = np.array([r.curve("train/optimal_gain")[1][-1] - r.curve("train/policy_gain")[1][-1]
                            for r in runs])
            gap[np.abs(gap) < 1e-9] = 0.0  # the solvers' rounding
            slope = (f"{slopes.mean():.2f} {ci(slopes)} ({slopes.min():.2f}, {slopes.max():.2f})"
                     if ok.any() else "—") + ("" if ok.all() else f"; {(~ok).sum()} seeds ≤ 0")
            delta = runs[0].config.get("config.delta", "—")
            print(f"| {env} | {label} | {delta} | {len(runs)} | {T} | {at[:, 0].mean():.0f} | "
                  f"{at[:, 1].mean():.0f} | {at[:, 1].mean() / ucrl2_regret:.2f} | {slope} | {earlier} | "
                  f"{gap.mean():.3g} ({(gap < 1e-6).sum()}/{len(runs)}) | "
                  f"{optimal_regret_sd(env, T):.0f} |")


def switch_table(groups) -> None:
    print("| Env | Algorithm | Bound (its constants) | Switches at T: mean (max) | Bound at T "
          "| Per doubling of t, T/100→T/10 | Per doubling, T/10→T: mean [95% CI] "
          "| Bound's rate |")
    print("|---|---|---|---|---|---|---|---|")
    for env, labels in groups.items():
        dims = env_dims(env)
        for label, runs in sorted(labels.items()):
            bound = switch_bound(runs[0], dims)
            if bound is None:
                continue
            formula, rate, _, bound_at = bound
            T = min(r.steps for r in runs)
            at_T = np.array([np.interp(T, *r.curve("train/switches")) for r in runs])
            early = np.array([per_doubling(r, T / 100, T / 10) for r in runs])
            late = np.array([per_doubling(r, T / 10, T) for r in runs])
            print(f"| {env} | {label} | {formula} | {at_T.mean():.0f} ({at_T.max():.0f}) | "
                  f"{bound_at(T):.0f} | {early.mean():.2f} | {late.mean():.2f} {ci(late)} | {rate} |")


def comparison_table(groups) -> None:
    print("| Env | A | B | Regret at T: A | B | A ÷ B | Welch t | p |")
    print("|---|---|---|---|---|---|---|---|")
    for env, labels in groups.items():
        final = {label: np.array([np.interp(min(r.steps for r in runs), *r.curve("train/regret"))
                                  for r in runs]) for label, runs in labels.items()}
        loops = sorted(label for label in labels if labels[label][0].config.get("algo") == "loop")
        baselines = sorted(label for label in labels
                           if labels[label][0].config.get("algo") in ("ucrl2", "random-policy"))
        pairs = [(a, b) for a in loops for b in baselines] + list(itertools.combinations(loops, 2))
        for a, b in pairs:
            t, p = stats.welch(final[a], final[b])
            print(f"| {env} | {a} | {b} | {final[a].mean():.0f} | {final[b].mean():.0f} | "
                  f"{final[a].mean() / final[b].mean():.3f} | {t:.1f} | {p:.2g} |")


def plot(groups, output: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(groups), figsize=(4.5 * len(groups), 7.0), squeeze=False)
    every = sorted({label for labels in groups.values() for label in labels})
    colour = {label: f"C{i % 10}" for i, label in enumerate(every)}  # one colour per label
    for col, (env, labels) in enumerate(groups.items()):
        ax, bx = axes[0, col], axes[1, col]
        dims = env_dims(env)
        for label, runs in sorted(labels.items()):
            T = min(r.steps for r in runs)
            grid = np.geomspace(1000, T, 100)
            mean = np.mean([np.interp(grid, *r.curve("train/regret")) for r in runs], 0)
            ax.plot(grid, np.maximum(mean, 1.0), color=colour[label], label=label)
            bound = switch_bound(runs[0], dims)
            if bound is None:
                continue
            switches = np.mean([np.interp(grid, *r.curve("train/switches")) for r in runs], 0)
            bx.plot(grid, switches, color=colour[label], label=label)
            if runs[0].config.get("algo") == "loop":
                bx.plot(grid, bound[3](grid), color=colour[label], ls="--", lw=0.8)
        ax.plot(grid, grid * 0.05, "k:", lw=0.8, label="slope 1")
        ax.plot(grid, 50 * np.sqrt(grid / 1000), "k--", lw=0.8, label="slope 1/2")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(env)
        ax.set_xlabel("steps")
        ax.set_ylabel("regret (mean over seeds)")
        ax.legend(fontsize="x-small")
        bx.set_xscale("log")
        bx.set_xlabel("steps (log scale)")
        bx.set_ylabel("switches (mean); dashed: LOOP rule's bound")
        bx.legend(fontsize="x-small")
    fig.tight_layout()
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    print(f"wrote {output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("-o", "--output", default=None, help="log-log plot (PNG)")
    args = parser.parse_args()
    groups = read_groups(args.runs)
    regret_table(groups)
    print()
    switch_table(groups)
    print()
    comparison_table(groups)
    if args.output:
        plot(groups, args.output)


if __name__ == "__main__":
    main()
