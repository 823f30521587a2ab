"""Where a finished offline run's critic and policy stand against the data they learned from:
Q1 at the policy's actions and at the data's own actions (an inflated critic at both says the
bootstrap itself grew, not only an out-of-data action the actor found), the policy's squared
distance to the data's actions, and how often each acts at the bounds.

    python benchmarks/critic_probe.py $CTRLRL_DATA/generated/Walker2d-v5-medium.hdf5 \
        runs/evidence/offline/Walker2d-v5/a2pr/seed*

RUN is a run dir holding its checkpoint (an actor-critic learner: TD3+BC, A2PR). The states are a
fixed draw (seed 0) of SAMPLES dataset rows. Prints markdown.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from ctrlrl import api
from ctrlrl.data import load


def probe(model, data, rows: np.ndarray) -> dict[str, float]:
    """The probe's figures for a restored `model` on the dataset rows `rows` of `data`."""
    # as the learner stores them: states standardised with its statistics, actions in [-1, 1]
    actions = torch.as_tensor(model.from_env_action(data.actions[rows]), dtype=torch.float32,
                              device=model.device)
    with torch.no_grad():
        obs = model.obs_stats(torch.as_tensor(data.observations[rows], dtype=torch.float32,
                                              device=model.device))
        pi = model.actor(obs)
        return {"q_pi": model.critic(obs, pi)[0].mean().item(),
                "q_data": model.critic(obs, actions)[0].mean().item(),
                "distance": ((pi - actions) ** 2).mean().item(),
                "pi_at_bounds": (pi.abs() > 0.99).float().mean().item(),
                "data_at_bounds": (actions.abs() > 0.99).float().mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="the D4RL-format file the runs trained on")
    parser.add_argument("runs", nargs="+", help="run dirs with a checkpoint")
    parser.add_argument("--samples", type=int, default=20000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load(args.dataset)
    rows = np.random.default_rng(0).choice(len(data.observations), args.samples, replace=False)
    print("| run | Q1(s, π(s)) | Q1(s, a) | mean (π(s) − a)² | share at the bounds: π, data |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        f = probe(api.load(run, replay=False), data, rows)
        print(f"| {run} | {f['q_pi']:.1f} | {f['q_data']:.1f} | {f['distance']:.3f} | "
              f"{f['pi_at_bounds']:.2f}, {f['data_at_bounds']:.2f} |")


if __name__ == "__main__":
    main()
