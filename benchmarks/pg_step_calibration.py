"""Step-size calibration of the unnormalised policy gradients (pg, harpg).

The authors' code (garage VPG with their optimisers) steps along the gradient of a per-step mean,
    ĝ_ref = (1/Σ_i T_i) Σ_i Σ_k ∇log π(a_k|s_k) (G_k − b(s_k, k)),   G_k = Σ_{t≥k} γ^{t−k} r_t,
while this suite's GPOMDP estimator is the gradient of the discounted objective per trajectory,
    ĝ = (1/N) Σ_i Σ_k ∇log π(a_k|s_k) γ^k (G_k − b(s_k, k)).
The two differ in scale by about Σ_k γ^k over an episode (not by the horizon). A step size γ_0 tuned
on ĝ_ref moves θ as far as γ_0 / ratio does on ĝ, with ratio = ‖ĝ‖ / ‖ĝ_ref‖ measured on the same
batch and the same policy. This script measures that ratio at the start of training (θ_0, and the
linear baseline fitted on one earlier batch, as both codes use it from their second iteration on)
and, optionally, after a few iterations of pg, and prints the converted γ_0 for each method.

    python benchmarks/pg_step_calibration.py                       # Walker2d-v5, Reacher-v5
    python benchmarks/pg_step_calibration.py --envs Reacher-v5 --seeds 3 --train-iters 20

One torch thread; the batch size is the pg preset's (1000 env steps, whole episodes).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

import ctrlrl
from ctrlrl.algos.npg import NPGConfig, surrogate_gradient

# the authors' tuned γ_0 of the unnormalised methods (Fatkhullin et al.'s ICML 2023 poster)
AUTHORS_GAMMA0 = {"Walker2d-v5": {"pg": 0.02, "harpg": 0.002},
                  "Reacher-v5": {"pg": 0.02, "harpg": 0.002}}


def gradient_norms(algo) -> tuple[float, float, float]:
    """(‖ĝ‖, ‖ĝ_ref‖, mean episode length) on one fresh batch at the current policy."""
    theta = algo.flat.param.detach().clone()
    batch = algo.collect(theta, algo.cfg.batch_steps)
    psi, _ = algo.weights(batch)  # γ^k (G_k − b_k)
    disc = torch.pow(torch.tensor(algo.cfg.gamma), batch.t.float())
    logp = algo.logp_fn(batch)
    g_suite = surrogate_gradient(logp, theta, psi, batch.n_traj)
    g_ref = surrogate_gradient(logp, theta, psi / disc / len(batch.t), 1)  # per-step mean
    algo.fit_baseline(batch, algo.weights(batch)[1])
    return (float(torch.linalg.vector_norm(g_suite)), float(torch.linalg.vector_norm(g_ref)),
            len(batch.t) / batch.n_traj)


def measure(env: str, seed: int, out: str, train_iters: int = 0,
            gamma0: float | None = None) -> list[tuple]:
    """Norms at θ_0 and, if asked, after `train_iters` pg iterations with step size `gamma0`."""
    overrides = {} if gamma0 is None else {"gamma0": gamma0}
    algo = ctrlrl.make("pg", env, overrides=overrides, seed=seed, run_dir=out, total_steps=10**9)
    theta = algo.flat.param.detach().clone()
    algo.fit_baseline(batch := algo.collect(theta, algo.cfg.batch_steps), algo.weights(batch)[1])
    rows = [(0, *gradient_norms(algo))]
    for _ in range(train_iters):
        algo.train_iteration()
    if train_iters:
        rows.append((algo.n_updates, *gradient_norms(algo)))
    algo.close()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--envs", default="Walker2d-v5,Reacher-v5")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--train-iters", type=int, default=0,
                   help="also measure after this many pg iterations (with the converted γ_0)")
    args = p.parse_args()
    torch.set_num_threads(1)
    gamma = NPGConfig().gamma
    for env in args.envs.split(","):
        by_iter: dict[int, list[tuple[float, float]]] = {}
        with tempfile.TemporaryDirectory() as out:
            for seed in range(args.seeds):
                rows = measure(env, seed, out)
                if args.train_iters:  # train with the γ_0 converted by this seed's start ratio
                    pg0 = AUTHORS_GAMMA0[env]["pg"] * rows[0][2] / rows[0][1]
                    rows += measure(env, seed, out, args.train_iters, pg0)[1:]
                for it, g, g_ref, length in rows:
                    by_iter.setdefault(it, []).append((g / g_ref, length))
                    print(f"{env} seed {seed} iter {it}: ‖ĝ‖ {g:.4g}  ‖ĝ_ref‖ {g_ref:.4g}  "
                          f"ratio {g / g_ref:.2f}  mean episode length {length:.1f}  "
                          f"Σ_k<T γ^k {(1 - gamma ** length) / (1 - gamma):.1f}")
        for it, vals in sorted(by_iter.items()):
            ratios = [r for r, _ in vals]
            ratio = statistics.median(ratios)
            conv = ", ".join(f"{m} {g0} -> {g0 / ratio:.2g}"
                             for m, g0 in AUTHORS_GAMMA0[env].items())
            print(f"{env} iter {it}: ratio median {ratio:.2f} (min {min(ratios):.2f}, "
                  f"max {max(ratios):.2f}, {len(ratios)} seeds); γ_0: {conv}")


if __name__ == "__main__":
    main()
