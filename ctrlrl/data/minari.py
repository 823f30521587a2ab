"""Minari datasets, read from the local Minari store only ($MINARI_DATASETS_PATH, default ~/.minari/datasets).

Minari stores one group per episode with T+1 observations (the last is the true final observation),
T actions, rewards, terminations and truncations. ctrlrl never downloads at run time.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ctrlrl.core.errors import UserError
from ctrlrl.data import Dataset
from ctrlrl.data.d4rl import _one_line, first_nonfinite_row


def _open(dataset_id: str) -> Any:
    """The local MinariDataset `dataset_id` (metadata read, episodes left on disk), or a UserError."""
    try:
        import minari
    except ImportError:
        raise UserError("minari is not installed, which minari: datasets need; "
                        "pip install 'ctrlrl[offline]'") from None
    store = os.environ.get("MINARI_DATASETS_PATH")
    local: list[str] = []
    if Path(store or "~/.minari/datasets").expanduser().is_dir():  # minari would create a missing store
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # minari warns about every misconfigured folder in the store
            local = list(minari.list_local_datasets())
    source = f"minari:{dataset_id}"
    if dataset_id not in local:
        where = (f"MINARI_DATASETS_PATH={store}" if store
                 else "MINARI_DATASETS_PATH unset, so ~/.minari/datasets")
        near = [d for d in local if d.startswith(dataset_id.rsplit("-v", 1)[0])][:5]
        have = f" (local: {', '.join(near)})" if near else ""
        raise UserError(f"{source}: not among the local Minari datasets ({where}){have}; download it with "
                        f"`minari download {dataset_id}` (needs network; ctrlrl never downloads at run time)")
    try:
        return minari.load_dataset(dataset_id)
    except (ValueError, OSError) as exc:
        raise UserError(f"{source}: minari cannot read it ({_one_line(exc)}); "
                        f"download it again with `minari download {dataset_id}`") from None


def minari_env(dataset_id: str) -> str | None:
    """The gymnasium id in a local Minari dataset's env spec, None when it has none."""
    spec = _open(dataset_id).env_spec
    return None if spec is None else spec.id


def load_minari(dataset_id: str) -> Dataset:
    """A local Minari dataset as transitions: next obs = observations[1:] per episode, terminals =
    terminations (truncated ends bootstrap), behaviour returns over episodes that end in termination
    or truncation, env_id from the dataset's env spec, and the dataset's own reference scores
    (`reference_scores`). Flat Box observations and actions only."""
    ds = _open(dataset_id)
    source = f"minari:{dataset_id}"
    import gymnasium as gym

    for space, what in ((ds.observation_space, "observation"), (ds.action_space, "action")):
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise UserError(f"{source}: its {what} space is {space}; ctrlrl reads flat Box observations and "
                            "actions only (Dict, image and discrete spaces are not supported)")

    obs, next_obs, act, rew, term, returns = [], [], [], [], [], []
    for i, ep in enumerate(ds.iterate_episodes()):
        o, a, r = np.asarray(ep.observations), np.asarray(ep.actions), np.asarray(ep.rewards)
        t, tr = np.asarray(ep.terminations, dtype=bool), np.asarray(ep.truncations, dtype=bool)
        n = len(r)
        if len(o) != n + 1 or len(a) != n or len(t) != n or len(tr) != n:
            raise UserError(f"{source}: episode {i} has {len(o)} observations, {len(a)} actions, "
                            f"{n} rewards, {len(t)} terminations; Minari episodes need T+1 observations "
                            f"and T of each other; download it again with `minari download {dataset_id}`")
        if n == 0:
            continue
        obs.append(o[:-1])
        next_obs.append(o[1:])
        act.append(a.reshape(n, -1))
        rew.append(r)
        term.append(t)
        if t[-1] or tr[-1]:
            returns.append(float(np.sum(r, dtype=np.float64)))
    if not obs:
        raise UserError(f"{source}: the dataset holds no steps; use another dataset")

    arrays = {"observations": np.concatenate(obs), "actions": np.concatenate(act),
              "rewards": np.concatenate(rew), "next_observations": np.concatenate(next_obs)}
    for key, arr in arrays.items():
        row = first_nonfinite_row(arr)
        if row is not None:
            raise UserError(f"{source}: {key} has NaN or inf at transition {row}; "
                            "clean the data or use another dataset")
    f32 = {k: v.astype(np.float32, copy=False) for k, v in arrays.items()}
    env_id = None if ds.env_spec is None else ds.env_spec.id
    return Dataset(f32["observations"], f32["actions"], f32["rewards"], f32["next_observations"],
                   np.concatenate(term).astype(np.float32), np.asarray(returns, dtype=np.float64), env_id,
                   source, reference_scores(ds.storage.metadata, source))


def reference_scores(metadata: Any, source: str) -> tuple[float, float] | None:
    """(ref_min_score, ref_max_score) of a Minari dataset's metadata, the returns that
    `minari.get_normalized_score` maps to 0 and 1 (ctrlrl's eval/normalized_score: 0 and 100);
    None when the dataset does not carry both."""
    low, high = metadata.get("ref_min_score"), metadata.get("ref_max_score")
    if low is None or high is None:
        return None
    low, high = float(np.asarray(low)), float(np.asarray(high))
    if not (np.isfinite(low) and np.isfinite(high) and high != low):
        raise UserError(f"{source}: its reference scores ref_min_score={low}, ref_max_score={high} "
                        "cannot normalise returns (they must be finite and differ); download it "
                        "again or report the dataset to its authors")
    return low, high
