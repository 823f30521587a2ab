"""CUDA checks (`pytest -m gpu`, skipped without a GPU; `benchmarks/gpu_check.sh` runs them).

Every algorithm trains with its modules, optimiser state and buffers on the device; a checkpoint
written on one device loads on the other and acts the same there; an off-policy or offline update
never makes the host wait for the device, and its compiled and graphed forms compute what the
eager update computes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FAST, make_algo
from test_compile import OFF_POLICY, assert_same_training, tiny_learner, train_steps

import ctrlrl
from ctrlrl.algos import REGISTRY
from ctrlrl.core.compiled_step import GRAPH_WARMUP

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# tabular learners keep numpy tables: no tensors to place
TORCH_ALGOS = [a for a in FAST if REGISTRY[a].kind != "average-reward"]  # not numpy's


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
    for name, module in moved.state_modules().items():  # weights and optimiser state moved
        for key, t in tensors(module.state_dict(), name):
            if not (key.endswith(".step") and t.dim() == 0):  # see above: Adam's step counter
                assert t.is_cuda == (other == "cuda"), f"{algo}: {key} is on {t.device}"
    assert moved.run.precision == learner.run.precision  # a run acts in what it trained in
    obs = np.stack([learner.env.observation_space.sample() for _ in range(8)]).astype(np.float32)
    a, b = learner.predict(obs), moved.predict(obs)
    # `auto` resolves TD3+BC's and A2PR's bf16 default on a device with fast bf16; the CPU's and
    # CUDA's bf16 kernels round differently, by up to 1.4e-3 seen on an H200 beside a Xeon
    atol = 1e-4 if learner.run.precision == "fp32" else 1e-2
    assert np.allclose(a, b, atol=atol), f"{algo} {train_on}->{other}: {np.abs(a - b).max()}"
    learner.close()
    moved.close()


@pytest.mark.parametrize("algo", OFF_POLICY)
def test_update_makes_no_host_sync(algo, tmp_path):
    """Sampling and the whole update queue work without waiting for it (torch's sync debug mode
    raises on `.item()`, `.cpu()`, data-dependent shapes, ...)."""
    extra = {"old_update_every": 2} if algo == "mdpo-off" else {}
    learner = tiny_learner(algo, tmp_path, device="cuda", **extra)
    train_steps(learner, 1)  # lazy initialisation (Adam's state, cuBLAS) happens once, outside
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        train_steps(learner, 4)  # both of TD3's and MDPO-off's branches
    finally:
        torch.cuda.set_sync_debug_mode("default")
    learner.close()


@pytest.mark.parametrize("algo", OFF_POLICY)
def test_graphed_update_equals_eager(algo, tmp_path):
    """Eager warm-up, capture and replays of every branch compute the eager updates, random draws
    included (the generator's offsets advance with each replay)."""
    extra = {"old_update_every": 2} if algo == "mdpo-off" else {}
    eager = tiny_learner(algo, tmp_path, device="cuda", **extra)
    graphed = tiny_learner(algo, tmp_path, device="cuda", compile="graph", **extra)
    assert_same_training(eager, graphed, 2 * GRAPH_WARMUP + 6, rtol=1e-4, atol=1e-5)
    assert len(graphed._train_step.captured) == (2 if algo in ("td3", "td3bc", "a2pr", "mdpo-off")
                                                 else 1)
    eager.close()
    graphed.close()


def test_graphs_follow_a_changed_learning_rate(tmp_path):
    """A graph holds the learning rate as a constant: a new rate has the update captured anew."""
    eager = tiny_learner("sac", tmp_path, device="cuda")
    graphed = tiny_learner("sac", tmp_path, device="cuda", compile="graph")
    assert_same_training(eager, graphed, GRAPH_WARMUP + 3, rtol=1e-4, atol=1e-5)
    for learner in (eager, graphed):
        learner.critic_opt.param_groups[0]["lr"] = 1e-2
    assert_same_training(eager, graphed, GRAPH_WARMUP + 3, rtol=1e-4, atol=1e-5)
    eager.close()
    graphed.close()


@pytest.mark.parametrize("algo", ["td3"])
def test_compiled_step_equals_eager_on_cuda(algo, tmp_path):
    eager = tiny_learner(algo, tmp_path, device="cuda")
    compiled = tiny_learner(algo, tmp_path, device="cuda", compile="step")
    assert_same_training(eager, compiled, 4, rtol=1e-4, atol=1e-5)
    eager.close()
    compiled.close()


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_graph_trained_checkpoint_loads_on_cpu(algo, tmp_path):
    """A run trained from CUDA graphs leaves its optimisers as it found them (not capturable), so
    its checkpoint loads and acts on the CPU, with every tensor there."""
    learner = make_algo(algo, tmp_path / "run", device="cuda", compile="graph")
    learner.learn()
    path = learner.save(tmp_path / "ckpt.pt")
    moved = ctrlrl.load(path, device="cpu")
    for name, module in moved.state_modules().items():
        if isinstance(module, torch.optim.Optimizer):
            assert not any(g["capturable"] for g in module.param_groups), name
        for key, t in tensors(module.state_dict(), name):
            assert not t.is_cuda, f"{algo}: {key} is on {t.device}"
    obs = np.stack([learner.env.observation_space.sample() for _ in range(8)]).astype(np.float32)
    assert np.allclose(learner.predict(obs), moved.predict(obs), atol=1e-4)
    learner.close()
    moved.close()
