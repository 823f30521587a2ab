"""A one-step continuous bandit: the smallest offline-RL check of "improve on the data, don't copy it".

One observation (the constant 1), one action a ∈ [-1, 1], reward 11 − (a − 0.5)², then the episode
ends. The best action is 0.5 (reward 11); −0.5 earns 10. The offset keeps |Q| around 10, where
TD3+BC's λ = α / mean|Q| is small, so its behaviour-cloning term dominates (used by
tests/test_a2pr.py and tests/test_odice.py).
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

BEST_ACTION = 0.5


def bandit_reward(action: np.ndarray) -> np.ndarray:
    return 11.0 - (np.asarray(action, dtype=np.float64) - BEST_ACTION) ** 2


class ContinuousBandit(gym.Env):
    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self):
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        return np.ones(1, np.float32), {}

    def step(self, action):
        reward = float(bandit_reward(np.clip(action, -1.0, 1.0))[0])
        return np.ones(1, np.float32), reward, True, False, {}


def register() -> None:
    gym.register("ctrlrl/Bandit-v0", entry_point=ContinuousBandit)
