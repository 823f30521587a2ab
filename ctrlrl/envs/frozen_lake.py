"""FrozenLake with its post-decision state: PDPPO's small second benchmark.

gymnasium's slippery FrozenLake, observed as a one-hot vector of the cell (ctrlrl's policies take
flat Box observations). The decision step is the intended move — the cell the chosen direction
leads to before the ice acts — and the slip (the move actually made is the intended one or one of
the two perpendicular ones, each 1/3) is the stochastic step. `post_decision(obs, action)` gives
that intended cell one-hot, batched; `info["post_decision_obs"]` carries it on every step.
Holes and the goal are terminal: their post-decision state is themselves. The decision earns no
reward of its own — gymnasium's reward (1 on reaching the goal) comes with the move actually made —
so `post_decision_reward(obs, action)` and `info["post_decision_reward"]` are 0, and PDPPO's
post-decision critic has nothing to learn there.

`ProximityLake` is the lake the PDPPO paper's Frozen Lake results come from (the authors'
`Lake application/envs/frozen_lake.py`): the decision moves the agent to the intended cell, and
every cell entered pays its proximity to the goal, so the decision has a reward of its own.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.envs.toy_text.frozen_lake import FrozenLakeEnv, generate_random_map

# gymnasium's action order: LEFT, DOWN, RIGHT, UP as (row, col) moves
_MOVES = np.array([[0, -1], [1, 0], [0, 1], [-1, 0]])


class _LakeCells:
    """What both lakes share: one-hot cells and the intended move, the decision step s^x = f(s, a)
    (a wall keeps the agent in place; a terminal cell leads to itself)."""

    def _build_cells(self, desc: np.ndarray) -> None:
        self.n_rows, self.n_cols = n_rows, n_cols = desc.shape
        self.n_cells = n_rows * n_cols
        self._terminal = np.isin(desc.ravel(), [b"H", b"G"])
        self._eye = np.eye(self.n_cells, dtype=np.float32)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (self.n_cells,), np.float32)
        rows, cols = np.divmod(np.arange(self.n_cells), n_cols)
        target_r = np.clip(rows[:, None] + _MOVES[:, 0], 0, n_rows - 1)
        target_c = np.clip(cols[:, None] + _MOVES[:, 1], 0, n_cols - 1)
        intended = target_r * n_cols + target_c  # intended[s, a]: the cell a aims at from s
        self._intended = np.where(self._terminal[:, None], np.arange(self.n_cells)[:, None], intended)

    def _one_hot(self, cells: np.ndarray) -> np.ndarray:
        return self._eye[cells].copy()  # a row of `_eye` would be a view shared across calls

    def _decided(self, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        """The intended cells of (batches of) one-hot observations and actions."""
        return self._intended[np.asarray(obs).argmax(-1), np.asarray(action, dtype=np.int64)]

    def post_decision(self, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        """One-hot intended cell for (batches of) one-hot observations and actions: pure."""
        return self._one_hot(self._decided(obs, action))


class FrozenLakePostDecision(_LakeCells, FrozenLakeEnv):
    """A subclass, not a wrapper: `unwrapped.post_decision` is what PDPPO asks for, and the cell
    and RNG stay the env's own state (checkpoints restore them exactly)."""

    # text rendering only: the others need pygame, which ctrlrl does not install
    metadata: ClassVar[dict[str, Any]] = {**FrozenLakeEnv.metadata, "render_modes": ["ansi"]}

    def __init__(self, map_name: str = "4x4", is_slippery: bool = True,
                 render_mode: str | None = None):
        super().__init__(render_mode=render_mode, map_name=map_name, is_slippery=is_slippery)
        self._build_cells(self.desc)

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


class ProximityLake(_LakeCells, gym.Env):
    """The PDPPO authors' lake. An n×n map drawn once from `map_seed` (gymnasium's random valid map,
    each tile frozen with probability `frozen_prob`). A step first moves the agent to the intended
    cell — the decision, deterministic: the post-decision state — and then, with probability
    `slip_prob`, the ice carries it one more cell, in a direction drawn from that tile's own
    probabilities (a Dirichlet(1, 1, 1, 1) draw per tile, also from `map_seed`). Each cell entered
    pays 1 / (1 + its Manhattan distance to the goal), minus 1 / (rows + cols) if it is a hole; the
    goal pays 1. The reward of entering the intended cell is the decision's reward r^x
    (`post_decision_reward`), the second cell's is the slip's; the step's reward is their sum.
    Holes and the goal end the episode.

    Where this differs from the authors' env, by choice: a hole ends the episode when it is entered
    (theirs: on the next step, which pays 0; a slip could carry the agent out of a hole there), and
    r^x carries the hole's penalty, so that r = r^x + the slip's reward exactly (their PDPPO took the
    bare proximity as r^x). Their runs drew a fresh map per run; here the map is a setting, the same
    for every run of a comparison."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(self, size: int = 10, frozen_prob: float = 0.8, slip_prob: float = 0.5,
                 map_seed: int = 0, render_mode: str | None = None):
        self.desc = np.asarray(generate_random_map(size, frozen_prob, seed=map_seed), dtype="c")
        self.slip_prob, self.render_mode = slip_prob, render_mode
        self._build_cells(self.desc)
        tiles = self.desc.ravel()
        self._slip_dirs = np.random.default_rng(map_seed).dirichlet(np.ones(4), size=self.n_cells)
        rows, cols = np.divmod(np.arange(self.n_cells), size)
        goal_r, goal_c = divmod(int(np.flatnonzero(tiles == b"G")[0]), size)
        enter = 1.0 / (1.0 + np.abs(rows - goal_r) + np.abs(cols - goal_c))
        enter = enter - (tiles == b"H") / (2 * size)
        self._enter_reward = np.where(tiles == b"G", 1.0, enter)
        self.action_space = gym.spaces.Discrete(4)
        self.cell = 0

    def post_decision_reward(self, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        """The reward of entering the intended cell, for (batches of) observations and actions."""
        return self._enter_reward[self._decided(obs, action)]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.cell = 0
        return self._one_hot(self.cell), {}

    def step(self, action):
        decided = int(self._intended[self.cell, int(action)])
        post_reward = float(self._enter_reward[decided])
        reward, self.cell = post_reward, decided
        if not self._terminal[decided] and self.np_random.random() < self.slip_prob:
            direction = self.np_random.choice(4, p=self._slip_dirs[decided])
            self.cell = int(self._intended[decided, direction])
            reward += float(self._enter_reward[self.cell])
        return (self._one_hot(self.cell), reward, bool(self._terminal[self.cell]), False,
                {"post_decision_obs": self._one_hot(decided), "post_decision_reward": post_reward})

    def render(self) -> str:
        tiles = [[c.decode() for c in row] for row in self.desc]
        tiles[self.cell // len(tiles)][self.cell % len(tiles)] = "*"
        return "\n".join("".join(row) for row in tiles)


def register() -> None:
    gym.register("ctrlrl/FrozenLakePD-v0", entry_point=FrozenLakePostDecision, max_episode_steps=100)
    gym.register("ctrlrl/FrozenLakePD8x8-v0", entry_point=FrozenLakePostDecision,
                 kwargs={"map_name": "8x8"}, max_episode_steps=200)
    gym.register("ctrlrl/ProximityLakePD-v0", entry_point=ProximityLake, max_episode_steps=100)
