"""How a generated dataset's behaviour policy scores acting three ways: with its mode (the
deterministic action its evaluations use), with the mean of its squashed samples (the action a
perfect behaviour cloner regresses onto with an MSE loss) and with a sample (how the dataset was
recorded). Separates "the cloner is below the data" from "the data's mean action is below the data".

    python benchmarks/behaviour_policy.py benchmarks/behaviour/Walker2d-v5-medium.npz \
        --episodes 10 --samples 64

POLICY is a kept behaviour file (`ctrlrl collect --policy`'s) or the SAC run dir behind a dataset.

Episodes reset with seeds 10_000_000 + i (none of them a rollout seed of the dataset). Prints markdown.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctrlrl import api
from ctrlrl.core.envs import VecEnv
from ctrlrl.core.evaluation import evaluate, normalized_score
from ctrlrl.data import behaviour, reference_scores

EPISODE_SEED = 10_000_000


def load_policy(path: Path) -> tuple[Any, str, int, Callable, Callable]:
    """(SAC actor, env id, SAC steps, raw obs -> actor input, actor action -> env action)."""
    if path.is_file():
        b = behaviour.load(path)
        return b.actor, b.meta["env_id"], b.meta["steps"], lambda obs: obs, b.to_env_action
    algo = api.resume(path, progress=False)
    return algo.actor, algo.run.env, algo.step, algo.env.normalize_obs, algo.to_env_action


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("policy", type=Path, help="a behaviour file (.npz) or a SAC run dir")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--samples", type=int, default=64, help="samples averaged per step")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    actor, env_id, steps, actor_input, env_action_of = load_policy(args.policy)
    refs = reference_scores(env_id)
    ways = {
        "mode": actor.mode,
        "mean of squashed samples": lambda o: actor.sample(o.expand(args.samples, *o.shape))[0].mean(0),
        "sample": lambda o: actor.sample(o)[0],
    }
    print(f"{env_id}, policy at {steps} steps, {args.episodes} episodes each\n")
    print("| acting with | return (mean ± std) | normalised |\n|---|---|---|")
    env = VecEnv(env_id, args.episodes)
    for name, act in ways.items():
        def env_action(obs: np.ndarray, act=act) -> np.ndarray:
            with torch.no_grad():
                action = act(torch.as_tensor(actor_input(obs.astype(np.float32))))
            return env_action_of(action.cpu().numpy())

        returns = evaluate(env_action, env, EPISODE_SEED)
        norm = f"{normalized_score(returns.mean(), *refs):.1f}" if refs else "—"
        print(f"| {name} | {returns.mean():.1f} ± {returns.std():.1f} | {norm} |")
    env.close()


if __name__ == "__main__":
    main()
