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

import numpy as np
import torch

from ctrlrl import api
from ctrlrl.core.evaluation import evaluate, normalized_score
from ctrlrl.data import reference_scores

EPISODE_SEED = 10_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("policy_dir", type=Path, help="the SAC run dir behind the dataset")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--samples", type=int, default=64, help="samples averaged per step")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    algo = api.resume(args.policy_dir, progress=False)
    refs = reference_scores(algo.run.env)
    ways = {
        "mode": algo.actor.mode,
        "mean of squashed samples": lambda o: algo.actor.sample(o.expand(args.samples, *o.shape))[0].mean(0),
        "sample": lambda o: algo.actor.sample(o)[0],
    }
    print(f"{algo.run.env}, policy at {algo.step} steps, {args.episodes} episodes each\n")
    print("| acting with | return (mean ± std) | normalised |\n|---|---|---|")
    for name, act in ways.items():
        def env_action(obs: np.ndarray, act=act) -> np.ndarray:
            with torch.no_grad():
                action = act(torch.as_tensor(algo.env.normalize_obs(obs.astype(np.float32))))
            return algo.to_env_action(action.cpu().numpy())

        returns = evaluate(env_action, algo.eval_env(args.episodes), EPISODE_SEED)
        norm = f"{normalized_score(returns.mean(), *refs):.1f}" if refs else "—"
        print(f"| {name} | {returns.mean():.1f} ± {returns.std():.1f} | {norm} |")


if __name__ == "__main__":
    main()
