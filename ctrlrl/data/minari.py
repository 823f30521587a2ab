"""Minari datasets, read from the local Minari store only ($MINARI_DATASETS_PATH, default ~/.minari/datasets).

Minari stores one group per episode with T+1 observations (the last is the true final observation),
T actions, rewards, terminations and truncations. ctrlrl never downloads at run time.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ctrlrl.core.errors import UserError
from ctrlrl.data import Dataset
from ctrlrl.data.d4rl import _one_line, first_bad_row

EPISODE_KEYS = ("observations", "actions", "rewards", "terminations", "truncations")


@contextlib.contextmanager
def _minari_reads(dataset_id: str) -> Iterator[None]:
    """Any exception minari raises while reading a local dataset ends in one UserError: on a damaged
    dataset it raises JSON, HDF5, key, type and assertion errors alike."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"minari:{dataset_id}: minari cannot read it, it is damaged or from another "
                        f"minari version ({_one_line(exc)}); download it again with "
                        f"`minari download {dataset_id}`") from None


def _open(dataset_id: str) -> Any:
    """The local MinariDataset `dataset_id` (metadata read, episodes left on disk), or a UserError."""
    try:
        import minari
    except ImportError:
        raise UserError("minari is not installed, which minari: datasets need; "
                        "pip install 'ctrlrl[offline]'") from None
    store = os.environ.get("MINARI_DATASETS_PATH")
    root = Path(store or "~/.minari/datasets").expanduser()
    if not dataset_id or not (root / dataset_id / "data").is_dir():  # minari's layout: <store>/<id>/data
        where = (f"MINARI_DATASETS_PATH={store}" if store
                 else "MINARI_DATASETS_PATH unset, so ~/.minari/datasets")
        near = [d for d in _local_ids(minari, root) if d.startswith(dataset_id.rsplit("-v", 1)[0])][:5]
        have = f" (local: {', '.join(near)})" if near else ""
        raise UserError(f"minari:{dataset_id}: not among the local Minari datasets ({where}){have}; "
                        f"download it with `minari download {dataset_id}` (needs network; ctrlrl never "
                        "downloads at run time)")
    _check_episode_count(root / dataset_id / "data", dataset_id)
    with _minari_reads(dataset_id):
        return minari.load_dataset(dataset_id)


def _check_episode_count(data: Path, dataset_id: str) -> None:
    """Refuse a metadata.json claiming more episodes than the files could hold (an episode takes far
    more than 64 bytes on disk): minari allocates an index per claimed episode before reading any, so
    a damaged count of billions would take tens of GB of memory instead of failing."""
    try:
        claimed = json.loads((data / "metadata.json").read_text(encoding="utf-8")).get("total_episodes")
    except (OSError, ValueError, AttributeError):
        return  # minari itself reports a missing or unparsable metadata file
    size = sum(f.stat().st_size for f in data.rglob("*") if f.is_file())
    if isinstance(claimed, (int, float)) and claimed > size // 64:
        raise UserError(f"minari:{dataset_id}: its metadata claims {claimed} episodes, more than its "
                        f"{size} bytes of files can hold, so it is damaged; download it again with "
                        f"`minari download {dataset_id}`")


def _local_ids(minari: Any, root: Path) -> list[str]:
    """The ids minari lists in the store at `root`, to suggest near names; none when it cannot list."""
    if not root.is_dir():  # minari would create a missing store
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # minari warns about every misconfigured folder in the store
        try:
            return list(minari.list_local_datasets())
        except Exception:  # a folder minari cannot parse: the suggestion is only a hint
            return []


def minari_env(dataset_id: str) -> str | None:
    """The gymnasium id in a local Minari dataset's env spec, None when it has none."""
    spec = _open(dataset_id).env_spec
    return None if spec is None else spec.id


def _episodes(ds: Any, dataset_id: str) -> Iterator[Any]:
    """ds's episodes, minari's reading of each one guarded by `_minari_reads`."""
    with _minari_reads(dataset_id):
        episodes = iter(ds.iterate_episodes())
    while True:
        with _minari_reads(dataset_id):
            episode = next(episodes, None)
        if episode is None:
            return
        yield episode


def _episode_arrays(episode: Any, index: int, obs_shape: tuple[int, ...], act_shape: tuple[int, ...],
                    dataset_id: str) -> dict[str, np.ndarray]:
    """An episode's arrays, checked: numbers, T+1 observations and T of everything else, 0/1 flags."""
    fix = f"download it again with `minari download {dataset_id}`"
    arrays = {key: getattr(episode, key) for key in EPISODE_KEYS}
    for key, arr in arrays.items():
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
            what = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
            raise UserError(f"minari:{dataset_id}: episode {index}'s {key} hold {what}, not numbers; {fix}")
    steps = len(arrays["rewards"]) if arrays["rewards"].ndim == 1 else -1
    want = {"observations": (steps + 1, *obs_shape), "actions": (steps, *act_shape), "rewards": (steps,),
            "terminations": (steps,), "truncations": (steps,)}
    if steps < 0 or any(arrays[key].shape != shape for key, shape in want.items()):
        have = ", ".join(f"{key} {arr.shape}" for key, arr in arrays.items())
        raise UserError(f"minari:{dataset_id}: episode {index} has {have}; an episode of T steps needs "
                        f"observations (T+1, {', '.join(map(str, obs_shape))}), actions "
                        f"(T, {', '.join(map(str, act_shape))}) and T of each other; {fix}")
    for key in ("terminations", "truncations"):
        if ((arrays[key] != 0) & (arrays[key] != 1)).any():
            raise UserError(f"minari:{dataset_id}: episode {index}'s {key} hold values other than 0 "
                            f"and 1; {fix}")
    return arrays


def load_minari(dataset_id: str) -> Dataset:
    """A local Minari dataset as transitions: next obs = observations[1:] per episode, terminals =
    terminations (truncated ends bootstrap), behaviour returns over episodes that end in termination
    or truncation, env_id from the dataset's env spec, and the dataset's own reference scores
    (`reference_scores`). Flat Box observations and actions only."""
    ds = _open(dataset_id)
    source = f"minari:{dataset_id}"
    import gymnasium as gym

    spaces = ds.observation_space, ds.action_space  # minari parsed them (and the env spec) on opening
    for space, what in zip(spaces, ("observation", "action"), strict=True):
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise UserError(f"{source}: its {what} space is {space}; ctrlrl reads flat Box observations and "
                            "actions only (Dict, image and discrete spaces are not supported)")

    obs, next_obs, act, rew, term, returns = [], [], [], [], [], []
    for i, episode in enumerate(_episodes(ds, dataset_id)):
        ep = _episode_arrays(episode, i, spaces[0].shape, spaces[1].shape, dataset_id)
        if len(ep["rewards"]) == 0:
            continue
        obs.append(ep["observations"][:-1])
        next_obs.append(ep["observations"][1:])
        act.append(ep["actions"])
        rew.append(ep["rewards"])
        term.append(ep["terminations"] != 0)
        if ep["terminations"][-1] or ep["truncations"][-1]:
            returns.append(float(np.sum(ep["rewards"], dtype=np.float64)))
    if not obs:
        raise UserError(f"{source}: the dataset holds no steps; use another dataset")

    arrays = {"observations": np.concatenate(obs), "actions": np.concatenate(act),
              "rewards": np.concatenate(rew), "next_observations": np.concatenate(next_obs)}
    for key, arr in arrays.items():
        bad = first_bad_row(arr)
        if bad is not None:
            raise UserError(f"{source}: {key} has {bad[1]} at transition {bad[0]}; "
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
    try:
        low, high = float(np.asarray(low)), float(np.asarray(high))
    except (TypeError, ValueError):
        low, high = np.nan, np.nan  # not numbers: refused below like any unusable pair
    if not (np.isfinite(low) and np.isfinite(high) and high != low):
        raise UserError(f"{source}: its reference scores ref_min_score={metadata.get('ref_min_score')!r}, "
                        f"ref_max_score={metadata.get('ref_max_score')!r} cannot normalise returns (they "
                        "must be finite numbers that differ); download it again or report the dataset "
                        "to its authors")
    return low, high
