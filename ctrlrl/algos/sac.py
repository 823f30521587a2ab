"""Soft Actor-Critic with automatic entropy tuning (Haarnoja et al. 2018, "Soft Actor-Critic
Algorithms and Applications", the paper's second version).

Twin Q in one batched `QEnsemble`, squashed-Gaussian actor. Each line against its source:
- critic: J_Q = ½·E[(Q_i(s, a) − y)²] per head (paper eq. 5), y = r + γ(1 − d)·(min_j Q̄_j(s', a')
  − α log π(a'|s')) with a' ~ π(·|s') drawn from the current policy and Q̄ the Polyak targets
  (eq. 3 and §6: the minimum of the two target Qs);
- actor: J_π = E[α log π(ã|s) − min_j Q_j(s, ã)], ã reparameterised (eq. 7 and §6: the minimum
  Q in the policy gradient too; the authors' softlearning `sac.py` `_update_actor` averages the
  two Qs instead; the paper wins);
- temperature: J(α) = E[−α·(log π(a|s) + H̄)] (eq. 18) with α = exp(log α) and its gradient
  taken in log α, target entropy H̄ = −dim(A) (§5), stepped after the critic and the actor on
  fresh actions of the updated policy (Algorithm 1's order; softlearning `sac.py` `_do_updates`
  and `_update_alpha`), then the Polyak update of the targets.
  `alpha_update="sb3"` keeps stable-baselines3's variant (`sac/sac.py`, `train`): α stepped
  first, on the actor's own samples, with the loss −log α·(log π + H̄).
- defaults: the paper's Table 1: Adam 3e-4, batch 256, buffer 1e6, τ 0.005, γ 0.99, 256-256
  ReLU, one gradient step per env step, α initialised to 1 (softlearning's log α = 0);
  10k uniform-random warm-up steps.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ctrlrl.algos.base import Metrics
from ctrlrl.algos.off_policy import OffPolicyAlgorithm
from ctrlrl.core.buffers import Batch
from ctrlrl.core.config import check_ranges
from ctrlrl.core.errors import UserError
from ctrlrl.core.nets import FlatParams, QEnsemble, TanhGaussianPolicy, TanhSample, adam, soft_update


@dataclass
class SACConfig:
    buffer_size: int = 1_000_000  # replay buffer capacity in transitions
    learning_starts: int = 10_000  # uniform-random steps before learning
    batch_size: int = 256  # minibatch size
    gradient_steps: int = 1  # gradient steps per vector step (n_envs transitions)
    learning_rate: float = 3e-4  # Adam step size of the actor, the critics and α
    gamma: float = 0.99  # discount factor
    tau: float = 0.005  # Polyak rate of the target critics
    autotune: bool = True  # learn α; otherwise α = ent_coef
    ent_coef: float = 1.0  # α: its initial value (autotune) or its fixed value
    target_entropy: float | None = None  # entropy target H̄ of autotune; null: −dim(A)
    alpha_update: str = "paper"  # paper: α stepped last on fresh samples | sb3: first, in log α
    hidden_sizes: tuple[int, ...] = (256, 256)  # hidden layer widths of the actor and of each critic
    n_critics: int = 2  # Q heads; targets and the actor use their minimum
    save_replay: bool = True  # include the replay buffer in checkpoints (exact resume)

    def __post_init__(self) -> None:
        check_ranges(self, positive=("buffer_size", "batch_size", "gradient_steps", "learning_rate",
                                     "tau", "ent_coef", "n_critics"),
                     non_negative=("learning_starts",), fraction=("gamma", "tau"),
                     widths=("hidden_sizes",))
        if self.alpha_update not in ("paper", "sb3"):
            raise UserError(f"setting alpha_update={self.alpha_update!r}: use paper or sb3")


class SAC(OffPolicyAlgorithm):
    name = "sac"
    summary = "Soft Actor-Critic with automatic entropy tuning (Haarnoja et al. 2018)"
    Config = SACConfig

    def build(self) -> None:
        cfg = self.cfg
        self.build_replay()
        obs_dim, act_dim, device = self.obs_dim, self.act_dim, self.device
        self.actor = TanhGaussianPolicy(obs_dim, act_dim, cfg.hidden_sizes).to(device)
        self.critic = QEnsemble(obs_dim, act_dim, cfg.hidden_sizes, cfg.n_critics).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        log_alpha = torch.tensor(float(cfg.ent_coef), device=device).log()
        self.log_alpha = log_alpha.requires_grad_(cfg.autotune)
        self.target_entropy = -float(act_dim) if cfg.target_entropy is None else cfg.target_entropy
        self.actor_flat, self.critic_flat = FlatParams(self.actor), FlatParams(self.critic)
        self.actor_opt = adam([self.actor_flat.param], cfg.learning_rate)
        self.critic_opt = adam([self.critic_flat.param], cfg.learning_rate)
        self.alpha_opt = adam([self.log_alpha], cfg.learning_rate)

    def state_modules(self):
        return {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target,
                "actor_opt": self.actor_opt, "critic_opt": self.critic_opt,
                "alpha_opt": self.alpha_opt, "log_alpha": _TensorHolder(self.log_alpha)}

    def exploration_action(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor.sample(obs)[0]

    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor.mode(obs)

    def critic_loss(self, b: Batch, alpha: torch.Tensor) -> torch.Tensor:
        """Soft Bellman error of every Q head against the min-of-targets soft value."""
        with torch.no_grad():
            next_action, next_log_prob = self.actor.sample(b.next_obs)
            next_q = self.critic_target(b.next_obs, next_action).min(0).values
            soft_value = next_q - alpha * next_log_prob
            target = b.rewards + self.cfg.gamma * (1 - b.terminated) * soft_value
        q = self.critic(b.obs, b.actions)
        return 0.5 * ((q - target) ** 2).mean(1).sum()

    def actor_loss(self, obs: torch.Tensor, pi: TanhSample,
                   alpha: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
        """E[α log π(ã|s) − min_i Q_i(s, ã)] over reparameterised actions ã = tanh(u) (`pi`);
        no diagnostics of its own."""
        action, log_prob = pi.action, pi.log_prob
        q_pi = self.critic(obs, action, detach_params=True).min(0).values
        return (alpha * log_prob - q_pi).mean(), {}

    def temperature_loss(self, log_prob: torch.Tensor) -> torch.Tensor:
        """E[−α·(log π(a|s) + H̄)] with α = exp(log α) (log α itself under `alpha_update="sb3"`)."""
        coef = self.log_alpha if self.cfg.alpha_update == "sb3" else self.log_alpha.exp()
        return -(coef * (log_prob.detach() + self.target_entropy)).mean()

    def step_temperature(self, log_prob: torch.Tensor) -> torch.Tensor:
        alpha_loss = self.temperature_loss(log_prob)
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()
        return alpha_loss.detach()

    def update(self, b: Batch) -> Metrics:
        cfg = self.cfg
        pi = self.actor.rsample(b.obs)
        if torch.compiler.is_compiling():  # `compile: step` (eager runs skip importing dynamo)
            # the sample gets a graph of its own: sharing the critic step's, its saved tensors
            # would be freed by the critic's backward before the actor's
            torch._dynamo.graph_break()

        alpha = self.log_alpha.detach().exp()  # the critic and the actor use α before its step
        alpha_first = cfg.autotune and cfg.alpha_update == "sb3"
        if alpha_first:
            alpha_loss = self.step_temperature(pi.log_prob)

        critic_loss = self.critic_loss(b, alpha)
        self.critic_flat.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()

        actor_loss, actor_info = self.actor_loss(b.obs, pi, alpha)
        self.actor_flat.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()

        if cfg.autotune and not alpha_first:
            with torch.no_grad():
                new_log_prob = self.actor.sample(b.obs)[1]  # the updated policy's
            alpha_loss = self.step_temperature(new_log_prob)

        soft_update(self.critic_target, self.critic, cfg.tau)
        metrics = {"actor_loss": actor_loss.detach(), "critic_loss": critic_loss.detach(),
                   "ent_coef": alpha}
        if cfg.autotune:
            metrics["ent_coef_loss"] = alpha_loss
        return metrics | actor_info


class _TensorHolder(torch.nn.Module):
    """Lets a bare tensor (log α) ride in the checkpoint like a module's state."""

    def __init__(self, tensor: torch.Tensor):
        super().__init__()
        self.tensor = tensor

    def state_dict(self, *args, **kwargs):
        return {"value": self.tensor.detach().clone()}

    def load_state_dict(self, state, strict: bool = True):
        with torch.no_grad():
            self.tensor.copy_(state["value"])
