"""`compile`: updates run eagerly, compiled whole (`step`), or replayed from CUDA graphs (`graph`,
tests/test_gpu.py), and an off-policy or offline update never reads a value back to the host.

torch.compile takes ~15 s per tiny learner on CPU: TD3 runs in the default suite, the others
under `pytest -m slow`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
from conftest import ENV, FAST, OFFLINE_DATA, QUIET, STEPS, assert_same_state, make_algo
from torch.utils._python_dispatch import TorchDispatchMode

import ctrlrl
from ctrlrl import api
from ctrlrl.core.compiled_step import CapturedUpdate, capturable
from ctrlrl.core.errors import UserError
from ctrlrl.core.nets import adam

aten = torch.ops.aten

# the learners trained by the off-policy and offline loops, whose updates `compile` acts on
OFF_POLICY = [a for a in api.list_algos()
              if api.algo_class(a).kind in ("off-policy", "offline")]
WHOLE_STEP = [a for a in OFF_POLICY if "step" in api.algo_class(a).compile_modes]


def tiny_learner(algo: str, tmp_path, **extra: Any):
    """`algo` with one-layer nets of 16 units, ready for updates: the replay buffer past
    `learning_starts`, or the test dataset loaded."""
    cls = api.algo_class(algo)
    overrides: dict[str, Any] = {**QUIET, **FAST.get(algo, {}), "checkpoint_every": 0}
    widths = [f.name for f in dataclasses.fields(cls.Config) if f.name.endswith("hidden_sizes")]
    overrides |= {name: [16] for name in widths}
    offline = cls.kind == "offline"
    if offline:
        overrides |= {"dataset": str(OFFLINE_DATA), "batch_size": 32}
    else:
        overrides |= {"learning_starts": 40, "buffer_size": 1000, "batch_size": 32}
    overrides |= extra
    run_dir = tmp_path / f"{algo}-{overrides.get('compile', 'eager')}"
    learner = ctrlrl.make(algo, ENV.get(algo, "Hopper-v5"), overrides=overrides, seed=0,
                          total_steps=10_000, run_dir=str(run_dir))
    if offline:
        learner.load_dataset()
    else:
        while learner.step < learner.cfg.learning_starts:
            learner.train_iteration()
    return learner


def train_steps(learner, n: int) -> list[dict[str, Any]]:
    """`n` training steps as the loop takes them (sample, step, count); their metrics."""
    out = []
    for _ in range(n):
        out.append(learner.train_step(learner.replay.sample(learner.cfg.batch_size)))
        learner.n_updates += 1
    return out


class HostReads(TorchDispatchMode):
    """Records the operations that make a CUDA host wait for the device: reading a value
    (`.item()`, `float(t)`, `if t:`), data-dependent shapes (nonzero, boolean-mask indexing)."""

    SYNCING = frozenset({aten._local_scalar_dense.default, aten.nonzero.default,
                         aten.masked_select.default, aten.unique_consecutive.default,
                         aten._unique2.default})

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        masked = func is aten.index.Tensor and any(
            torch.is_tensor(i) and i.dtype == torch.bool for i in args[1])
        if func in self.SYNCING or masked:
            self.seen.append(str(func))
        return func(*args, **kwargs)


@pytest.mark.parametrize("algo", OFF_POLICY)
def test_update_reads_nothing_back_to_the_host(algo, tmp_path, monkeypatch):
    """On CPU the reads cost little; on CUDA each one stalls the launch queue and makes a graph
    capture fail. Sampling from the replay buffer counts as part of the step."""
    extra = {"old_update_every": 2} if algo == "mdpo-off" else {}  # reach its refresh branch
    learner = tiny_learner(algo, tmp_path, **extra)
    train_steps(learner, 1)  # lazy initialisation (Adam's state) happens once, outside
    spy = HostReads()
    for name in ("cpu", "numpy", "tolist"):  # device-to-host copies (no-ops on CPU tensors)
        method = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda t, *a, _n=name, _m=method, **k:
                            spy.seen.append(f"Tensor.{_n}") or _m(t, *a, **k))
    with spy:
        metrics = train_steps(learner, 4)  # both of TD3's and MDPO-off's branches
    monkeypatch.undo()
    assert spy.seen == [], f"{algo}'s update reads back to the host: {sorted(set(spy.seen))}"
    assert all(torch.is_tensor(v) or isinstance(v, float) for m in metrics for v in m.values())
    learner.close()


def assert_same_training(eager, other, steps: int, rtol: float, atol: float) -> None:
    """`steps` training steps of two learners built alike, each from the same random state, end
    in close weights and metrics."""
    torch.manual_seed(1)
    eager_metrics = train_steps(eager, steps)
    torch.manual_seed(1)
    for a, b in zip(eager_metrics, train_steps(other, steps), strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert float(a[key]) == pytest.approx(float(b[key]), rel=rtol, abs=atol), key
    for name, module in eager.state_modules().items():
        mine = module.state_dict()
        theirs = other.state_modules()[name].state_dict()
        if isinstance(module, torch.nn.Module):
            for key, value in mine.items():
                torch.testing.assert_close(theirs[key], value, rtol=rtol, atol=atol,
                                           msg=f"{name}.{key}")


@pytest.mark.parametrize("algo", [pytest.param(a, marks=() if a == "td3" else pytest.mark.slow)
                                  for a in WHOLE_STEP])
def test_compiled_step_equals_eager(algo, tmp_path):
    """The whole update compiled computes the eager update, random draws included, over both of
    TD3's branches (critic only; critic, actor and targets)."""
    eager = tiny_learner(algo, tmp_path)
    compiled = tiny_learner(algo, tmp_path, compile="step")
    assert_same_training(eager, compiled, 4, rtol=1e-4, atol=1e-5)
    eager.close()
    compiled.close()


def test_graph_metrics_unpack_and_outlive_the_next_replay():
    """A replay rewrites the graph's one output tensor; each call hands out its own copy."""
    packed = torch.tensor([1.0, 2.0, 3.0, 4.0])

    class Graph:  # stands in for a CUDA graph: a replay recomputes the static output in place
        def replay(self):
            packed.add_(10.0)

    layout = [("loss", 1, torch.Size([])), ("q", 3, torch.Size([3]))]
    replay = CapturedUpdate(Graph(), packed, layout, {"step_size": 0.5})
    first, second = replay(), replay()
    assert float(first["loss"]) == 11.0 and first["q"].tolist() == [12.0, 13.0, 14.0]
    assert float(second["loss"]) == 21.0 and first["step_size"] == second["step_size"] == 0.5


def test_optimisers_are_capturable_only_inside_the_block():
    """Capture needs capturable optimisers; checkpoints must not keep the flag (capturable Adam
    refuses to step on the CPU)."""
    fused = adam([torch.nn.Parameter(torch.zeros(2))], 1e-3)
    plain = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], 1e-3)
    with capturable([fused, plain]):
        assert fused.param_groups[0]["capturable"] and plain.param_groups[0]["capturable"]
    with capturable([fused, plain], unfused_only=True):  # fused Adam keeps its steps on the device
        assert not fused.param_groups[0]["capturable"] and plain.param_groups[0]["capturable"]
    assert not any(o.param_groups[0]["capturable"] for o in (fused, plain))
    assert not fused.state_dict()["param_groups"][0]["capturable"]


@pytest.mark.slow
def test_compiled_run_resumes_exactly(tmp_path):
    """A run compiled whole, stopped and resumed, ends where the straight compiled run does."""
    from test_reproducibility import _straight_and_resumed

    straight, resumed = _straight_and_resumed("td3", tmp_path, {"compile": "step"})
    assert resumed.run.compile == "step"
    assert_same_state(straight, resumed)
    straight.close()
    resumed.close()


@pytest.mark.parametrize(("algo", "mode", "needles"), [
    ("td3", "graph", ("compile=graph", "computes on cpu", "--device cuda")),
    ("ppo", "graph", ("compile='graph'", "ppo runs compile=eager | step")),
    ("loop", "step", ("compile='step'", "eager")),
])
def test_a_compile_mode_that_cannot_run_is_refused(algo, mode, needles):
    env = ENV.get(algo, "ctrlrl/RiverSwim-v0")
    with pytest.raises(UserError) as refusal:
        ctrlrl.make(algo, env, overrides={**QUIET, "compile": mode})
    for needle in needles:
        assert needle in str(refusal.value)


def test_a_graph_run_is_refused_off_cuda_however_it_was_configured():
    """Not only a typed option: a config read back from a checkpoint is checked too."""
    import gymnasium as gym

    from ctrlrl.algos.td3 import TD3, TD3Config
    from ctrlrl.core.config import RunConfig

    run = RunConfig(env="Pendulum-v1", device="cpu", compile="graph")
    problem = TD3.incompatibility(gym.make("Pendulum-v1"), run, TD3Config())
    assert problem is not None and "--device cuda" in problem


def test_an_unknown_compile_mode_is_refused():
    with pytest.raises(UserError, match="compile='fast' is not known; use one of eager, step"):
        ctrlrl.make("td3", "Pendulum-v1", overrides={**QUIET, "compile": "fast"})



@pytest.mark.parametrize("stored, mode", [(False, "eager"), (True, "step")])
def test_a_run_config_from_the_compile_switch_era_still_reads(stored, mode):
    from ctrlrl.core.config import RunConfig, from_dict

    run = from_dict(RunConfig, {"env": "Pendulum-v1", "compile": stored}, "config.yaml")
    assert run.compile == mode

@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ppo", "mdpo"])
def test_compiled_on_policy_update_trains(algo, tmp_path):
    steps = STEPS[algo]
    eager = make_algo(algo, tmp_path / "eager", total_steps=steps).learn()
    compiled = make_algo(algo, tmp_path / "compiled", total_steps=steps, compile="step").learn()
    assert compiled.step == eager.step and compiled.n_updates == eager.n_updates
    for key, value in compiled.metrics.items():
        assert math.isfinite(float(value)), key
    assert float(compiled.metrics["value_loss"]) == pytest.approx(
        float(eager.metrics["value_loss"]), rel=0.5)
