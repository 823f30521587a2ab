"""Deterministic evaluation episodes and normalised scores."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctrlrl.core.envs import VecEnv


def evaluate(act: Callable[[np.ndarray], np.ndarray], env: VecEnv, seed: int) -> np.ndarray:
    """Run one episode in each sub-env of `env` (seeded seed, seed+1, …) and return the returns.

    `act` maps raw observations to env actions (the policy's deterministic action). The env must
    not normalise: the policy applies its own frozen statistics. All episodes run as one batch.
    """
    return evaluate_episodes(act, env, seed)[0]


def evaluate_episodes(act: Callable[[np.ndarray], np.ndarray], env: VecEnv,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`evaluate`, also returning each episode's true return (NaN unless the env reports
    `info["true_reward"]`)."""
    obs = env.reset(seed)
    returns, true_returns = np.full(env.n_envs, np.nan), np.full(env.n_envs, np.nan)
    finished = np.zeros(env.n_envs, bool)
    while not finished.all():
        step = env.step(act(obs))
        # `episodes` lists finished episodes in sub-env order
        true = step.true_returns or [np.nan] * len(step.episodes)
        for i, (ret, _), true_ret in zip(np.flatnonzero(step.done), step.episodes, true, strict=True):
            if not finished[i]:
                returns[i], true_returns[i], finished[i] = ret, true_ret, True
        obs = step.obs
    return returns, true_returns


def normalized_score(ret: float | np.ndarray, ref_min: float, ref_max: float) -> Any:
    """D4RL's normalised score: 100 · (return − min) / (max − min)."""
    return 100.0 * (np.asarray(ret) - ref_min) / (ref_max - ref_min)


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a policy at a training step: each episode's return, its true return (NaN
    where the env reports none) and the (min, max) reference returns of the normalised score (None:
    the run has no reference)."""

    step: int
    returns: np.ndarray
    true_returns: np.ndarray
    ref_scores: tuple[float, float] | None = None

    def scalars(self) -> dict[str, float]:
        """The `eval/*` scalars it is logged as."""
        out = {"eval/mean_reward": float(self.returns.mean()),
               "eval/std_reward": float(self.returns.std())}
        if not np.isnan(self.true_returns).any():
            out["eval/true_reward"] = float(self.true_returns.mean())
        if self.ref_scores is not None:
            out["eval/normalized_score"] = float(
                normalized_score(self.returns, *self.ref_scores).mean())
        return out
