"""Deterministic evaluation episodes and normalised scores."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ctrlrl.core.envs import VecEnv


def evaluate(act: Callable[[np.ndarray], np.ndarray], env: VecEnv, seed: int) -> np.ndarray:
    """Run one episode in each sub-env of `env` (seeded seed, seed+1, …) and return the returns.

    `act` maps raw observations to env actions (the policy's deterministic action). The env must
    not normalise: the policy applies its own frozen statistics. All episodes run as one batch.
    """
    obs = env.reset(seed)
    returns = np.full(env.n_envs, np.nan)
    while np.isnan(returns).any():
        step = env.step(act(obs))
        # `episodes` lists finished episodes in sub-env order
        for i, (ret, _) in zip(np.flatnonzero(step.done), step.episodes, strict=True):
            if np.isnan(returns[i]):
                returns[i] = ret
        obs = step.obs
    return returns


def normalized_score(ret: float | np.ndarray, ref_min: float, ref_max: float) -> Any:
    """D4RL's normalised score: 100 · (return − min) / (max − min)."""
    return 100.0 * (np.asarray(ret) - ref_min) / (ref_max - ref_min)
