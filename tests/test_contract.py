"""The update contract, for every registered algorithm: an update is handed its data and returns
its metrics (tensors or floats), writes no metrics into the algorithm itself, and the training
loop keeps what it returns."""

from __future__ import annotations

import pytest
import torch
from conftest import make_algo

from ctrlrl.api import algo_class, list_algos

# LOOP, UCRL2 and random-policy plan inside their step loop: no update to hand data to
UPDATERS = [name for name in list_algos() if hasattr(algo_class(name), "update")]


@pytest.mark.parametrize("algo", UPDATERS)
def test_the_loop_keeps_what_update_returns(algo, tmp_path, monkeypatch):
    learner = make_algo(algo, tmp_path)
    real, returned = learner.update, []

    def spy(*args):
        kept = learner.metrics
        before = dict(kept)
        out = real(*args)
        # no side channel: the update left the algorithm's metrics as they were
        assert learner.metrics is kept and learner.metrics.keys() == before.keys()
        assert all(learner.metrics[k] is v for k, v in before.items())
        returned.append(out)
        return out

    monkeypatch.setattr(learner, "update", spy)
    learner.learn()
    assert returned, "no update ran"
    last = returned[-1]
    assert last and all(isinstance(v, float) or (torch.is_tensor(v) and v.dim() == 0)
                        for v in last.values()), last
    assert all(learner.metrics[k] is v for k, v in last.items())  # what the log reads
    learner.close()
