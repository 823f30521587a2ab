"""TD3+BC (Fujimoto & Gu, NeurIPS 2021) and behaviour cloning: the offline baselines.

TD3+BC is TD3's learner (twin critics, target smoothing, delayed actor) on a fixed dataset, whose
actor also regresses onto the dataset's actions:

    L_actor = −λ · mean Q1(s, π(s)) + mean (π(s) − a)²,   λ = α / mean|Q1(s, π(s))| (no gradient),

with α = 2.5 and states standardised by the dataset's mean and std + 1e-3 (the paper's policy
objective and state normalisation; the authors' code, sfujim/TD3_BC `TD3_BC.py` `TD3_BC.train`
for the loss with Q1 and the detached λ, `utils.py` `normalize_states` for the population
std + 1e-3). Defaults are the paper's: Adam 3e-4, batch 256, 256-256 ReLU, γ 0.99, τ 0.005,
policy noise 0.2 clipped at 0.5, actor every 2 critic steps, 1M gradient steps.

`bc` is the deterministic behaviour cloning of the TD3+BC paper: the same actor, mean squared error
to the dataset's actions, the same state normalisation. `expert_trajectory` restricts it to one
episode of the dataset: behaviour cloning on the demonstration `odice-il` imitates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ctrlrl.algos.base import Metrics
from ctrlrl.algos.off_policy import OfflineAlgorithm
from ctrlrl.algos.td3 import TD3, TD3LearnerConfig
from ctrlrl.core.buffers import Batch
from ctrlrl.core.config import check_ranges
from ctrlrl.core.nets import DeterministicPolicy, FlatParams, adam

if TYPE_CHECKING:
    from ctrlrl.data import Dataset


@dataclass
class TD3BCConfig(TD3LearnerConfig):
    alpha: float = 2.5  # α in λ = α / mean|Q1(s, π(s))|: weight of the Q term against behaviour cloning
    normalize_states: bool = True  # standardise states by the dataset's mean and std + 1e-3
    hidden_sizes: tuple[int, ...] = (256, 256)  # hidden layer widths of the actor and of each critic

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, non_negative=("alpha",), widths=("hidden_sizes",))


class TD3BC(OfflineAlgorithm, TD3):
    """TD3's networks and update (`TD3.build`, `TD3.update`) with the offline loop and this actor loss."""

    # bf16 learnt as well as fp32 on generated hopper-medium (5 seeds; docs/speed.md), 2.2x faster
    default_precision = "bf16"

    name = "td3bc"
    summary = "TD3+BC: TD3 with a behaviour-cloning term in the actor loss (Fujimoto & Gu 2021)"
    Config = TD3BCConfig

    def actor_loss(self, b: Batch) -> tuple[torch.Tensor, Metrics]:
        """The loss above; diagnostics: its behaviour-cloning term and λ."""
        action = self.actor(b.obs)
        q = self.critic(b.obs, action, detach_params=True)[0]
        lam = self.cfg.alpha / q.abs().mean().detach()
        bc_loss = F.mse_loss(action, b.actions)
        return -lam * q.mean() + bc_loss, {"bc_loss": bc_loss.detach(), "lambda": lam}


@dataclass
class BCConfig:
    batch_size: int = 256  # minibatch size
    learning_rate: float = 3e-4  # Adam step size of the actor
    normalize_states: bool = True  # standardise states by the dataset's mean and std + 1e-3
    hidden_sizes: tuple[int, ...] = (256, 256)  # hidden layer widths of the actor
    # learn from one episode of the dataset (0-based index), as odice-il does; -1: every transition
    expert_trajectory: int = -1

    def __post_init__(self) -> None:
        check_ranges(self, positive=("batch_size", "learning_rate"), widths=("hidden_sizes",),
                     episode_index=("expert_trajectory",))


class BC(OfflineAlgorithm):
    name = "bc"
    summary = "behaviour cloning: the actor regresses onto the dataset's actions"
    Config = BCConfig

    def build(self) -> None:
        self.build_replay()
        self.actor = DeterministicPolicy(self.obs_dim, self.act_dim, self.cfg.hidden_sizes).to(self.device)
        self.actor_flat = FlatParams(self.actor)
        self.actor_opt = adam([self.actor_flat.param], self.cfg.learning_rate)

    def state_modules(self):
        return {"actor": self.actor, "actor_opt": self.actor_opt, "obs_stats": self.obs_stats}

    def prepare_dataset(self, data: Dataset) -> Dataset:
        from ctrlrl.data import one_episode

        return one_episode(data, self.cfg.expert_trajectory, "expert_trajectory")

    def update(self, b: Batch) -> Metrics:
        loss = F.mse_loss(self.actor(b.obs), b.actions)
        self.actor_flat.zero_grad()
        loss.backward()
        self.actor_opt.step()
        return {"bc_loss": loss.detach()}
