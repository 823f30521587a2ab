"""Per-iteration cost of (N)-HARPG's Hessian-vector step vs a plain policy-gradient step.

On one batch of whole trajectories collected by an untrained policy (the same batch for every
estimator), one torch thread, CPU:
- `grad`: the GPOMDP gradient ĝ (forward + one backward), what `pg`, `npg-momentum`, `npg-igt` do;
- `hvp`: the per-trajectory B̂·v (one forward-mode JVP, forward, double backward) on the same batch;
- `harpg update`: ĝ on the batch plus B̂·v on a Hessian batch of the reference's size (≥ 32 steps,
  whole trajectories), i.e. all of HARPG's estimator work in one iteration.
Then whole iterations, sampling included: `pg` vs `n-harpg` `train_iteration` on the same env,
alternating, which adds HARPG's extra Hessian-batch sampling.

    python benchmarks/npg_speed.py --envs CartPole-v1,Walker2d-v5 --reps 50 --iters 8
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

import ctrlrl
from ctrlrl.algos.npg import surrogate_gradient, surrogate_hvp

QUIET = {"progress": False, "tensorboard": False, "eval_every": 0, "device": "cpu", "threads": 1}


def timed(fn, reps: int) -> float:
    """Median seconds per call over `reps` calls (after two warm-up calls)."""
    fn()
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def estimator_costs(env: str, reps: int, tmp: Path) -> dict[str, float]:
    algo = ctrlrl.make("n-harpg", env, overrides=QUIET, seed=0, run_dir=str(tmp / f"est-{env}"))
    theta = algo.flat.param.detach().clone()
    batch = algo.collect(theta, algo.cfg.batch_steps)
    hbatch = algo.collect(theta, algo.cfg.hess_batch_steps)
    psi, _ = algo.weights(batch)
    hpsi, _ = algo.weights(hbatch)
    v = 0.01 * torch.randn_like(theta)
    logp, hlogp = algo.logp_fn(batch), algo.logp_fn(hbatch)

    def grad():
        return surrogate_gradient(logp, theta, psi, batch.n_traj)

    def hvp():
        return surrogate_hvp(logp, theta, psi, batch.traj, batch.n_traj, v)

    def harpg():
        grad()
        return surrogate_hvp(hlogp, theta, hpsi, hbatch.traj, hbatch.n_traj, v)

    out = {"params": theta.numel(), "steps": len(batch.t), "traj": batch.n_traj,
           "hess_steps": len(hbatch.t), "grad": timed(grad, reps), "hvp": timed(hvp, reps),
           "harpg": timed(harpg, reps)}
    algo.close()
    return out


def iteration_costs(env: str, iters: int, tmp: Path) -> dict[str, float]:
    algos = {name: ctrlrl.make(name, env, overrides=QUIET, seed=0, run_dir=str(tmp / f"{name}-{env}"))
             for name in ("pg", "n-harpg")}
    times: dict[str, list[float]] = {name: [] for name in algos}
    steps: dict[str, int] = {name: 0 for name in algos}
    for algo in algos.values():  # warm-up: the first iteration has no Hessian step
        algo.train_iteration()
        algo.train_iteration()
    for _ in range(iters):
        for name, algo in algos.items():
            before = algo.step
            t = time.perf_counter()
            algo.train_iteration()
            times[name].append(time.perf_counter() - t)
            steps[name] += algo.step - before
    out = {}
    for name, algo in algos.items():
        out[f"{name}_iter"] = statistics.median(times[name])
        out[f"{name}_steps"] = steps[name] / iters
        algo.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", default="CartPole-v1,Walker2d-v5")
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--iters", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| env | params | batch steps (traj) | grad | B̂·v same batch | hvp / grad | HARPG estimators"
          " (grad + B̂·v on ≥32 steps) | / grad | iteration pg | iteration n-harpg | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with TemporaryDirectory() as tmp:
        for env in args.envs.split(","):
            e = estimator_costs(env, args.reps, Path(tmp))
            i = iteration_costs(env, args.iters, Path(tmp))
            ms = lambda s: f"{1e3 * s:.1f} ms"  # noqa: E731
            print(f"| {env} | {e['params']} | {e['steps']} ({e['traj']}) | {ms(e['grad'])} | "
                  f"{ms(e['hvp'])} | {e['hvp'] / e['grad']:.2f}x | {ms(e['harpg'])} "
                  f"({e['hess_steps']} steps) | {e['harpg'] / e['grad']:.2f}x | "
                  f"{ms(i['pg_iter'])} ({i['pg_steps']:.0f} steps) | "
                  f"{ms(i['n-harpg_iter'])} ({i['n-harpg_steps']:.0f} steps) | "
                  f"{i['n-harpg_iter'] / i['pg_iter']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
