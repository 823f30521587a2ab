"""Mixed precision (`precision: bf16`): hidden layers in bfloat16; float32 weights, optimiser
state, output layers and losses; same-seed determinism and exact resume as in float32."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    REPO,
    assert_one_line_error,
    assert_same_state,
    make_algo,
    read_metrics,
    run_cli,
)

from ctrlrl import api
from ctrlrl.core import config
from ctrlrl.core.config import read_run_config
from ctrlrl.core.errors import UserError
from ctrlrl.core.nets import MLP, QEnsemble, set_compute_dtype
from ctrlrl.core.signals import TrainingInterrupted, request_stop

BF16 = {"precision": "bf16"}
OFF_POLICY = ["sac", "td3", "td3bc"]


def bf16_hidden(x: torch.Tensor, weights, biases) -> torch.Tensor:
    """ReLU hidden layers by hand in bfloat16, the result in float32."""
    x = x.bfloat16()
    for w, b in zip(weights, biases, strict=True):
        x = F.relu(F.linear(x, w.bfloat16(), b.bfloat16()))
    return x.float()


def test_mlp_hidden_layers_run_in_bf16_and_its_output_layer_in_fp32():
    torch.manual_seed(0)
    net = MLP(5, [16, 16], 3)
    set_compute_dtype(net, torch.bfloat16)
    x = torch.randn(64, 5)
    *hidden, head = net.layers
    h = bf16_hidden(x, [m.weight for m in hidden], [m.bias for m in hidden])
    out = net(x)
    assert out.dtype == torch.float32
    assert torch.equal(out, F.linear(h, head.weight, head.bias))  # an fp32 head, exactly
    # a bf16 head would round the output to bfloat16: this comparison is what tells them apart
    bf16_head = F.linear(h.bfloat16(), head.weight.bfloat16(), head.bias.bfloat16()).float()
    assert not torch.equal(out, bf16_head)
    fp32 = copy.deepcopy(net)
    set_compute_dtype(fp32, torch.float32)
    assert not torch.equal(out, fp32(x))  # and bf16 is in effect


def test_q_ensemble_hidden_layers_run_in_bf16_and_its_head_in_fp32():
    torch.manual_seed(0)
    q = QEnsemble(4, 2, [16, 16], n=2)
    set_compute_dtype(q, torch.bfloat16)
    obs, act = torch.randn(64, 4), torch.randn(64, 2)
    out = q(obs, act)
    assert out.dtype == torch.float32 and out.shape == (2, 64)
    x = torch.cat([obs, act], -1)
    for i in range(2):
        ws = [w[i].T for w in q.weights[:-1]]
        bs = [b[i, 0] for b in q.biases[:-1]]
        h = bf16_hidden(x, ws, bs)
        fp32_head = h @ q.weights[-1][i, :, 0] + q.biases[-1][i, 0, 0]
        bf16_head = (h.bfloat16() @ q.weights[-1][i, :, 0].bfloat16()).float() + q.biases[-1][i, 0, 0]
        assert torch.allclose(out[i], fp32_head, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(out[i], bf16_head, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algo", OFF_POLICY)
def test_bf16_weights_optimiser_state_and_losses_stay_fp32(algo, tmp_path):
    a = make_algo(algo, tmp_path, **BF16).learn()
    assert a.run.precision == "bf16"
    for name, module in a.state_modules().items():
        if isinstance(module, torch.nn.Module):
            for p in module.parameters():
                assert p.dtype == torch.float32, name
        else:  # an optimiser
            for state in module.state.values():
                for value in state.values():
                    assert value.dtype == torch.float32, name
    losses = {k: v for k, v in a.metrics.items() if k.endswith("loss")}
    assert losses and all(torch.as_tensor(v).dtype == torch.float32 for v in losses.values())
    # the networks did compute in bf16: the same seed in fp32 ends elsewhere
    b = make_algo(algo, tmp_path / "fp32", precision="fp32").learn()
    with pytest.raises(AssertionError):
        assert_same_state(a, b)
    a.close()
    b.close()


@pytest.mark.parametrize("algo", [*OFF_POLICY, "a2pr", "odice"])  # + the VAE, LayerNorm, Gaussian
def test_bf16_same_seed_same_run(algo, tmp_path):
    a = make_algo(algo, tmp_path / "a", seed=3, **BF16).learn()
    b = make_algo(algo, tmp_path / "b", seed=3, **BF16).learn()
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")
    assert_same_state(a, b)
    a.close()
    b.close()


@pytest.mark.parametrize("algo", OFF_POLICY)
def test_bf16_resume_equals_straight_run(algo, tmp_path):
    straight = make_algo(algo, tmp_path / "straight", seed=1, total_steps=200, **BF16).learn()
    first = make_algo(algo, tmp_path / "split", seed=1, total_steps=200, checkpoint_every=37,
                      **BF16)
    iteration = first.train_iteration

    def stop_at_100() -> None:
        iteration()
        if first.step >= 100:
            request_stop()

    first.train_iteration = stop_at_100
    with pytest.raises(TrainingInterrupted):
        first.learn()
    first.close()
    resumed = api.resume(tmp_path / "split")
    assert resumed.run.precision == "bf16"  # the checkpoint's precision, kept
    assert read_run_config(tmp_path / "split")["run"]["precision"] == "bf16"
    resumed.learn()
    assert read_metrics(tmp_path / "straight") == read_metrics(tmp_path / "split")
    assert_same_state(straight, resumed)
    straight.close()
    resumed.close()
    with pytest.raises(UserError, match="precision: run has 'bf16'"):
        api.resume(tmp_path / "split", precision="fp32", total_steps=300)


def test_auto_is_the_algorithms_default_and_recorded_resolved(tmp_path, monkeypatch):
    a = make_algo("td3", tmp_path / "a")
    assert a.default_precision == "fp32" and a.run.precision == "fp32"
    a.close()
    monkeypatch.setattr(type(a), "default_precision", "bf16")
    monkeypatch.setattr(config, "bf16_is_fast", lambda device: True)
    b = make_algo("td3", tmp_path / "b")
    assert b.run.precision == "bf16"
    b.close()
    monkeypatch.setattr(config, "bf16_is_fast", lambda device: False)  # auto never picks a slow bf16
    c = make_algo("td3", tmp_path / "c")
    assert c.run.precision == "fp32"
    c.close()


QUALITY_NAMES = {"SAC": "sac", "TD3": "td3", "TD3+BC": "td3bc", "A2PR": "a2pr", "O-DICE": "odice"}


def test_defaults_are_what_the_quality_table_chose():
    """docs/speed.md's bf16-vs-fp32 table names each algorithm's default; the classes agree, and no
    algorithm defaults to bf16 without rows there."""
    text = (REPO / "docs" / "speed.md").read_text()
    table = text[text.index("### Does bf16 learn as well?"):].split("\n\n| group |")[1]
    chosen: dict[str, set[str]] = {}
    for line in table.split("\n\n")[0].splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        chosen.setdefault(QUALITY_NAMES[cells[1]], set()).add(cells[-1].strip("*").split()[0])
    assert set(chosen) == set(QUALITY_NAMES.values())
    for name in api.list_algos():
        default = api.algo_class(name).default_precision
        assert chosen.get(name, {"fp32"}) == {default}, name


def test_bf16_where_it_is_slow_runs_with_a_one_line_note(monkeypatch, capsys):
    monkeypatch.setattr(config, "bf16_is_fast", lambda device: False)
    assert config.resolve_precision("bf16", "fp32", torch.device("cpu")) == "bf16"
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "precision=fp32 is faster here" in err
    assert config.resolve_precision("fp32", "bf16", torch.device("cpu")) == "fp32"
    assert capsys.readouterr().err == ""


def test_unknown_precision_is_one_line(tmp_path):
    with pytest.raises(UserError, match="precision='fp16' is not known; use one of auto, fp32, bf16"):
        make_algo("td3", tmp_path, precision="fp16")
    out = run_cli("train", "td3", "--env", "Pendulum-v1", "--total-steps", "10",
                  "--set", "precision=fp16", "--run-dir", str(tmp_path / "cli"))
    assert out.returncode != 0
    assert_one_line_error(out.stderr, "precision='fp16'")


def test_on_policy_bf16_acts_with_the_networks_it_learns_with(tmp_path):
    """PPO in bf16 collects with its torch modules, not the float32 NumPy copy, so the rollout's
    log-probabilities are the learning policy's; and it repeats itself for a seed."""
    fp32 = make_algo("ppo", tmp_path / "fp32", precision="fp32")
    assert fp32.acting is not None
    fp32.close()
    a = make_algo("ppo", tmp_path / "a", seed=2, **BF16)
    assert a.acting is None
    a.learn()
    b = make_algo("ppo", tmp_path / "b", seed=2, **BF16).learn()
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")
    assert_same_state(a, b)
    a.close()
    b.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("algo", OFF_POLICY)
def test_bf16_on_cuda_keeps_fp32_weights_and_lets_fp32_matmuls_use_tf32(algo, tmp_path):
    a = make_algo(algo, tmp_path / "bf16", device="cuda", **BF16).learn()
    assert a.run.precision == "bf16"
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    params = [p for m in a.state_modules().values() if isinstance(m, torch.nn.Module)
              for p in m.parameters()]
    assert params and all(p.is_cuda and p.dtype == torch.float32 for p in params)
    a.close()
    b = make_algo(algo, tmp_path / "fp32", device="cuda", precision="fp32")
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"  # fp32 means IEEE float32
    b.close()
