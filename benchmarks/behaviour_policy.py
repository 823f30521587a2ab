"""How a generated dataset's behaviour policy scores acting three ways: with its mode (the
deterministic action its evaluations use), with the mean of its squashed samples (the action a
perfect behaviour cloner regresses onto with an MSE loss) and with a sample (how the dataset was
recorded). Separates "the cloner is below the data" from "the data's mean action is below the data".

    python benchmarks/behaviour_policy.py $CTRLRL_DATA/policies/Walker2d-v5-sac-seed0-medium \
        --episodes 10 --samples 64

Episodes reset with seeds 10_000_000 + i (none of them a rollout seed of the dataset). Prints markdown.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from ctrlrl import api
from ctrlrl.core.evaluation import normalized_score
from ctrlrl.data import reference_scores

EPISODE_SEED = 10_000_000


def episode_return(algo, env: gym.Env, act, seed: int) -> float:
    obs, _ = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        obs_t = torch.as_tensor(algo.env.normalize_obs(np.asarray(obs, np.float32)[None]))
        with torch.no_grad():
            action = algo.to_env_action(act(obs_t).cpu().numpy())[0]
        obs, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
        done = terminated or truncated
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("policy_dir", type=Path, help="the SAC run dir behind the dataset")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--samples", type=int, default=64, help="samples averaged per step")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    algo = api.resume(args.policy_dir, progress=False)
    env_id = algo.run.env
    env = gym.make(env_id)
    refs = reference_scores(env_id)
    ways = {
        "mode": algo.actor.mode,
        "mean of squashed samples": lambda o: algo.actor.sample(o.expand(args.samples, -1))[0].mean(
            0, keepdim=True),
        "sample": lambda o: algo.actor.sample(o)[0],
    }
    print(f"{env_id}, policy at {algo.step} steps, {args.episodes} episodes each\n")
    print("| acting with | return (mean ± std) | normalised |\n|---|---|---|")
    for name, act in ways.items():
        returns = np.array([episode_return(algo, env, act, EPISODE_SEED + i) for i in range(args.episodes)])
        norm = f"{normalized_score(returns.mean(), *refs):.1f}" if refs else "—"
        print(f"| {name} | {returns.mean():.1f} ± {returns.std():.1f} | {norm} |")


if __name__ == "__main__":
    main()
