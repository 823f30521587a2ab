"""An off-policy or offline learner's training step: its `update`, compiled whole, or replayed from
CUDA graphs (`RunConfig.compile`).

The update contract makes this generic: `update(batch)` takes the sampled minibatch and returns its
metrics as tensors, and does its whole gradient step — losses, backward, clipping, optimiser steps,
target updates — without reading a value back to the host. Then
- `eager`: the training step calls `update`;
- `step`: `torch.compile` of the whole update. The forward pieces between backward calls become
  compiled graphs with compiled backward graphs; fused Adam stays torch's fused kernel (dynamo
  does not trace it). The random draws inside stay eager's (`fallback_random`), so a compiled run
  draws the same numbers as an eager one and a compiled update equals the eager update up to
  floating-point reassociation. Compiled code is guarded on its learner: a process that builds
  many learners of one class compiles each anew, and past torch's recompile limit (8 per
  function) runs them eagerly;
- `graph` (CUDA): each update is one CUDA graph replay instead of ~150 kernel launches. The
  sampled batch is copied into static input buffers the graph reads; the metrics come back in one
  static output tensor, cloned after each replay so a metric kept from an earlier step keeps its
  value. Adam runs capturable (its step counts on the device); its learning rate is a constant of
  the graph, so a changed one (any optimiser setting) has the graphs captured anew. An update
  whose Python branches depend on more than the batch and the config names its branch with
  `update_variant()` (TD3's delayed actor step): one graph is captured per variant.
  The first `GRAPH_WARMUP` updates of a variant run eagerly on a side stream (as capture requires,
  and they are real updates: nothing is computed twice); the next is captured and replayed. Random
  draws inside a graph advance the device generator's offset on every replay (torch registers the
  default generator with each capture), so replays draw fresh numbers, in eager's order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator
from typing import Protocol

import torch

from ctrlrl.core.buffers import Batch
from ctrlrl.core.config import COMPILE_MODES
from ctrlrl.core.errors import UserError
from ctrlrl.core.logger import Metrics

GRAPH_WARMUP = 3  # eager updates of a variant before its capture

class Learner(Protocol):
    device: torch.device

    def update(self, batch: Batch) -> Metrics: ...

    def update_variant(self) -> Hashable: ...

    def state_modules(self) -> dict[str, torch.nn.Module | torch.optim.Optimizer]: ...


def training_step(learner: Learner, mode: str) -> Callable[[Batch], Metrics]:
    """The function the training loop calls with each sampled batch, for compile mode `mode`."""
    if mode == "eager":
        return lambda batch: learner.update(batch)  # looked up per call, as a direct call would
    if mode == "step":
        return torch.compile(learner.update, options={"fallback_random": True})
    if mode == "graph":
        if learner.device.type != "cuda":
            raise UserError(f"compile=graph captures CUDA graphs, and this run computes on "
                            f"{learner.device}; use compile=step there, or --device cuda")
        return GraphedStep(learner)
    raise UserError(f"setting compile={mode!r} is not known; use one of {', '.join(COMPILE_MODES)}")


@contextlib.contextmanager
def capturable(optimizers: list[torch.optim.Optimizer], unfused_only: bool = False
               ) -> Iterator[None]:
    """Optimisers in capturable mode (state and step counts on the device, no host reads) while
    the block runs; their own setting back afterwards, so a checkpoint loads on any device.
    `unfused_only`: only the groups that need it to keep their step counts on the device (fused
    Adam keeps them there anyway, and warns when capturable runs outside a capture)."""
    groups = [group for opt in optimizers for group in opt.param_groups
              if not (unfused_only and group.get("fused"))]
    before = [group["capturable"] for group in groups]
    for group in groups:
        group["capturable"] = True
    try:
        yield
    finally:
        for group, flag in zip(groups, before, strict=True):
            group["capturable"] = flag


class CapturedUpdate:
    """One variant's graph: replaying it runs the update on the static batch."""

    def __init__(self, graph: torch.cuda.CUDAGraph, packed: torch.Tensor, layout: list[tuple],
                 constants: Metrics):
        self.graph, self.packed, self.layout, self.constants = graph, packed, layout, constants

    def __call__(self) -> Metrics:
        self.graph.replay()
        values = self.packed.clone().split([n for _, n, _ in self.layout])
        out = dict(self.constants)
        for (key, _, shape), value in zip(self.layout, values, strict=True):
            out[key] = value.view(shape)
        return out


class GraphedStep:
    """`update` replayed from CUDA graphs, one per `update_variant()` (module docstring)."""

    def __init__(self, learner: Learner):
        self.learner = learner
        self.optimizers = [m for m in learner.state_modules().values()
                           if isinstance(m, torch.optim.Optimizer)]
        self.static: Batch | None = None  # the batch every graph reads
        self.captured: dict[Hashable, CapturedUpdate] = {}
        self.eager_calls: dict[Hashable, int] = {}
        self.side_stream = torch.cuda.Stream(learner.device)
        self.settings = self.optimiser_settings()

    def optimiser_settings(self) -> list[tuple]:
        """The optimisers' hyperparameters, which a graph holds as constants."""
        return [(g["lr"], g.get("betas"), g.get("eps"), g.get("weight_decay"))
                for opt in self.optimizers for g in opt.param_groups]

    def __call__(self, batch: Batch) -> Metrics:
        settings = self.optimiser_settings()
        if settings != self.settings:  # e.g. a changed learning rate: capture anew
            self.captured.clear()
            self.eager_calls.clear()
            self.settings = settings
        variant = self.learner.update_variant()
        if variant not in self.captured:
            calls = self.eager_calls.get(variant, 0)
            if calls < GRAPH_WARMUP:
                self.eager_calls[variant] = calls + 1
                return self.eager(batch)
        self.load(batch)
        if variant not in self.captured:
            self.captured[variant] = self.capture()
        return self.captured[variant]()

    def eager(self, batch: Batch) -> Metrics:
        """One update run eagerly on the side stream (the warm-up capture needs: lazy state such
        as Adam's moments and cuBLAS workspaces exists before the graph records)."""
        main = torch.cuda.current_stream(self.learner.device)
        self.side_stream.wait_stream(main)
        with torch.cuda.stream(self.side_stream), capturable(self.optimizers, unfused_only=True):
            metrics = self.learner.update(batch)
        main.wait_stream(self.side_stream)
        return metrics

    def load(self, batch: Batch) -> None:
        if self.static is None:
            self.static = Batch(*(torch.empty_like(t) for t in batch))
        torch._foreach_copy_(list(self.static), list(batch))

    def capture(self) -> CapturedUpdate:
        """Record one update on the static batch; nothing runs until the first replay."""
        graph = torch.cuda.CUDAGraph()
        with capturable(self.optimizers), torch.cuda.graph(graph):
            metrics = self.learner.update(self.static)
            tensors = {k: v for k, v in metrics.items() if torch.is_tensor(v)}
            packed = (torch.cat([v.detach().float().reshape(-1) for v in tensors.values()])
                      if tensors else torch.zeros(0, device=self.learner.device))
        layout = [(k, v.numel(), v.shape) for k, v in tensors.items()]
        constants = {k: v for k, v in metrics.items() if not torch.is_tensor(v)}
        return CapturedUpdate(graph, packed, layout, constants)
