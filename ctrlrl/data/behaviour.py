"""Behaviour policies kept as small files, so a generated dataset can be made again in minutes.

A medium dataset is a SAC run (an hour of CPU) and then a rollout of its actor. `ctrlrl collect`
freezes that actor into a `.npz` file (its weights, the env's action bounds, how it was trained),
a few hundred kB, and `ctrlrl collect --policy FILE` rolls the file out without the run: one
thread, float32, the same operations, in the same order, with the same seeded noise as the rollout
from the run itself, so it writes the rows that rollout wrote (tests/test_data.py checks both).
Across machines the rows are as reproducible as torch's float32 CPU arithmetic, which
`portable_blas` makes the same on the AMD EPYC (with and without AVX-512) and Intel Xeon VMs this
project has run on; the digest every offline run records, and the rows pinned in
benchmarks/behaviour/rows.json, would show a CPU that still rounds otherwise.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctrlrl.core.errors import UserError

FORMAT = "ctrlrl-behaviour-1"


@dataclass
class Behaviour:
    """A SAC actor (squashed Gaussian) and the env's action bounds."""

    actor: Any  # ctrlrl.core.nets.TanhGaussianPolicy
    action_low: np.ndarray  # the env's Box bounds, in the space's dtype
    action_high: np.ndarray
    meta: dict[str, Any]  # env_id, level, training steps and evaluation return, versions

    def act(self, obs: np.ndarray) -> np.ndarray:
        """An env action for one observation, sampled with torch's global generator: SAC's
        `predict(obs, deterministic=False)` step for step."""
        obs_t = torch.as_tensor(np.asarray(obs, dtype=np.float32)[None])
        with torch.no_grad():
            action = self.actor.sample(obs_t)[0].numpy()[0]
        return self.to_env_action(action)

    def to_env_action(self, action: np.ndarray) -> np.ndarray:
        """The actor's squashed action (in [-1, 1], clipped there) on the env's action box."""
        action = np.clip(action, -1.0, 1.0)
        return self.action_low + (action + 1.0) * 0.5 * (self.action_high - self.action_low)


def export(actor, action_low: np.ndarray, action_high: np.ndarray, path: str | Path,
           meta: dict[str, Any]) -> Path:
    """Write a `TanhGaussianPolicy` (SAC's actor) as a behaviour file."""
    from ctrlrl.core.nets import TanhGaussianPolicy, activation

    if not isinstance(actor, TanhGaussianPolicy) or actor.trunk.norms is not None \
            or actor.trunk.act is not activation("relu"):
        raise UserError("a behaviour file holds a SAC actor (ReLU layers, no layer norm); this "
                        "policy is another kind")
    layers = [*actor.trunk.layers, actor.head]
    arrays = {f"weight{i}": layer.weight.detach().cpu().numpy() for i, layer in enumerate(layers)}
    arrays |= {f"bias{i}": layer.bias.detach().cpu().numpy() for i, layer in enumerate(layers)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"format": FORMAT, "layers": len(layers), **meta}
    with open(path, "wb") as f:
        np.savez(f, action_low=action_low, action_high=action_high,
                 info=np.asarray(json.dumps(info, sort_keys=True)), **arrays)
    return path


def load(path: str | Path) -> Behaviour:
    """Read a behaviour file written by `export`; a wrong or damaged file is one clear error."""
    from ctrlrl.core.nets import TanhGaussianPolicy

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
            weights = [f[f"weight{i}"] for i in range(n)]
            biases = [f[f"bias{i}"] for i in range(n)]
            low, high = f["action_low"], f["action_high"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--policy {path}: not a behaviour file ({e}); give a file that "
                        "`ctrlrl collect` wrote beside its SAC run") from None
    dims = [w.shape for w in weights]
    if (any(w.ndim != 2 or w.dtype != np.float32 for w in weights)
            or any(a[0] != b[1] for a, b in itertools.pairwise(dims))
            or [b.shape for b in biases] != [(d[0],) for d in dims]
            or low.shape != high.shape or dims[-1][0] != 2 * len(low)):
        raise UserError(f"--policy {path}: its layer shapes do not fit together ({dims}); the file "
                        "is damaged: export it again")
    actor = TanhGaussianPolicy(dims[0][1], len(low), [d[0] for d in dims[:-1]])
    with torch.no_grad():
        for layer, w, b in zip([*actor.trunk.layers, actor.head], weights, biases, strict=True):
            layer.weight.copy_(torch.from_numpy(w))
            layer.bias.copy_(torch.from_numpy(b))
    return Behaviour(actor.requires_grad_(False), low, high, info)


def portable_blas() -> None:
    """Hold MKL, torch's BLAS on x86, to its SSE4.2 kernels for the rest of this process. MKL picks
    its kernels by CPU, and on an Intel Xeon with AVX-512 its own kernels round the policy's matrix
    products otherwise than on an AMD EPYC, so a rollout there wrote other rows; held to SSE4.2 it
    writes the AMD rows. Takes effect only before the process's first MKL call (so rollouts run in
    a fresh process); does nothing in a torch without MKL."""
    import contextlib
    import ctypes

    for lib in (Path(torch.__file__).parent / "lib").glob("libtorch_cpu.*"):
        with contextlib.suppress(OSError, AttributeError):  # not a library, or no MKL in it
            ctypes.CDLL(str(lib)).mkl_serv_enable_instructions(0)  # MKL_ENABLE_SSE4_2


def file_digest(path: str | Path) -> str:
    """SHA-256 of a behaviour file's bytes, as dataset metadata records it."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
