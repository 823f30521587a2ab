"""Where a PPO iteration's time goes, per env step: physics, env plumbing, acting, storage, GAE,
update.

    python benchmarks/ppo_profile.py                       # Hopper-v5, SB3's PPO defaults
    python benchmarks/ppo_profile.py --env Walker2d-v5 --rounds 5

One process, one torch thread, stable-baselines3's PPO settings (2048 steps, minibatch 64,
10 epochs, 64-64 tanh, no normalisation). Each phase is timed on its own for `--steps` calls
a round; rounds go through the phases in turn so machine drift spreads over all of them; the
table gives the median over rounds in µs per env step:
- physics: the env as `gym.make` returns it (time limit included), stepped and reset by hand;
- env step: ctrlrl's `VecEnv.step` (physics + same-step autoreset, episode statistics);
- act (NumPy): the rollout's acting (`HostActorCritic.act`: sample, log-probability, value);
- act (torch): the same with the torch modules, as the loop does for heads NumPy does not cover;
- buffer add, GAE (`RolloutBuffer.finish`: advantages and the device copy), update (per env
  step of the rollout), and a whole `train_iteration` (collection + update).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import gymnasium as gym
import numpy as np
import torch

import ctrlrl


def per_call_us(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2048, help="calls per phase and round")
    args = parser.parse_args()
    torch.set_num_threads(1)

    algo = ctrlrl.make("ppo", args.env, {"normalize_obs": False, "normalize_reward": False,
                                         "eval_every": 0, "checkpoint_every": 0,
                                         "progress": False, "tensorboard": False},
                       seed=0, device="cpu", total_steps=10**9, run_dir=tempfile.mkdtemp())
    algo.train_iteration()  # warm: one rollout and one update
    n_steps, buf = algo.cfg.n_steps, algo.rollout
    rng = np.random.default_rng(0)
    actions = rng.uniform(algo.env.action_space.low, algo.env.action_space.high,
                          (args.steps, 1, *algo.env.action_space.shape)).astype(np.float32)
    bare = gym.make(args.env)
    bare.reset(seed=0)
    index = iter(range(10**12))

    def physics():
        _, _, terminated, truncated, _ = bare.step(actions[next(index) % args.steps, 0])
        if terminated or truncated:
            bare.reset()

    def env_step():
        algo.env.step(actions[next(index) % args.steps])

    obs = algo.obs
    obs_t = torch.as_tensor(obs)

    def act_torch():
        with torch.no_grad():
            action, log_prob = algo.policy.sample(obs_t)
            torch.cat([action, log_prob[:, None], algo.value(obs_t)[:, None]], 1).numpy()

    def buffer_add():
        buf.pos = 0
        buf.add(obs, actions[0], np.zeros(1, np.float32), np.zeros(1, np.float32),
                np.zeros(1, np.float32), np.zeros(1, bool))

    def gae():
        buf.pos = n_steps
        buf.finish(np.zeros(1, np.float32), algo.cfg.gamma, algo.cfg.gae_lambda)

    phases = {
        "physics": (physics, args.steps, 1),
        "env step": (env_step, args.steps, 1),
        "act (NumPy)": (lambda: algo.acting.act(obs, algo.np_rng), args.steps, 1),
        "act (torch)": (act_torch, args.steps, 1),
        "buffer add": (buffer_add, args.steps, 1),
        "GAE + device copy": (gae, 3, n_steps),
        "update": (lambda: algo.update(buf), 1, n_steps),
        "iteration": (algo.train_iteration, 1, n_steps),
    }
    times: dict[str, list[float]] = {name: [] for name in phases}
    for _ in range(args.rounds):
        for name, (fn, calls, per) in phases.items():
            times[name].append(per_call_us(fn, calls) / per)
    print(f"PPO on {args.env}, µs per env step (median of {args.rounds} rounds; rounds)")
    print("| phase | µs/step | rounds |\n|---|---|---|")
    for name, xs in times.items():
        print(f"| {name} | {statistics.median(xs):.1f} | {', '.join(f'{x:.1f}' for x in xs)} |")


if __name__ == "__main__":
    main()
