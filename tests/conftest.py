"""Shared fixtures and helpers for the ctrlrl test suite.

Every training run here is tiny (a few hundred env steps, small networks) so the default
`pytest` run stays fast on two CPU cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

# quiet, fast runs: no progress bar, no TensorBoard unless a test asks for it, no evaluation;
# one env and no normalisation unless a test asks (presets may set them per env); CPU, where
# the design promises bit-identical results (CUDA only within a tolerance)
QUIET: dict[str, Any] = {"progress": False, "tensorboard": False, "eval_every": 0,
                         "n_envs": 1, "normalize_obs": False, "normalize_reward": False,
                         "device": "cpu"}

# a small random-action Hopper dataset in D4RL format, written once per test session (no network)
OFFLINE_DATA = Path(tempfile.gettempdir()) / f"ctrlrl-tests-{os.getpid()}" / "hopper-random.hdf5"
OFFLINE: dict[str, Any] = {**QUIET, "dataset": str(OFFLINE_DATA), "batch_size": 32,
                           "hidden_sizes": [32, 32], "log_every": 50}

FAST: dict[str, dict[str, Any]] = {
    "ppo": {**QUIET, "n_steps": 64, "batch_size": 32, "n_epochs": 2, "hidden_sizes": [32, 32],
            "log_every": 64},
    "sac": {**QUIET, "learning_starts": 50, "buffer_size": 2000, "batch_size": 32,
            "hidden_sizes": [32, 32], "log_every": 50},
    "td3": {**QUIET, "learning_starts": 50, "buffer_size": 2000, "batch_size": 32,
            "hidden_sizes": [32, 32], "log_every": 50},
    "mdpo": {**QUIET, "n_steps": 64, "sgd_steps": 3, "vf_epochs": 2, "vf_batch_size": 32,
             "hidden_sizes": [32, 32], "log_every": 64},
    "mdpo-off": {**QUIET, "learning_starts": 50, "buffer_size": 2000, "batch_size": 32,
                 "hidden_sizes": [32, 32], "log_every": 50, "old_update_every": 20},
    "pdppo": {**QUIET, "n_steps": 64, "n_epochs": 2, "actor_hidden_sizes": [32, 32],
              "critic_hidden_sizes": [32, 32], "log_every": 64},
    "td3bc": OFFLINE,
    "bc": OFFLINE,
    "a2pr": {**{k: v for k, v in OFFLINE.items() if k != "hidden_sizes"},
             "actor_hidden_sizes": [32, 32], "critic_hidden_sizes": [32, 32],
             "vae_hidden_sizes": [32, 32]},
    "odice": {**OFFLINE, "policy_hidden_sizes": [32, 32]},
    "odice-il": {**OFFLINE, "policy_hidden_sizes": [32, 32]},
    "orpo": {**QUIET, "n_envs": 2, "n_steps": 64, "batch_size": 64, "n_epochs": 2,
             "hidden_sizes": [32, 32], "disc_hidden_sizes": [32, 32], "disc_epochs": 2,
             "disc_batch_size": 64, "log_every": 128},
    "ppo-adreg": {**QUIET, "n_envs": 2, "n_steps": 64, "batch_size": 64, "n_epochs": 2,
                  "hidden_sizes": [32, 32], "reg_coef": 0.1, "log_every": 128},
}

# env and step budgets per algorithm: N steps for a first segment, a multiple of log_every
# (and of n_steps × n_envs for PPO; orpo: twice that, its base steps count) so a resumed run logs
# at the same steps as a straight one
ENV = {"ppo": "Pendulum-v1", "sac": "Pendulum-v1", "td3": "Pendulum-v1", "mdpo": "Pendulum-v1",
       "mdpo-off": "Pendulum-v1", "pdppo": "ctrlrl/LotSizing-15x5-v0", "td3bc": "Hopper-v5",
       "bc": "Hopper-v5", "a2pr": "Hopper-v5", "odice": "Hopper-v5", "odice-il": "Hopper-v5",
       "orpo": "ctrlrl/Tomato-v0", "ppo-adreg": "ctrlrl/Tomato-v0"}
STEPS = {"ppo": 128, "sac": 100, "td3": 100, "mdpo": 128, "mdpo-off": 100, "pdppo": 128,
         "td3bc": 100, "bc": 100, "a2pr": 100, "odice": 100, "odice-il": 100, "orpo": 512,
         "ppo-adreg": 256}
# the PG family: iterations are whole trajectories (≤ 50 steps here) until ≥ 100 steps
# (Pendulum: fixed-length trajectories, so every iteration takes the same steps and the budgets
# below fall on iteration boundaries; tests/test_npg.py covers discrete envs)
_NPG: dict[str, Any] = {**QUIET, "batch_steps": 100, "horizon": 50, "gamma0": 1e-5,
                        "hidden_sizes": [16, 16], "log_every": 100}
for _algo in ("pg", "npg-momentum", "npg-igt", "n-harpg", "harpg"):
    FAST[_algo], ENV[_algo], STEPS[_algo] = _NPG, "Pendulum-v1", 600
# the average-reward learners: RiverSwim, 50-step blocks (the linear LOOP is in test_loop.py)
for _algo in ("loop", "ucrl2", "random-policy"):
    FAST[_algo] = {**QUIET, "block_steps": 50, "log_every": 50}
    ENV[_algo], STEPS[_algo] = "ctrlrl/RiverSwim-v0", 200

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def offline_dataset() -> Iterator[Path]:
    """`OFFLINE_DATA`: 3000 random-action Hopper-v5 transitions made by `ctrlrl collect`'s code."""
    from ctrlrl.data.collect import collect

    collect("Hopper-v5", "random", OFFLINE_DATA, size=3000, seed=0, progress=False)
    yield OFFLINE_DATA
    shutil.rmtree(OFFLINE_DATA.parent, ignore_errors=True)


@pytest.fixture
def fast() -> dict[str, dict[str, Any]]:
    """Per-algorithm override dicts for tiny, quiet runs (copies; safe to modify)."""
    return {k: dict(v) for k, v in FAST.items()}


@pytest.fixture(autouse=True)
def _restore_torch_state():
    """Algorithms set global torch state (threads, RNG, flushing denormals to zero, which also
    stops hypothesis from drawing floats); keep tests independent of each other."""
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    yield
    torch.set_num_threads(threads)
    torch.set_rng_state(rng)
    torch.set_flush_denormal(False)


def make_algo(algo: str, run_dir: Path, seed: int = 0, total_steps: int | None = None,
              env: str | None = None, **extra: Any):
    """`ctrlrl.make` with the fast settings for `algo`; `extra` overrides any key."""
    import ctrlrl

    overrides = {**FAST[algo], **extra}
    return ctrlrl.make(algo, env or ENV[algo], overrides=overrides, seed=seed,
                       total_steps=total_steps or STEPS[algo], run_dir=str(run_dir))


def read_metrics(run_dir: Path, drop_time: bool = True) -> list[dict[str, Any]]:
    """Rows of a run's metrics.jsonl, without the wall-clock dependent `time/*` keys."""
    rows = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if drop_time:
            row = {k: v for k, v in row.items() if not k.startswith("time/")}
        rows.append(row)
    return rows


def flat_state(algo) -> dict[str, Any]:
    """Every tensor of an algorithm's modules and optimisers, by a flat name."""
    out: dict[str, Any] = {}

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(f"{prefix}.{i}", v)
        elif torch.is_tensor(obj):
            out[prefix] = obj.detach().cpu().clone()
        else:
            out[prefix] = obj

    for name, module in algo.state_modules().items():
        walk(name, module.state_dict())
    return out


def assert_same_state(a, b) -> None:
    sa, sb = flat_state(a), flat_state(b)
    assert sa.keys() == sb.keys()
    assert len(sa) > 0
    for key in sa:
        va, vb = sa[key], sb[key]
        if torch.is_tensor(va):
            assert torch.equal(va, vb), f"{key} differs"
        else:
            assert va == vb, f"{key} differs: {va!r} != {vb!r}"


def run_cli(*args: str, timeout: float = 120, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m ctrlrl.cli ARGS` in a real subprocess (so tracebacks would really show)."""
    return subprocess.run([sys.executable, "-m", "ctrlrl.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd or REPO,
                          env={**os.environ, **(env or {})})


def assert_one_line_error(stderr: str, *needles: str) -> None:
    """A user error: exactly one non-empty stderr line, no traceback, naming `needles`."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"expected one stderr line, got:\n{stderr}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


def arrays_equal(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
