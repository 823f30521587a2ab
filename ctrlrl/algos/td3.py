"""TD3 (Fujimoto et al. 2018): twin critics, target policy smoothing, delayed actor updates.

Each line against its source (the paper's Algorithm 1 and the authors' code, sfujim/TD3 `TD3.py`
`TD3.train` and `main.py`):
- target: y = r + γ(1 − d)·min_i Q̄_i(s', ã), ã = clip(π̄(s') + clip(ε, −c, c), −1, 1),
  ε ~ N(0, σ²) (Algorithm 1; the clip to the action box is the code's); both critics regress
  onto y with the sum of their mean squared errors (`critic_loss` in `TD3.train`);
- every `policy_delay`-th critic step (counting from 1, `total_it % policy_freq == 0`): the actor
  ascends Q1(s, π(s)), then both targets move by Polyak τ;
- exploration: π(s) + N(0, 0.1²), clipped to the box (`main.py`); time-limit ends are not
  terminal (`done_bool` in `main.py`).
Defaults are the authors' updated settings (README of sfujim/TD3): Adam 3e-4, 256-256 ReLU,
batch 256, τ 0.005, policy noise 0.2 clipped at 0.5, actor every 2 critic steps, Gaussian
exploration 0.1, 25k uniform-random warm-up steps.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ctrlrl.algos.base import Metrics
from ctrlrl.algos.off_policy import OffPolicyAlgorithm
from ctrlrl.core.buffers import Batch
from ctrlrl.core.config import check_ranges
from ctrlrl.core.nets import DeterministicPolicy, FlatParams, QEnsemble, adam, soft_update


@dataclass
class TD3LearnerConfig:
    """The settings of TD3's learner, which TD3+BC and A2PR share."""

    batch_size: int = 256  # minibatch size
    learning_rate: float = 3e-4  # Adam step size of the actor and the critics
    gamma: float = 0.99  # discount factor
    tau: float = 0.005  # Polyak rate of the target networks
    policy_delay: int = 2  # critic steps per actor (and target) update
    target_policy_noise: float = 0.2  # std of the smoothing noise added to the target action
    target_noise_clip: float = 0.5  # the smoothing noise is clipped to ± this

    def __post_init__(self) -> None:
        check_ranges(self, positive=("batch_size", "learning_rate", "tau", "policy_delay"),
                     non_negative=("target_policy_noise", "target_noise_clip"),
                     fraction=("gamma", "tau"))


@dataclass
class TD3Config(TD3LearnerConfig):
    buffer_size: int = 1_000_000  # replay buffer capacity in transitions
    learning_starts: int = 25_000  # uniform-random steps before learning
    gradient_steps: int = 1  # gradient steps per vector step (n_envs transitions)
    exploration_noise: float = 0.1  # std of Gaussian action noise while training
    hidden_sizes: tuple[int, ...] = (256, 256)  # hidden layer widths of the actor and of each critic
    save_replay: bool = True  # include the replay buffer in checkpoints (exact resume)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, positive=("buffer_size", "gradient_steps"),
                     non_negative=("learning_starts", "exploration_noise"), widths=("hidden_sizes",))


class TD3(OffPolicyAlgorithm):
    name = "td3"
    summary = "TD3: twin critics, target policy smoothing, delayed actor (Fujimoto et al. 2018)"
    Config = TD3Config

    def build(self) -> None:
        self.build_replay()
        self.build_networks(self.cfg.hidden_sizes, self.cfg.hidden_sizes)

    def build_networks(self, actor_hidden, critic_hidden) -> None:
        """Actor, twin critics, their targets and Adam optimisers (TD3+BC and A2PR reuse these)."""
        obs_dim, act_dim, device, lr = self.obs_dim, self.act_dim, self.device, self.cfg.learning_rate
        self.actor = DeterministicPolicy(obs_dim, act_dim, actor_hidden).to(device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic = QEnsemble(obs_dim, act_dim, critic_hidden, 2).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_flat, self.critic_flat = FlatParams(self.actor), FlatParams(self.critic)
        self.actor_opt = adam([self.actor_flat.param], lr)
        self.critic_opt = adam([self.critic_flat.param], lr)

    def state_modules(self):
        return {"actor": self.actor, "actor_target": self.actor_target, "critic": self.critic,
                "critic_target": self.critic_target, "actor_opt": self.actor_opt,
                "critic_opt": self.critic_opt}

    def exploration_action(self, obs: torch.Tensor) -> torch.Tensor:
        action = self.actor(obs)
        return (action + self.cfg.exploration_noise * torch.randn_like(action)).clamp(-1, 1)

    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(obs)

    @torch.no_grad()
    def bellman_target(self, b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(a', y): the smoothed target-policy action at s' and the clipped double-Q target."""
        cfg = self.cfg
        noise = (cfg.target_policy_noise * torch.randn_like(b.actions)).clamp(
            -cfg.target_noise_clip, cfg.target_noise_clip)
        next_action = (self.actor_target(b.next_obs) + noise).clamp(-1, 1)
        next_q = self.critic_target(b.next_obs, next_action).min(0).values
        return next_action, b.rewards + cfg.gamma * (1 - b.terminated) * next_q

    def critic_loss(self, b: Batch, target: torch.Tensor | None = None) -> torch.Tensor:
        """Bellman error of both Q heads against `target` (default: `bellman_target(b)`'s y)."""
        if target is None:
            target = self.bellman_target(b)[1]
        q = self.critic(b.obs, b.actions)
        return ((q - target) ** 2).mean(1).sum()

    def actor_loss(self, b: Batch) -> tuple[torch.Tensor, Metrics]:
        """Deterministic policy gradient through the first Q head (critic weights held fixed);
        no diagnostics of its own."""
        return -self.critic(b.obs, self.actor(b.obs), detach_params=True)[0].mean(), {}

    def update_variant(self) -> bool:
        """Whether this update also steps the actor and the targets: every `policy_delay`-th."""
        return (self.n_updates + 1) % self.cfg.policy_delay == 0

    def update(self, b: Batch) -> Metrics:
        """A critic step; every `policy_delay`-th call also an actor step and the target updates
        (only those steps report `actor_loss`)."""
        cfg = self.cfg
        critic_loss = self.critic_loss(b)
        self.critic_flat.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        metrics = {"critic_loss": critic_loss.detach()}

        if self.update_variant():
            actor_loss, actor_info = self.actor_loss(b)
            self.actor_flat.zero_grad()
            actor_loss.backward()
            self.actor_opt.step()
            soft_update(self.actor_target, self.actor, cfg.tau)
            soft_update(self.critic_target, self.critic, cfg.tau)
            metrics |= {**actor_info, "actor_loss": actor_loss.detach()}
        return metrics
