"""D4RL's HDF5 dataset format, read and written directly, and D4RL's reference scores.

The `d4rl` package is not used: it needs the old `gym`, `mujoco-py` and MuJoCo 2.1 and downloads its
files itself. ctrlrl reads the same files (Fu et al., "D4RL: Datasets for Deep Data-Driven
Reinforcement Learning", arXiv 2020) and never downloads at run time.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ctrlrl.core.errors import UserError
from ctrlrl.core.evaluation import normalized_score as core_normalized_score

REQUIRED = ("observations", "actions", "rewards", "terminals", "timeouts")
# keys `transitions` reads, with the number of dimensions each must have
_NDIM = {"observations": 2, "actions": 2, "rewards": 1, "terminals": 1, "timeouts": 1, "next_observations": 2}
_FLAGS = ("terminals", "timeouts")
_FINITE = ("observations", "actions", "rewards", "next_observations")

# D4RL's random / expert returns per locomotion env (REF_MIN_SCORE / REF_MAX_SCORE of d4rl/infos.py)
REF_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}
# the gymnasium env each D4RL v2 locomotion task is evaluated on: its observation layout and the
# model its data was collected with (MuJoCo's v3 XML). Hopper's and HalfCheetah's v5 keep that model
# (Hopper-v5 only drops the healthy reward of the terminating step); Walker2d-v5 raised the right
# foot's friction from 0.9 to 1.9, so walker2d data is evaluated on Walker2d-v4, the v3 model.
ENV_OF_TASK: dict[str, str] = {
    "hopper": "Hopper-v5",
    "halfcheetah": "HalfCheetah-v5",
    "walker2d": "Walker2d-v4",
    "ant": "Ant-v5",
}
# Walker2d-v4 is chosen for its model, not by oversight: gymnasium's advice to move to v5 does not apply
warnings.filterwarnings("ignore", message=r".*Walker2d-v4 is out of date", category=DeprecationWarning)
_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl"


# ---------------------------------------------------------------- tasks and reference scores


def task_env(task: str) -> str:
    """The gymnasium env a D4RL locomotion task is evaluated on: 'hopper-medium-v2' -> 'Hopper-v5'."""
    name = task.split("-", 1)[0].lower()
    if name not in ENV_OF_TASK:
        known = ", ".join(f"{k}-<level>-v2" for k in ENV_OF_TASK)
        raise UserError(f"unknown D4RL task {task!r}; known tasks are {known} (e.g. hopper-medium-v2)")
    return ENV_OF_TASK[name]


def _env_family(env_id: str) -> str:
    """'Hopper-v5' -> 'hopper', 'ns/Walker2d-v4' -> 'walker2d': the name without namespace or version."""
    return re.sub(r"-v\d+$", "", env_id.rsplit("/", 1)[-1]).lower()


def reference_scores(env_id: str) -> tuple[float, float] | None:
    """D4RL's (random, expert) returns for a gymnasium env id of any version; None when it has none."""
    return REF_SCORES.get(_env_family(env_id))


def normalized_score(env_id: str, returns: Any) -> np.ndarray | float:
    """D4RL's normalised score 100·(return − random)/(expert − random): 0 = random policy, 100 = expert."""
    ref = reference_scores(env_id)
    if ref is None:
        raise UserError(f"env {env_id!r} has no D4RL reference scores; normalised scores exist only for "
                        "Hopper, HalfCheetah, Walker2d and Ant (any version): report raw returns instead")
    score = core_normalized_score(np.asarray(returns, dtype=np.float64), *ref)
    return float(score) if score.ndim == 0 else score


# ---------------------------------------------------------------- files


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# what h5py raises on a file that is not HDF5 or is damaged (the HDF5 library's error classes map to
# these), and invalid UTF-8 in a string dataset (a ValueError)
H5_FAILURES = (OSError, KeyError, RuntimeError, ValueError, TypeError, NotImplementedError)


def _read_value(obj: Any) -> Any:
    """One HDF5 dataset as numpy: arrays and scalars keep their dtype; variable-length strings become
    `str` (scalars) or unicode arrays, so that what `write_d4rl` stored comes back equal."""
    import h5py

    info = h5py.check_string_dtype(obj.dtype)
    if info is not None and info.length is None:
        value = obj.asstr()[()]
        return value if isinstance(value, str) else np.asarray(value).astype(str)
    return obj[()]


def read_d4rl(path: str | os.PathLike, keys: Iterable[str] | None = None) -> dict[str, Any]:
    """Every dataset in a D4RL-format HDF5 file, nested groups flattened to 'infos/qpos'-style keys.

    `keys` limits the read to those names (the rest of a large file stays on disk).
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise UserError(f"dataset {path}: not a file; give the path of a D4RL-format .hdf5 file")
    wanted = None if keys is None else set(keys)
    out: dict[str, Any] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and (wanted is None or name in wanted):
            out[name] = _read_value(obj)

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except H5_FAILURES as exc:
        raise UserError(f"dataset {path}: cannot read it as HDF5, it is damaged or another format "
                        f"({_one_line(exc)}); give a D4RL-format .hdf5 file") from None
    except MemoryError:  # HDF5 stores sizes, not data, for unwritten (or damaged) chunks
        raise UserError(f"dataset {path}: its arrays are larger than this machine's memory; use a "
                        "smaller dataset (or check the file: a damaged one can claim any size)") from None
    return out


def _write_value(f: Any, key: str, value: Any) -> None:
    import h5py

    if isinstance(value, str):
        f.create_dataset(key, data=value, dtype=h5py.string_dtype())
        return
    arr = np.asarray(value)
    if arr.dtype.kind == "U":
        f.create_dataset(key, data=arr.astype(object), dtype=h5py.string_dtype())
    else:
        f.create_dataset(key, data=arr)


def write_d4rl(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
    """Write `data` as a D4RL-format HDF5 file ('a/b' keys become groups), the inverse of `read_d4rl`.

    Atomic: the file is written beside `path` under a temporary name and renamed into place, so a
    crash never leaves a half-written dataset where a complete one is expected.
    """
    import h5py

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(tmp, "w") as f:
            for key, value in data.items():
                try:
                    _write_value(f, key, value)
                except (TypeError, ValueError) as exc:
                    raise UserError(f"dataset {path}: cannot store key {key!r} ({_one_line(exc)}); "
                                    "give numbers, numeric arrays or strings, and no key that is "
                                    "both a value and a group") from None
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"cannot write dataset {path} ({_one_line(exc)}); "
                        "choose a writable location") from None
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- validation and transitions


FLOAT32_MAX = float(np.finfo(np.float32).max)


def first_bad_row(arr: np.ndarray) -> tuple[int, str] | None:
    """The first row float32 cannot hold, and what it holds: NaN or inf, or a finite value beyond
    float32's range (loading as float32 would make it inf). None when every row fits; integer
    arrays always do."""
    if arr.dtype.kind not in "fc":
        return None
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(arr) <= FLOAT32_MAX)  # NaN compares False
    if bad.ndim > 1:
        bad = bad.reshape(len(bad), -1).any(axis=1)
    rows = np.flatnonzero(bad)
    if not rows.size:
        return None
    row = int(rows[0])
    finite = np.isfinite(arr[row]).all()
    return row, "a value beyond float32's range (±3.4e38)" if finite else "NaN or inf"


def validate_d4rl(data: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Check what `transitions` and `episode_returns` rely on; the first problem raises a `UserError`.

    Checked: required keys present, numeric dtypes, number of dimensions, one row per transition in
    every key, at least one observation and action column, matching observation widths, 0/1 flags,
    and no NaN/inf (nor values float32 cannot hold) in observations, actions, rewards or
    next_observations.
    """
    where = f"dataset {path}"
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        names = ", ".join(repr(k) for k in missing)
        raise UserError(f"{where}: missing key{'s' if len(missing) > 1 else ''} {names}; a D4RL-format file "
                        f"needs {', '.join(REQUIRED)} (next_observations is optional)")
    arrays = {k: np.asarray(data[k]) for k in _NDIM if k in data}
    for key, arr in arrays.items():
        kinds = "biuf" if key in _FLAGS else "iuf"
        if arr.dtype.kind not in kinds:
            raise UserError(f"{where}: key {key!r} has dtype {arr.dtype}; it must hold numbers "
                            f"({'0/1 flags' if key in _FLAGS else 'floats'})")
        if arr.ndim != _NDIM[key]:
            want = "(N,)" if _NDIM[key] == 1 else "(N, dim)"
            raise UserError(f"{where}: key {key!r} has shape {arr.shape}; "
                            f"it must be {want}, one row per step")
    n = len(arrays["observations"])
    if n == 0:
        raise UserError(f"{where}: 'observations' has no rows; the dataset is empty")
    for key, arr in arrays.items():
        if len(arr) != n:
            raise UserError(f"{where}: key {key!r} has {len(arr)} rows but 'observations' has {n}; "
                            "every key needs one row per step")
    for key in ("observations", "actions"):
        if arrays[key].shape[1] == 0:
            raise UserError(f"{where}: key {key!r} has shape {arrays[key].shape}, no columns; "
                            "it must be (N, dim) with dim >= 1")
    width = arrays["observations"].shape[1]
    if "next_observations" in arrays and arrays["next_observations"].shape[1] != width:
        raise UserError(f"{where}: 'next_observations' has {arrays['next_observations'].shape[1]} columns "
                        f"but 'observations' has {width}; they must match")
    for key in _FLAGS:
        arr = arrays[key]
        if arr.dtype.kind != "b":
            bad = np.flatnonzero((arr != 0) & (arr != 1))
            if bad.size:
                raise UserError(f"{where}: key {key!r} holds {arr[bad[0]]} at index {bad[0]}; "
                                "flags must be 0 or 1")
    for key in _FINITE:
        if key in arrays:
            bad = first_bad_row(arrays[key])
            if bad is not None:
                raise UserError(f"{where}: key {key!r} has {bad[1]} at index {bad[0]}; "
                                "clean the data or drop those rows")


def transitions(data: Mapping[str, Any], keep_timeouts: bool = False
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(obs, actions, rewards, next_obs, terminals) as float32, with D4RL's semantics made explicit.

    Default: the rows of D4RL's `qlearning_dataset` (d4rl/__init__.py), the loader every reference
    implementation trains on. Rows i = 0 … N−2 that are not flagged 'timeouts'; the next
    observation of row i is observations[i+1] (a 'next_observations' key is not read); done =
    terminals[i]. A timeout row is dropped because its successor row is the next episode's first
    observation, and so is the last row, which has no successor. A terminal row is kept; its
    successor is also the next episode's start, which is harmless as terminals are never
    bootstrapped.

    keep_timeouts=True, for files with 'next_observations': every row is a transition with its
    stored next observation, and a timeout row bootstraps from it (terminal 0). A file without
    'next_observations' has no successor for its timeout rows and drops them as above.

    Rows of one episode must be contiguous and in order. Call `validate_d4rl` first.
    """
    obs = np.asarray(data["observations"])
    act = np.asarray(data["actions"])
    rew = np.asarray(data["rewards"])
    term = np.asarray(data["terminals"])
    if keep_timeouts and "next_observations" in data:
        rows: Any = slice(None)
        next_obs = np.asarray(data["next_observations"])
    else:
        rows = np.flatnonzero(~np.asarray(data["timeouts"], dtype=bool)[:-1])
        next_obs = obs[rows + 1]
    return _f32(obs[rows]), _f32(act[rows]), _f32(rew[rows]), _f32(next_obs), _f32(term[rows])


def _f32(arr: np.ndarray) -> np.ndarray:
    return np.asarray(arr, dtype=np.float32)


def episode_ends(observations: np.ndarray, next_observations: np.ndarray,
                 terminals: np.ndarray) -> np.ndarray:
    """Rows that end an episode, for transitions stored episode after episode without timeouts (a
    replay buffer, a `Dataset`): terminal rows, rows whose next observation is not the next row's
    observation (a time-limit cut, then a reset), and the last row."""
    ends = np.ones(len(observations), dtype=bool)
    ends[:-1] = (np.asarray(terminals[:-1]) > 0) | np.any(
        next_observations[:-1] != observations[1:], axis=1)
    return ends


def episode_returns(data: Mapping[str, Any]) -> np.ndarray:
    """Undiscounted returns (float64) of the complete episodes: segments ending in a terminal or a
    timeout row. An unfinished tail is not an episode and is not counted."""
    done = np.asarray(data["terminals"], dtype=bool) | np.asarray(data["timeouts"], dtype=bool)
    ends = np.flatnonzero(done)
    if ends.size == 0:
        return np.zeros(0, dtype=np.float64)
    rewards = np.asarray(data["rewards"], dtype=np.float64)[: ends[-1] + 1]
    return np.add.reduceat(rewards, np.concatenate(([0], ends[:-1] + 1)))


# ---------------------------------------------------------------- locating task files


def _download_url(task: str) -> str | None:
    """Where D4RL hosts a locomotion task's file (v2 and v0 layouts); None for any other task."""
    m = re.fullmatch(r"([a-z0-9]+)-([a-z_-]+)-v(\d+)", task)
    if m is None or m.group(1) not in ENV_OF_TASK:
        return None
    stem = f"{m.group(1)}_{m.group(2).replace('-', '_')}"
    if m.group(3) == "2":
        return f"{_URL}/gym_mujoco_v2/{stem}-v2.hdf5"
    if m.group(3) == "0":
        return f"{_URL}/gym_mujoco/{stem}.hdf5"
    return None


def resolve_task(task: str) -> Path:
    """The local file of a D4RL task: the first of data_dir()/d4rl/<task>.hdf5 and D4RL's own cache
    ($D4RL_DATASET_DIR, default ~/.d4rl/datasets), under the task's name or the name D4RL downloads
    it as (hopper_medium-v2.hdf5). ctrlrl never downloads: a missing file is a `UserError` with the fix.
    """
    from ctrlrl.data import data_dir

    if not task or "/" in task or task.endswith((".hdf5", ".h5")):
        raise UserError(f"d4rl:{task}: give a D4RL task name, e.g. d4rl:hopper-medium-v2 "
                        "(a file is loaded by its path, without d4rl:)")
    url = _download_url(task)
    names = [f"{task}.hdf5"] + ([url.rsplit("/", 1)[1]] if url else [])
    ours = data_dir() / "d4rl"
    theirs = Path(os.environ.get("D4RL_DATASET_DIR") or Path.home() / ".d4rl" / "datasets").expanduser()
    for folder in (ours, theirs):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    source = f"download {url}" if url else f"download D4RL's file for {task}"
    raise UserError(f"d4rl:{task} not found at {ours / names[0]} or {theirs / names[0]}; {source} into "
                    f"{ours}/ (ctrlrl never downloads at run time) or generate a dataset with "
                    "`ctrlrl collect`")
