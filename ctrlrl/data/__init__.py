"""Offline datasets: `load(spec)` turns a D4RL-format file, a D4RL task or a Minari dataset into one
validated `Dataset` of transitions, checked against the env it will be evaluated in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctrlrl.core.errors import UserError
from ctrlrl.data.d4rl import (
    ENV_OF_TASK,
    REF_SCORES,
    REQUIRED,
    episode_ends,
    episode_returns,
    normalized_score,
    read_d4rl,
    reference_scores,
    resolve_task,
    task_env,
    transitions,
    validate_d4rl,
    write_d4rl,
)

__all__ = ["ENV_OF_TASK", "REF_SCORES", "REQUIRED", "Dataset", "data_dir", "dataset_env",
           "episode_bounds", "episode_ends", "episode_returns", "load", "normalized_score",
           "one_episode", "read_d4rl", "reference_scores", "resolve_task", "task_env",
           "transitions", "validate_d4rl", "write_d4rl"]

ACTION_TOLERANCE = 1e-4  # how far outside the env's Box bounds a stored action may lie (float rounding)


@dataclass(frozen=True)
class Dataset:
    """One validated set of transitions, ready for an OfflineBuffer."""

    observations: np.ndarray  # (N, obs_dim) float32
    actions: np.ndarray  # (N, act_dim) float32
    rewards: np.ndarray  # (N,) float32
    next_observations: np.ndarray  # (N, obs_dim) float32
    terminals: np.ndarray  # (N,) float32; 1 = s' is terminal (no bootstrap); time-limit ends are 0
    episode_returns: np.ndarray  # (E,) float64: returns of the source's complete episodes (behaviour return)
    env_id: str | None  # gymnasium id the data belongs to, None if unknown
    source: str  # the spec string it was loaded from
    # (min, max) returns of eval/normalized_score: the Minari dataset's own ref_min_score /
    # ref_max_score where it has them, else D4RL's random / expert returns for env_id; None: neither
    ref_scores: tuple[float, float] | None = None

    def __len__(self) -> int:
        return len(self.rewards)

    def digest(self) -> str:
        """SHA-256 of the transitions training reads (each array's dtype, shape and bytes): equal
        digests mean equal rows, whatever file or machine they came from."""
        sha = hashlib.sha256()
        for array in (self.observations, self.actions, self.rewards, self.next_observations,
                      self.terminals):
            sha.update(f"{array.dtype.str}{array.shape}".encode())
            sha.update(np.ascontiguousarray(array).data)
        return sha.hexdigest()


def episode_bounds(data: Dataset) -> list[tuple[int, int]]:
    """[start, end) rows of each episode of a transition set: an episode ends at a terminal row, or
    where the next row does not start at this row's next observation (a time-limit cut)."""
    ends = episode_ends(data.observations, data.next_observations, data.terminals)
    cuts = np.concatenate(([0], np.flatnonzero(ends) + 1))
    return [(int(a), int(b)) for a, b in itertools.pairwise(cuts)]


def one_episode(data: Dataset, index: int, setting: str) -> Dataset:
    """The transitions of episode `index` (0-based, in the file's order) of `data`; −1: all of
    `data`. `setting` names the option that chose the index, for the error past the last episode."""
    if index < 0:
        return data
    bounds = episode_bounds(data)
    if index >= len(bounds):
        raise UserError(f"dataset {data.source} has {len(bounds)} episode(s), so there is no "
                        f"{setting}={index}; pick an index below {len(bounds)}")
    rows = slice(*bounds[index])
    return dataclasses.replace(
        data, observations=data.observations[rows], actions=data.actions[rows],
        rewards=data.rewards[rows], next_observations=data.next_observations[rows],
        terminals=data.terminals[rows])


def data_dir() -> Path:
    """Where ctrlrl keeps datasets: $CTRLRL_DATA, else $XDG_CACHE_HOME/ctrlrl/data (~/.cache/ctrlrl/data)."""
    if os.environ.get("CTRLRL_DATA"):
        return Path(os.environ["CTRLRL_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "ctrlrl" / "data"


def load(spec: str, env_id: str | None = None, keep_timeouts: bool = False) -> Dataset:
    """Load and validate a dataset.

    spec: a path to a D4RL-format .hdf5/.h5 file | 'd4rl:<task>' (e.g. d4rl:hopper-medium-v2) |
    'minari:<dataset id>'. D4RL-format files give the rows of D4RL's `qlearning_dataset` (rows
    flagged timeouts and the last row dropped); `keep_timeouts` keeps every row of a file with
    next_observations instead (see `transitions`). Minari episodes keep their final observation,
    so every step is a transition there and a truncated end bootstraps.
    Everything is validated (shapes, dtypes, NaN/inf, lengths). When `env_id`
    is given, or the dataset names its env, the observation and action widths are checked against
    that env's spaces, and the actions against its Box bounds (up to 1e-4). A given `env_id` wins over
    the one the dataset names (a warning says so) as long as the widths match.
    """
    if spec.startswith("minari:"):
        from ctrlrl.data.minari import load_minari

        dataset = load_minari(spec.removeprefix("minari:"))
    else:
        path, default_env = _file_of(spec)
        data = read_d4rl(path, keys=(*REQUIRED, "next_observations", "metadata/env_id"))
        validate_d4rl(data, path)
        obs, act, rew, next_obs, term = transitions(data, keep_timeouts)
        if len(obs) == 0:
            raise UserError(f"dataset {path}: no transitions (rows flagged timeouts and the last row "
                            "are dropped, as D4RL's qlearning_dataset does); add more steps")
        env = _named_env(data, path) or default_env
        dataset = Dataset(obs, act, rew, next_obs, term, episode_returns(data), env, spec)
    return _match_env(dataset, env_id)


def dataset_env(spec: str) -> str | None:
    """The gymnasium id a dataset names (as `load` would set it without env_id), reading metadata only.

    For picking the env when the user gave only a dataset; errors for a missing dataset like `load`.
    """
    if spec.startswith("minari:"):
        from ctrlrl.data.minari import minari_env

        return minari_env(spec.removeprefix("minari:"))
    path, default_env = _file_of(spec)
    return _named_env(read_d4rl(path, keys=("metadata/env_id",)), path) or default_env


def _file_of(spec: str) -> tuple[Path, str | None]:
    """The D4RL-format file a non-Minari spec means, and the env its task name implies (if any)."""
    if spec.startswith("d4rl:"):
        task = spec.removeprefix("d4rl:")
        return resolve_task(task), ENV_OF_TASK.get(task.split("-", 1)[0].lower())
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"dataset {spec!r}: no such file {path.absolute()}; give a D4RL-format .hdf5 "
                        "file, d4rl:<task> (e.g. d4rl:hopper-medium-v2) or minari:<dataset id>")
    return path, None


def _named_env(data: dict[str, Any], path: Path) -> str | None:
    """metadata/env_id of a read file (ctrlrl's generated files write it), None when absent."""
    named = data.get("metadata/env_id")
    if named is None:
        return None
    if isinstance(named, bytes):
        named = named.decode("utf-8", errors="replace")
    if not isinstance(named, str):
        raise UserError(f"dataset {path}: 'metadata/env_id' holds {np.asarray(named).dtype} data, not an "
                        "env id; store the gymnasium id as a string (e.g. 'Hopper-v5') or delete the key")
    return named


def _match_env(dataset: Dataset, env_id: str | None) -> Dataset:
    """Check the data fits `env_id` (or the env the dataset names); return it with that env set."""
    import gymnasium as gym

    from ctrlrl.core.envs import check_env_id

    target = env_id or dataset.env_id
    if target is None:
        return dataset
    refs = dataset.ref_scores or reference_scores(target)
    where = f"dataset {dataset.source}"
    try:
        check_env_id(target)
    except UserError:
        if env_id is not None:
            raise
        raise UserError(f"{where} names env {target!r}, which gymnasium does not know; install the package "
                        "that registers it, or pass the env to evaluate in (--env)") from None
    env = gym.make(target)
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    also = f" (the dataset names {dataset.env_id})" if env_id and dataset.env_id not in (None, env_id) else ""
    for space, kind in ((obs_space, "observations"), (act_space, "actions")):
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise UserError(f"{where}: {target}'s {kind[:-1]} space is {space}; offline data needs flat Box "
                            "observations and actions")
    obs_dim, act_dim = dataset.observations.shape[1], dataset.actions.shape[1]
    if obs_dim != obs_space.shape[0]:
        hint = "pass the env the data was collected on (--env) or use another dataset"
        if obs_dim == 111 and target.startswith("Ant-") and obs_space.shape[0] == 105:
            hint = ("D4RL Ant data has 111-dim observations (84 always-zero contact forces) vs 105 in "
                    "Ant-v5, so it cannot be used with gymnasium's Ant; generate Ant data with "
                    "`ctrlrl collect` or use a Minari Ant dataset")
        raise UserError(f"{where}: observations have {obs_dim} dims but {target} observes "
                        f"{obs_space.shape[0]}{also}; {hint}")
    if act_dim != act_space.shape[0]:
        raise UserError(f"{where}: actions have {act_dim} dims but {target} takes "
                        f"{act_space.shape[0]}{also}; pass the env the data was collected on (--env) "
                        "or use another dataset")
    low, high = act_space.low.astype(np.float64), act_space.high.astype(np.float64)
    outside = (dataset.actions < low - ACTION_TOLERANCE) | (dataset.actions > high + ACTION_TOLERANCE)
    if outside.any():
        row, col = (int(i) for i in np.argwhere(outside)[0])
        raise UserError(f"{where}: actions[{row}, {col}] = {dataset.actions[row, col]:.6g} lies outside "
                        f"{target}'s bounds [{low[col]:.6g}, {high[col]:.6g}]{also}; clip the actions "
                        "to the bounds or pass the env the data was collected on (--env)")
    if env_id and dataset.env_id not in (None, env_id):
        warnings.warn(f"{where} was collected on {dataset.env_id}; using it with {env_id} as asked",
                      stacklevel=3)
    return dataclasses.replace(dataset, env_id=target, ref_scores=refs)
