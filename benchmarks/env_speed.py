"""Steps per second of ctrlrl's own environments: one env, and synchronous vectors of 16.

    python benchmarks/env_speed.py                                   # lot-sizing 25x15
    python benchmarks/env_speed.py --env ctrlrl/FrozenLakePD-v0 --steps 50000

Random actions drawn up front (so the figure is the env's, not the sampler's); episodes reset as
they end. The vectors are gymnasium's SyncVectorEnv with same-step autoreset, and ctrlrl's
`VecEnv` (what training steps: its sub-envs stepped directly, with episode statistics); their
figures count env steps (16 per vector step).
"""

from __future__ import annotations

import argparse
import platform
import time

import gymnasium as gym
import numpy as np

import ctrlrl.envs  # noqa: F401  (registers the ids)


def single(env_id: str, steps: int) -> float:
    env = gym.make(env_id)
    env.reset(seed=0)
    actions = [env.action_space.sample() for _ in range(steps)]
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def vector(env_id: str, steps: int, n: int) -> float:
    env = gym.make_vec(env_id, n, vectorization_mode="sync",
                       vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})
    env.reset(seed=0)
    actions = [env.action_space.sample() for _ in range(steps // n)]
    start = time.perf_counter()
    for action in actions:
        env.step(action)
    return len(actions) * n / (time.perf_counter() - start)


def ctrlrl_vector(env_id: str, steps: int, n: int) -> float:
    from ctrlrl.core.envs import VecEnv

    env = VecEnv(env_id, n)
    env.reset(0)
    actions = [np.stack([env.action_space.sample() for _ in range(n)]) for _ in range(steps // n)]
    start = time.perf_counter()
    for action in actions:
        env.step(action)
    rate = len(actions) * n / (time.perf_counter() - start)
    env.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="ctrlrl/LotSizing-25x15-v0")
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--n-envs", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    one = [single(args.env, args.steps) for _ in range(args.rounds)]
    vec = [vector(args.env, args.steps, args.n_envs) for _ in range(args.rounds)]
    own = [ctrlrl_vector(args.env, args.steps, args.n_envs) for _ in range(args.rounds)]
    print(f"{args.env} on {platform.machine()}, python {platform.python_version()}, "
          f"{args.steps} steps per round, {args.rounds} rounds (median; all rounds)")
    print(f"| one env | {np.median(one):.0f} steps/s | {', '.join(f'{x:.0f}' for x in one)} |")
    print(f"| SyncVectorEnv × {args.n_envs} | {np.median(vec):.0f} env-steps/s | "
          f"{', '.join(f'{x:.0f}' for x in vec)} |")
    print(f"| ctrlrl VecEnv × {args.n_envs} | {np.median(own):.0f} env-steps/s | "
          f"{', '.join(f'{x:.0f}' for x in own)} |")


if __name__ == "__main__":
    main()
