"""FrozenLake with its post-decision state: PDPPO's small second benchmark.

gymnasium's slippery FrozenLake, observed as a one-hot vector of the cell (ctrlrl's policies take
flat Box observations). The decision step is the intended move — the cell the chosen direction
leads to before the ice acts — and the slip (the move actually made is the intended one or one of
the two perpendicular ones, each 1/3) is the stochastic step. `post_decision(obs, action)` gives
that intended cell one-hot, batched; `info["post_decision_obs"]` carries it on every step.
Holes and the goal are terminal: their post-decision state is themselves. The decision earns no
reward of its own — gymnasium's reward (1 on reaching the goal) comes with the move actually made —
so `post_decision_reward(obs, action)` and `info["post_decision_reward"]` are 0. (The authors'
lake, a different env with a shaped proximity reward, gave the intended cell's proximity reward.)
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.envs.toy_text.frozen_lake import FrozenLakeEnv

# gymnasium's action order: LEFT, DOWN, RIGHT, UP as (row, col) moves
_MOVES = np.array([[0, -1], [1, 0], [0, 1], [-1, 0]])


class FrozenLakePostDecision(FrozenLakeEnv):
    """A subclass, not a wrapper: `unwrapped.post_decision` is what PDPPO asks for, and the cell
    and RNG stay the env's own state (checkpoints restore them exactly)."""

    # text rendering only: the others need pygame, which ctrlrl does not install
    metadata: ClassVar[dict[str, Any]] = {**FrozenLakeEnv.metadata, "render_modes": ["ansi"]}

    def __init__(self, map_name: str = "4x4", is_slippery: bool = True,
                 render_mode: str | None = None):
        super().__init__(render_mode=render_mode, map_name=map_name, is_slippery=is_slippery)
        desc = self.desc
        self.n_rows, self.n_cols = desc.shape
        self.n_cells = self.n_rows * self.n_cols
        self._terminal = np.isin(desc.ravel(), [b"H", b"G"])
        self.observation_space = gym.spaces.Box(0.0, 1.0, (self.n_cells,), np.float32)
        self._eye = np.eye(self.n_cells, dtype=np.float32)
        # intended[s, a]: the cell action a aims at from cell s
        rows, cols = np.divmod(np.arange(self.n_cells), self.n_cols)
        target_r = np.clip(rows[:, None] + _MOVES[:, 0], 0, self.n_rows - 1)
        target_c = np.clip(cols[:, None] + _MOVES[:, 1], 0, self.n_cols - 1)
        intended = target_r * self.n_cols + target_c
        self._intended = np.where(self._terminal[:, None], np.arange(self.n_cells)[:, None], intended)

    def _one_hot(self, cells: np.ndarray) -> np.ndarray:
        return self._eye[cells].copy()  # a row of `_eye` would be a view shared across calls

    def post_decision(self, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        """One-hot intended cell for (batches of) one-hot observations and actions: pure."""
        cells = np.asarray(obs).argmax(-1)
        return self._one_hot(self._intended[cells, np.asarray(action, dtype=np.int64)])

    def post_decision_reward(self, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        """The decision's deterministic reward, 0 for (batches of) observations and actions."""
        return np.zeros(np.asarray(obs).shape[:-1])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        cell, info = super().reset(seed=seed, options=options)
        return self._one_hot(cell), info

    def step(self, action):
        post = self._one_hot(self._intended[int(self.s), int(action)])
        new_cell, reward, terminated, truncated, info = super().step(action)
        return self._one_hot(new_cell), float(reward), terminated, truncated, \
            {**info, "post_decision_obs": post, "post_decision_reward": 0.0}


def register() -> None:
    gym.register("ctrlrl/FrozenLakePD-v0", entry_point=FrozenLakePostDecision, max_episode_steps=100)
    gym.register("ctrlrl/FrozenLakePD8x8-v0", entry_point=FrozenLakePostDecision,
                 kwargs={"map_name": "8x8"}, max_episode_steps=200)
