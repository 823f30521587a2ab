"""Behaviour policies as plain arrays, rolled out to the same rows on any machine.

A generated dataset is only worth pooling runs over if every machine can make its rows again. A
SAC run cannot promise that: torch picks its matrix kernels by CPU (AVX2, AVX-512, AMX), they round
differently, and the runs diverge. So `ctrlrl collect` freezes the SAC actor it trained into a
small `.npz` file (its weights, the env and action bounds, how it was trained) and rolls out that
file instead, in float64 numpy arithmetic whose every result is fixed by IEEE rounding: products
are elementwise, sums run in a set order, exp and tanh come from the C library on scalars, the
noise from numpy's seeded generator, and each action is rounded to float32 for the env. Given the
file, the rollout seed and the MuJoCo and gymnasium versions, the rows are the same whatever the
CPU; `ctrlrl collect --policy FILE` makes them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctrlrl.core.errors import UserError

FORMAT = "ctrlrl-behaviour-1"


@dataclass(frozen=True)
class Behaviour:
    """A squashed-Gaussian policy (SAC's): ReLU layers, then a head giving the pre-tanh mean and
    log-std; actions tanh(mean + std·ε) in [-1, 1], scaled to the env's bounds."""

    weights: tuple[np.ndarray, ...]  # float64 (in, out) per layer, the head last
    biases: tuple[np.ndarray, ...]
    action_low: np.ndarray  # float64, the env's Box bounds
    action_high: np.ndarray
    log_std_bounds: tuple[float, float]
    meta: dict[str, Any]  # env_id, level, training steps and evaluation return, versions

    @property
    def act_dim(self) -> int:
        return len(self.action_low)

    def distribution(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean, clamped log-std) of the pre-tanh Gaussian for one observation."""
        x = np.asarray(obs, np.float32).astype(np.float64)  # what the actor was trained on
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            # row-by-row sums along axis 0: a fixed order of IEEE additions, no BLAS kernel
            x = (x[:, None] * w).sum(axis=0) + b
            if i < len(self.weights) - 1:
                x = np.maximum(x, 0.0)
        return x[: self.act_dim], np.clip(x[self.act_dim:], *self.log_std_bounds)

    def act(self, obs: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """The env action (float32) for `obs` with standard-normal `noise` (None: the mode)."""
        mean, log_std = self.distribution(obs)
        action = []
        for i in range(self.act_dim):
            u = mean[i] if noise is None else mean[i] + math.exp(log_std[i]) * float(noise[i])
            low, high = float(self.action_low[i]), float(self.action_high[i])
            action.append(low + (math.tanh(u) + 1.0) * 0.5 * (high - low))
        return np.asarray(action, np.float32)


def export(actor, action_low: np.ndarray, action_high: np.ndarray, path: str | Path,
           meta: dict[str, Any]) -> Path:
    """Write a `TanhGaussianPolicy` (SAC's actor) as a behaviour file."""
    from ctrlrl.core.nets import TanhGaussianPolicy, activation

    if not isinstance(actor, TanhGaussianPolicy) or actor.trunk.norms is not None \
            or actor.trunk.act is not activation("relu"):
        raise UserError("a behaviour file holds a SAC actor (ReLU layers, no layer norm); this "
                        "policy is another kind")
    layers = [*actor.trunk.layers, actor.head]
    arrays = {f"weight{i}": layer.weight.detach().cpu().float().numpy().T for i, layer in enumerate(layers)}
    arrays |= {f"bias{i}": layer.bias.detach().cpu().float().numpy() for i, layer in enumerate(layers)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"format": FORMAT, "layers": len(layers),
            "log_std_bounds": [actor.LOG_STD_MIN, actor.LOG_STD_MAX], **meta}
    with open(path, "wb") as f:
        np.savez(f, action_low=np.asarray(action_low, np.float64),
                 action_high=np.asarray(action_high, np.float64),
                 info=np.asarray(json.dumps(info, sort_keys=True)), **arrays)
    return path


def load(path: str | Path) -> Behaviour:
    """Read a behaviour file written by `export`; a wrong or damaged file is one clear error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--policy {path}: no such file; give a behaviour file (.npz) that "
                        "`ctrlrl collect` wrote beside its SAC run")
    try:
        with np.load(path, allow_pickle=False) as f:
            info = json.loads(str(f["info"]))
            if info.get("format") != FORMAT:
                raise ValueError(f"format {info.get('format')!r}")
            n = int(info["layers"])
            weights = tuple(f[f"weight{i}"].astype(np.float64) for i in range(n))
            biases = tuple(f[f"bias{i}"].astype(np.float64) for i in range(n))
            low, high = f["action_low"].astype(np.float64), f["action_high"].astype(np.float64)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--policy {path}: not a behaviour file ({e}); give a file that "
                        "`ctrlrl collect` wrote beside its SAC run") from None
    dims = [w.shape for w in weights]
    if (any(w.ndim != 2 for w in weights) or any(a[1] != b[0] for a, b in itertools.pairwise(dims))
            or [b.shape for b in biases] != [(d[1],) for d in dims]
            or low.shape != high.shape or dims[-1][1] != 2 * len(low)):
        raise UserError(f"--policy {path}: its layer shapes do not fit together ({dims}); the file "
                        "is damaged: export it again")
    return Behaviour(weights, biases, low, high, tuple(info.pop("log_std_bounds")), info)


def file_digest(path: str | Path) -> str:
    """SHA-256 of a behaviour file's bytes, as dataset metadata records it."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
