"""Learning checks: ctrlrl reaches at least what stable-baselines3 reaches with the same
settings, budget and seeds (`benchmarks/sb3_reference.py` holds both the settings and the SB3
runner). The figure is the mean over seeds 0, 1, 2 of the mean return of 10 deterministic
evaluation episodes after training.

SB3 figures were measured once on this project's 2-core CPU machine (stable-baselines3 2.9.2,
torch 2.13.0 CPU, one thread) with `python benchmarks/sb3_reference.py ALGO`:

| test | env | budget | SB3 per seed (0, 1, 2) | SB3 mean |
|---|---|---|---|---|
| ppo | InvertedPendulum-v5 | 20,480 steps | 1000.0, 1000.0, 1000.0 | 1000.0 |
| sac | Pendulum-v1 | 5,000 steps | -100.6, -178.9, -414.8 | -231.4 |
| td3 | Pendulum-v1 | 7,000 steps | -134.6, -221.0, -133.1 | -162.9 |
| mdpo (vs SB3 PPO) | InvertedPendulum-v5 | 51,200 steps | 1000.0, 1000.0, 1000.0 | 1000.0 |
| mdpo-off (vs SB3 SAC) | Pendulum-v1 | 5,000 steps | -100.6, -178.9, -414.8 | -231.4 |

The budgets are where SB3 has clearly learned yet each test runs in about a minute or less.
MDPO is held to its paper's baselines (Tomar et al., ICLR 2022): on-policy against PPO, off-policy
against SAC, with the baseline's settings; on-policy MDPO's 10 full-batch steps per rollout need
a longer budget than PPO's 160 minibatch steps, so the pair is compared at 51,200 steps. PPO uses
learning_rate 1e-3 (at the paper's 3e-4 neither library is reliably at 1000 before ~28k steps).
The two libraries evaluate from different start states (SB3 runs 10 episodes on one env seeded
seed+10000; ctrlrl one episode on each of 10 envs seeded seed+10000+i), which alone moves a
Pendulum 10-episode mean by about ±25; the measured margins are larger than that
(ctrlrl at the time of writing: SAC -128.1, TD3 -143.9).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from sb3_reference import EVAL_EPISODES, SEEDS, SETTINGS

SB3_MEAN = {"ppo": 1000.0, "sac": -231.4, "td3": -162.9, "mdpo": 1000.0, "mdpo-off": -231.4}
ON_POLICY = ("ppo", "mdpo")


@pytest.mark.parametrize("algo", list(SB3_MEAN))
def test_reaches_stable_baselines3(algo, tmp_path):
    import ctrlrl

    s = SETTINGS[algo]
    # SB3 does not normalise unless asked: neither do we here (the presets would)
    overrides = {**s["config"], "normalize_obs": False, "normalize_reward": False, "n_envs": 1,
                 "eval_every": 0, "progress": False, "tensorboard": False, "threads": 1,
                 **({"save_replay": False} if algo not in ON_POLICY else {})}
    per_seed = []
    for seed in SEEDS:
        model = ctrlrl.make(algo, s["env"], overrides, seed=seed, device="cpu",
                            total_steps=s["total_steps"], run_dir=str(tmp_path / f"s{seed}"))
        model.learn()
        per_seed.append(model.evaluate(EVAL_EPISODES).mean())
        model.close()
    mean = float(np.mean(per_seed))
    assert mean >= SB3_MEAN[algo], (
        f"ctrlrl {algo} on {s['env']}: {mean:.1f} (per seed {np.round(per_seed, 1)}) is below "
        f"stable-baselines3 {s.get('baseline', algo)}'s {SB3_MEAN[algo]} at {s['total_steps']} steps")
