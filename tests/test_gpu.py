"""CUDA checks (`pytest -m gpu`, skipped without a GPU; `benchmarks/gpu_check.sh` runs them).

Every algorithm trains with its modules, optimiser state and buffers on the device, and a
checkpoint written on one device loads on the other and acts the same there.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FAST, make_algo

import ctrlrl

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# tabular learners keep numpy tables: no tensors to place
TORCH_ALGOS = [a for a in FAST if a not in ("loop", "ucrl2")]


def tensors(obj, prefix: str = ""):
    """(name, tensor) for every tensor reachable through dicts, lists and object attributes."""
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from tensors(v, f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors(v, f"{prefix}.{i}")


@pytest.mark.parametrize("algo", TORCH_ALGOS)
def test_trains_with_every_tensor_on_the_device(algo, tmp_path):
    learner = make_algo(algo, tmp_path, device="cuda")
    learner.learn()
    placed = 0
    for name, module in learner.state_modules().items():
        state = module.state_dict()
        for key, t in tensors(state, name):
            # Adam keeps its step counter on the CPU unless capturable: that is by design
            if key.endswith(".step") and t.dim() == 0:
                continue
            assert t.is_cuda, f"{algo}: {key} is on {t.device}"
            placed += 1
    for buffer in ("replay", "rollout", "buffer"):
        if getattr(learner, buffer, None) is not None:
            for key, t in tensors(vars(getattr(learner, buffer)), buffer):
                assert t.is_cuda, f"{algo}: {key} is on {t.device}"
    assert placed > 0
    learner.close()


@pytest.mark.parametrize("algo", ["ppo", "sac", "td3", "td3bc", "a2pr", "odice"])
@pytest.mark.parametrize("train_on", ["cuda", "cpu"])
def test_checkpoint_moves_between_devices(algo, train_on, tmp_path):
    learner = make_algo(algo, tmp_path / "run", device=train_on)
    learner.learn()
    path = learner.save(tmp_path / "ckpt.pt")
    other = "cpu" if train_on == "cuda" else "cuda"
    moved = ctrlrl.load(path, device=other)
    obs = np.stack([learner.env.observation_space.sample() for _ in range(8)]).astype(np.float32)
    a, b = learner.predict(obs), moved.predict(obs)
    assert np.allclose(a, b, atol=1e-4), f"{algo} {train_on}->{other}: {np.abs(a - b).max()}"
    learner.close()
    moved.close()
