"""Checkpoint files: atomic writes, and loads that can never run code.

A checkpoint is a nested dict of tensors, numbers, strings, lists and dicts, saved with
`torch.save` and read with `torch.load(weights_only=True)`. NumPy arrays (env and RNG state) are
stored as tensors under a `{"__ndarray__": tensor}` tag and come back as arrays.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctrlrl.core.errors import UserError

FORMAT = 1


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
        if set(obj) == {"__ndarray__"}:
            return obj["__ndarray__"].numpy()
        return {k: _from_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_from_safe(v) for v in obj)
    return obj


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    A crash or Ctrl-C mid-write leaves the previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(_to_safe({"ctrlrl_format": FORMAT, **state}), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # incl. a second Ctrl-C mid-write: leave no half file behind
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass a run dir or a .pt file "
                        "written by ctrlrl")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(
            f"{path} holds pickled Python objects; ctrlrl refuses to load it because unpickling "
            "can run code. Use a checkpoint written by ctrlrl (tensors and plain values only)"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise UserError(f"{path} is not a readable checkpoint ({exc}); "
                        "it may be truncated or not a torch file") from None
    if not isinstance(state, dict) or "ctrlrl_format" not in state:
        raise UserError(f"{path} is a torch file but not a ctrlrl checkpoint")
    if state["ctrlrl_format"] != FORMAT:
        raise UserError(f"{path} has checkpoint format {state['ctrlrl_format']}, this ctrlrl "
                        f"reads format {FORMAT}; use the ctrlrl version that wrote it")
    return _from_safe(state)
