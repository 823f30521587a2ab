"""Checkpoint files: atomic writes, and loads that can never run code.

A checkpoint is a nested dict of tensors, numbers, strings, lists and dicts, saved with
`torch.save` and read with `torch.load(weights_only=True)`. NumPy arrays (env and RNG state) are
stored as tensors under a `{"__ndarray__": tensor}` tag and come back as arrays.

A file is read only if it is a zip archive whose members all pass their CRC-32 check (what
`torch.save` writes), so a damaged or cut file is refused rather than loaded with altered weights.
What it holds is untrusted until checked against the live object it restores (`misfit`).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch.torch_version import TorchVersion

from ctrlrl.core.errors import UserError

FORMAT = 1
CHECKPOINT_NAME = "latest.pt"  # a run dir's checkpoint: <run dir>/checkpoints/latest.pt
# `weights_only` refuses code from torch 2.6 (CVE-2025-32434) and is memory-safe against crafted
# files from 2.10; pyproject.toml requires it, this guards environments installed otherwise
SAFE_TORCH = "2.10"


def _to_safe(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj)).clone()}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _to_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_safe(v) for v in obj)
    return obj


def _from_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__ndarray__"} and torch.is_tensor(obj["__ndarray__"]):
            return obj["__ndarray__"].numpy()
        return {k: _from_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_from_safe(v) for v in obj)
    return obj


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Write to a temporary file in the same folder, fsync, rename over `path`, fsync the folder.

    A crash, power cut or Ctrl-C mid-write leaves the previous file intact, and once this returns
    the new one survives a power cut (the rename itself is on disk).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:  # incl. a second Ctrl-C mid-write: leave no half file behind
        tmp.unlink(missing_ok=True)
        if _during_interrupt(exc):  # torch.save's writer, cut by Ctrl-C, fails on its way out
            raise KeyboardInterrupt from exc
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _during_interrupt(exc: BaseException) -> bool:
    """An error raised while a KeyboardInterrupt was being handled: the interrupt is the cause."""
    if isinstance(exc, KeyboardInterrupt):
        return False
    context = exc.__context__
    while context is not None:
        if isinstance(context, KeyboardInterrupt):
            return True
        context = context.__context__
    return False


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """`state` to `path`, atomically (`atomic_write`)."""
    with atomic_write(Path(path)) as f:
        torch.save(_to_safe({"ctrlrl_format": FORMAT, **state}), f)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The state `save_checkpoint` wrote to `path`; any other file ends in a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass a run dir or a .pt file "
                        "written by ctrlrl")
    if TorchVersion(torch.__version__) < SAFE_TORCH:
        raise UserError(f"torch {torch.__version__} cannot load checkpoints safely (a crafted file "
                        f"could run code); upgrade: pip install 'torch>={SAFE_TORCH}'")
    _check_archive(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():
            raise UserError(
                f"{path} holds pickled Python objects; ctrlrl refuses to load it because "
                "unpickling can run code. Use a checkpoint written by ctrlrl (tensors and plain "
                "values only)") from None
        raise _unreadable(path, exc) from None
    except Exception as exc:  # a damaged file fails anywhere in torch's reader
        raise _unreadable(path, exc) from None
    if not isinstance(state, dict) or "ctrlrl_format" not in state:
        raise UserError(f"{path} is a torch file but not a ctrlrl checkpoint")
    if not isinstance(state["ctrlrl_format"], int) or state["ctrlrl_format"] != FORMAT:
        raise UserError(f"{path} has checkpoint format {state['ctrlrl_format']!r}, this ctrlrl "
                        f"reads format {FORMAT}; use the ctrlrl version that wrote it")
    try:
        return _from_safe(state)
    except (RuntimeError, TypeError) as exc:  # a tagged array NumPy cannot hold (e.g. bfloat16)
        raise _unreadable(path, exc) from None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint (what `Algorithm.save` writes) from a file, or from a run dir's
    checkpoints/latest.pt, with every entry of the expected type (`CHECKPOINT_ENTRIES`)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / CHECKPOINT_NAME
    ckpt = load_checkpoint(path)
    problem = _checkpoint_problem(ckpt)
    if problem:
        raise UserError(f"{path} is not a complete ctrlrl checkpoint ({problem}); it is "
                        "damaged or was not written by ctrlrl")
    return ckpt


# what `Algorithm.save` writes, by type; wall_time, true_returns and last_evaluation may be absent
# (older files)
CHECKPOINT_ENTRIES: dict[str, type | tuple[type, ...]] = {
    "algo": str, "run": dict, "config": dict, "step": int, "n_updates": int,
    "wall_time": (int, float), "episodes": list, "true_returns": list, "modules": dict,
    "env": dict, "rng": dict, "extra": dict, "obs": np.ndarray, "metrics": dict,
    "last_evaluation": (dict, type(None))}


def _checkpoint_problem(ckpt: dict[str, Any]) -> str | None:
    """What makes `ckpt` other than `Algorithm.save` output, in a few words; None if nothing."""
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    for key, types in CHECKPOINT_ENTRIES.items():
        if key not in ckpt:
            if key not in ("wall_time", "true_returns", "last_evaluation"):
                return f"no {key!r} entry"
        elif not isinstance(ckpt[key], types) or isinstance(ckpt[key], bool):
            return f"{key!r} is a {type(ckpt[key]).__name__}"
    if ckpt["step"] < 0 or ckpt["n_updates"] < 0:
        return "a negative step count"
    if not all(isinstance(key, str) for key in [*ckpt["run"], *ckpt["config"]]):
        return "settings not named by strings"
    if "env" not in ckpt["run"]:
        return "no env in its run config"
    if not all(isinstance(e, list) and len(e) == 2 and all(map(number, e))
               for e in ckpt["episodes"]):
        return "'episodes' are not (return, length) pairs"
    if not all(map(number, [*ckpt.get("true_returns", []), *ckpt["metrics"].values()])):
        return "'true_returns' or 'metrics' hold other than numbers"
    if not all(isinstance(m, dict) for m in ckpt["modules"].values()):
        return "'modules' hold other than state dicts"
    if not isinstance(ckpt["env"].get("envs"), list):
        return "'env' holds no list of env states"
    last = ckpt.get("last_evaluation")
    if last is not None and not (
            set(last) == {"step", "returns", "true_returns", "ref_scores"}
            and isinstance(last["step"], int) and isinstance(last["returns"], np.ndarray)
            and isinstance(last["true_returns"], np.ndarray)
            and (last["ref_scores"] is None or (isinstance(last["ref_scores"], tuple)
                 and len(last["ref_scores"]) == 2 and all(map(number, last["ref_scores"]))))):
        return "'last_evaluation' is not an evaluation"
    return None


def stored_numbers(tree: Any) -> int:
    """Numbers in all the tensors and arrays of a nested state."""
    if torch.is_tensor(tree) or isinstance(tree, np.ndarray):
        return int(np.prod(tree.shape))
    if isinstance(tree, dict):
        return sum(stored_numbers(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(stored_numbers(v) for v in tree)
    return 0


def _check_archive(path: Path) -> None:
    """Refuse anything but an intact zip archive (torch's file format), before torch parses it."""
    try:
        with open(path, "rb") as f:
            start = f.read(4)
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror}); check its permissions") from None
    if start != b"PK\x03\x04":  # not even the start of a zip archive
        raise UserError(f"{path} is not a ctrlrl checkpoint (not a torch zip file); pass a run dir "
                        "or a checkpoints/*.pt file written by ctrlrl")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every member and checks its CRC-32
    except Exception as exc:  # BadZipFile, or a header damaged in a way zipfile trips over
        raise _damaged(path, f"its zip index cannot be read: {_first_line(exc)}") from None
    if bad is not None:
        raise _damaged(path, f"member {bad} fails its CRC check")


def _damaged(path: Path, why: str) -> UserError:
    return UserError(f"{path} is damaged ({why}): it was cut or changed after it was written; "
                     "use another checkpoint or train again")


def _unreadable(path: Path, exc: Exception) -> UserError:
    return UserError(f"{path} is not a readable ctrlrl checkpoint ({type(exc).__name__}: "
                     f"{_first_line(exc)}); pass a checkpoint written by ctrlrl")


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else "no detail"


def misfit(stored: Any, live: Any, where: str) -> str | None:
    """Why `stored` (read from a checkpoint) cannot replace `live` (the same state of the object
    being restored), or None when it fits.

    It fits when it has the live value's structure: dicts with no keys the live one lacks, lists
    of the same length, arrays and tensors of the same shape (arrays of any numeric dtype: envs
    switch between float32 and float64), a number for a number (an integer for an integer), a
    string for a string. A live None
    (state not yet set, e.g. an env's last action before its first step) takes None or any
    number, string or array.
    """
    def leaf(v: Any) -> bool:
        return v is None or isinstance(v, (bool, int, float, str, np.generic, np.ndarray))

    def kind(v: Any) -> str:
        if isinstance(v, (bool, np.bool_)):
            return "a boolean"
        if isinstance(v, (int, np.integer)):
            return "an integer"
        if isinstance(v, (float, np.floating)):
            return "a number"
        for types, name in ((str, "a string"), (np.ndarray, "an array"), (torch.Tensor, "a tensor"),
                            (dict, "a mapping"), ((list, tuple), "a list"), (type(None), "None")):
            if isinstance(v, types):
                return name
        return type(v).__name__

    # a 0-d array and a scalar are the same state (NumPy arithmetic turns one into the other)
    stored, live = (x.item() if isinstance(x, np.ndarray) and x.ndim == 0 else x
                    for x in (stored, live))
    if live is None:
        return None if leaf(stored) else f"{where}: expected a plain value, got {kind(stored)}"
    if kind(stored) != kind(live) and (kind(stored), kind(live)) != ("an integer", "a number"):
        return f"{where}: expected {kind(live)}, got {kind(stored)}"
    if isinstance(live, dict):
        for key, value in stored.items():
            if key not in live:
                return f"{where}: unknown key {key!r}"
            problem = misfit(value, live[key], f"{where}.{key}")
            if problem:
                return problem
    elif isinstance(live, (list, tuple)):
        if len(stored) != len(live):
            return f"{where}: expected {len(live)} entries, got {len(stored)}"
        for i, (value, now) in enumerate(zip(stored, live, strict=True)):
            problem = misfit(value, now, f"{where}[{i}]")
            if problem:
                return problem
    elif isinstance(live, np.ndarray):
        if stored.shape != live.shape or stored.dtype.kind not in "biuf":
            return (f"{where}: expected a numeric array of shape {live.shape}, got "
                    f"{stored.dtype} {stored.shape}")
    elif isinstance(live, torch.Tensor) and (stored.shape != live.shape or stored.dtype != live.dtype):
        return f"{where}: expected a {live.dtype} tensor of shape {tuple(live.shape)}"
    return None
