"""Mirror Descent Policy Optimization (Tomar et al., ICLR 2022), on-policy and off-policy.

ALGORITHMS.md §1. Both solve each mirror-descent step approximately, by a few gradient steps on
the linearised objective plus a KL(π_θ ‖ π_k) proximity term (the mirror-descent direction, new ‖ old).

On-policy (`mdpo`): per rollout of `n_steps`, `sgd_steps` full-batch Adam steps on

    L(θ) = − mean[ρ_θ · Â] + (1/t_k) · mean_s KL(π_θ(·|s) ‖ π_k(·|s)),   t_k = 1 − k/K,

with K the number of rollouts in the run, the KL in closed form, no ratio clipping and no entropy
bonus; the value net is trained separately (`vf_epochs` × minibatch `vf_batch_size`, value loss
clipped around the rollout's predictions as in the reference code). The code-level tricks of the
paper's main table are switches, on by default: observation and reward normalisation (the preset's
`default` entry), orthogonal init, learning-rate annealing, value clipping.

Off-policy (`mdpo-off`): SAC's learner (twin Q, targets, squashed Gaussian) with the actor loss

    L(θ) = mean[c · log π_θ(ã|s) + (λ − c) · log π_old(ã|s) − Q(s, ã)],   ã = tanh(u_θ(s, ε)),

c = `bregman_coef` (1/t_k, constant), λ = `ent_coef`, and π_old a hard copy of the actor refreshed
every `old_update_every` gradient steps. With c = λ this is SAC's actor loss exactly.

Choices where the reference code (TF1) and the paper differ, or the paper is silent:
- off-policy, log π_old is scored at the *current* policy's reparameterised action ã, as the paper's
  equation says; the reference scores the old policy's own sample, which gives that term no gradient;
- off-policy Q(s, ã) is the minimum of the twin critics, as in our SAC (the reference uses Q1), so
  that c = λ reproduces our SAC bit for bit; the critic is SAC v2's twin-Q soft target with λ;
- off-policy exploration samples the stochastic policy, as SAC does (the reference acts
  deterministically after warm-up);
- on-policy t_k is floored at 1/K (reached on the last rollout), so a resumed run with a larger
  `total_steps` keeps a finite KL weight; the value net uses the policy's Adam learning rate (3e-4,
  annealed alike), as the reference code does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ctrlrl.algos.base import OnPolicyAlgorithm
from ctrlrl.algos.sac import SAC, SACConfig
from ctrlrl.core.buffers import RolloutBatch, RolloutBuffer, standardize
from ctrlrl.core.config import check_ranges
from ctrlrl.core.nets import FlatParams, adam


@dataclass
class MDPOConfig:
    n_steps: int = 2048  # steps per env per rollout (one mirror-descent iteration)
    sgd_steps: int = 10  # m: full-batch policy steps per iteration
    learning_rate: float = 3e-4
    anneal_lr: bool = True  # linear decay to 0 over total_steps (policy and value)
    anneal_step_size: bool = True  # t_k = 1 − k/K; off: t_k = 1 (a fixed KL weight of 1)
    adam_eps: float = 1e-5
    gamma: float = 0.99
    gae_lambda: float = 0.95
    normalize_advantage: bool = True  # over the full batch
    max_grad_norm: float = 0.5
    vf_epochs: int = 5
    vf_batch_size: int = 128
    clip_range_vf: float | None = 0.2  # None: unclipped value loss
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    ortho_init: bool = True
    log_std_init: float = 0.0

    def __post_init__(self) -> None:
        check_ranges(self, positive=("n_steps", "sgd_steps", "learning_rate", "adam_eps",
                                     "vf_epochs", "vf_batch_size"),
                     non_negative=("max_grad_norm",), fraction=("gamma", "gae_lambda"),
                     widths=("hidden_sizes",))


def step_size(k: int, n_iterations: int) -> float:
    """t_k = 1 − k/K for iteration k = 0, 1, …, floored at 1/K (the last iteration's value)."""
    n_iterations = max(n_iterations, 1)
    return max(1.0 - k / n_iterations, 1.0 / n_iterations)


class MDPO(OnPolicyAlgorithm):
    name = "mdpo"
    Config = MDPOConfig

    def build(self) -> None:
        cfg = self.cfg
        self.build_actor_critic()
        self.policy_flat, self.value_flat = FlatParams(self.policy), FlatParams(self.value_fn)
        self.policy_opt = adam([self.policy_flat.param], cfg.learning_rate, cfg.adam_eps)
        self.value_opt = adam([self.value_flat.param], cfg.learning_rate, cfg.adam_eps)
        self.rollout = self.make_rollout_buffer()
        self._policy_loss = self.maybe_compile(self.policy_loss)

    def state_modules(self):
        return {"policy": self.policy, "value_fn": self.value_fn, "policy_opt": self.policy_opt,
                "value_opt": self.value_opt}

    def policy_loss(self, b: RolloutBatch, adv: torch.Tensor, old_params,
                    kl_weight: torch.Tensor | float):
        """−mean(ρ·Â) + kl_weight · mean KL(π_θ ‖ π_k); also (surrogate, KL, entropy) for logging."""
        params = self.policy.dist_params(b.obs)
        log_prob, entropy = self.policy.log_prob_entropy_of(params, b.actions)
        surrogate = (torch.exp(log_prob - b.log_probs) * adv).mean()
        kl = self.policy.kl(params, old_params).mean()
        return -surrogate + kl_weight * kl, torch.stack([surrogate, kl, entropy.mean()])

    def value_loss(self, b: RolloutBatch) -> torch.Tensor:
        value = self.value(b.obs)
        loss = (value - b.returns).pow(2)
        if self.cfg.clip_range_vf is not None:
            clipped = b.values + (value - b.values).clamp(-self.cfg.clip_range_vf, self.cfg.clip_range_vf)
            loss = torch.maximum(loss, (clipped - b.returns).pow(2))
        return loss.mean()

    def update(self, rollout: RolloutBuffer) -> None:
        cfg = self.cfg
        k, left = self.rollout_schedule()
        t_k = step_size(k, self.run.total_steps // (cfg.n_steps * self.run.n_envs)) \
            if cfg.anneal_step_size else 1.0
        lr = cfg.learning_rate * (left if cfg.anneal_lr else 1.0)
        for opt in (self.policy_opt, self.value_opt):
            opt.param_groups[0]["lr"] = lr
        data = rollout.all()
        adv = data.advantages
        if cfg.normalize_advantage and len(adv) > 1:
            adv = standardize(adv)
        with torch.no_grad():
            old_params = self.policy.dist_params(data.obs)  # π_k: the policy that collected the data
        kl_weight = torch.tensor(1.0 / t_k, device=self.device)  # a tensor: no recompile per k
        for _ in range(cfg.sgd_steps):
            loss, stats = self._policy_loss(data, adv, old_params, kl_weight)
            self.policy_flat.zero_grad()
            loss.backward()
            self.policy_flat.clip_grad_norm_(cfg.max_grad_norm)
            self.policy_opt.step()
            self.n_updates += 1
        value_losses = []
        for _ in range(cfg.vf_epochs):
            for b in rollout.minibatches(cfg.vf_batch_size):
                value_loss = self.value_loss(b)
                self.value_flat.zero_grad()
                value_loss.backward()
                self.value_flat.clip_grad_norm_(cfg.max_grad_norm)
                self.value_opt.step()
                value_losses.append(value_loss.detach())
        surrogate, kl, entropy = stats.detach()  # at the last inner step (KL after m − 1 steps)
        self.metrics = {"policy_gradient_loss": -surrogate, "kl_mirror": kl, "step_size": t_k,
                        "entropy": entropy, "value_loss": torch.stack(value_losses).mean(),
                        "learning_rate": lr, **self.rollout_metrics(data)}


# ---- off-policy ---------------------------------------------------------------------------------
@dataclass
class MDPOOffConfig(SACConfig):
    autotune: bool = False  # λ is fixed in MDPO
    ent_coef: float = 0.2  # λ
    bregman_coef: float = 1.0  # c = 1/t_k
    old_update_every: int = 1000  # m: gradient steps between hard copies π_old ← π_θ

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, positive=("bregman_coef", "old_update_every"))


class MDPOOff(SAC):
    name = "mdpo-off"
    Config = MDPOOffConfig

    def build(self) -> None:
        super().build()
        self.old_actor = copy.deepcopy(self.actor).requires_grad_(False)

    def state_modules(self):
        return {**super().state_modules(), "old_actor": self.old_actor}

    def actor_loss(self, obs, action, log_prob, pre_tanh, alpha):
        """mean[c·log π_θ(ã) + (λ − c)·log π_old(ã) − min_i Q_i(s, ã)]; with c = λ, SAC's loss."""
        c = self.cfg.bregman_coef
        old_log_prob = self.old_actor.log_prob_pre_tanh(obs, pre_tanh)
        q_pi = self.critic(obs, action, detach_params=True).min(0).values
        self._mirror_stats = (log_prob.detach(), old_log_prob.detach())
        return (c * log_prob + (alpha - c) * old_log_prob - q_pi).mean()

    def update(self) -> None:
        super().update()
        if (self.n_updates + 1) % self.cfg.old_update_every == 0:  # the base counts this step after
            self.refresh_old()
        log_prob, old_log_prob = self._mirror_stats
        # KL(π_θ ‖ π_old) from the batch's actions ã ~ π_θ: the unbiased, non-negative
        # estimator E[(r − 1) − log r], r = π_old(ã)/π_θ(ã) (no closed form through the tanh)
        log_r = old_log_prob - log_prob
        self.metrics.update({"kl_mirror": (torch.expm1(log_r) - log_r).mean(),
                             "step_size": 1.0 / self.cfg.bregman_coef, "entropy": -log_prob.mean()})

    def refresh_old(self) -> None:
        self.old_actor.load_state_dict(self.actor.state_dict())
