"""`--compile` (torch.compile of the update's loss) is slow to build on CPU: `pytest -m slow`."""

from __future__ import annotations

import math

import pytest
from conftest import STEPS, make_algo


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ppo", "sac", "td3", "mdpo", "mdpo-off"])
def test_compiled_update_trains(algo, tmp_path):
    steps = STEPS[algo]
    eager = make_algo(algo, tmp_path / "eager", total_steps=steps).learn()
    compiled = make_algo(algo, tmp_path / "compiled", total_steps=steps, compile=True).learn()
    assert compiled.step == eager.step and compiled.n_updates == eager.n_updates
    for key, value in compiled.metrics.items():
        assert math.isfinite(float(value)), key
    # the compiled loss is the same function: its first update's critic/value loss is close
    loss_key = "value_loss" if algo in ("ppo", "mdpo") else "critic_loss"
    assert float(compiled.metrics[loss_key]) == pytest.approx(float(eager.metrics[loss_key]),
                                                               rel=0.5)
