"""Mirror Descent Policy Optimization (Tomar, Shani, Efroni, Ghavamzadeh; ICLR 2022), on-policy and
off-policy. Both solve each mirror-descent step approximately, by a few gradient steps on
the linearised objective plus a KL(π_θ ‖ π_k) proximity term (the mirror-descent direction, new ‖ old).
Where the paper leaves a detail open, the defaults follow the authors' code (`mdpo_on/mdpo.py`,
`mdpo_off/mdpo.py`, `mdpo_off/policies.py`, `*/run_mujoco.py` of their public repository); line
numbers below refer to those files.

On-policy (`mdpo`): per rollout of `n_steps`, `sgd_steps` (m = 10, the README's run) full-batch
Adam steps on

    L(θ) = − mean[ρ_θ · Â] + (1/t_k) · mean_s KL(π_θ(·|s) ‖ π_k(·|s)),   ρ_θ = π_θ(a|s) / π_k(a|s),

the KL in closed form and new ‖ old (`policy_pi.kl(old_policy)`, mdpo_on l.164; the loss l.195), no
ratio clipping and no entropy bonus. The step size is the reference's (l.399-400)

    t_k = 1 − (k − 1)/K,   k = 0, 1, … the rollout index,  K = ⌊total_steps / (n_steps·n_envs)⌋,

so the KL weight 1/t_k starts at K/(K + 1) and grows to K/2 on rollout K − 1 (t_k = 1 − k/K,
one rollout later, is `step_size_offset=0`). Policy Adam: lr 3e-4,
eps 1e-5, gradients clipped to global norm 0.5 (l.249-250). The learning rate is constant, for the
policy and the value net alike (`get_schedule_fn(3e-4)`, l.339, used at l.250 and l.447). The value
net is trained separately: `vf_epochs` (5, run_mujoco) × minibatch 128 (l.444), its loss clipped
±0.2 around the rollout's predictions (l.182-188), plain Adam (eps 1e-8, no gradient clipping:
`MpiAdam`, l.280 and l.447). Observation and reward normalisation (`VecNormalize`, run_mujoco) come
from the preset's `default` entry; orthogonal init as in the reference's stable-baselines policy.

Off-policy (`mdpo-off`): SAC's learner (twin Q, targets, squashed Gaussian) with the actor loss
(mdpo_off l.227-244)

    L(θ) = mean[c·log π_θ(ã|s) + (λ − c)·log π_old(ã|s) − Q(s, ã)]
           + η·(mean μ_θ(s)² + mean (log σ_θ(s))²),        ã = tanh(μ_θ(s) + σ_θ(s)·ε),

c = `bregman_coef` (1/t_k, constant: `klconst`, l.422), λ = `ent_coef`, η = `actor_reg_coef` (1e-3
on the pre-tanh mean and the clamped log-std, l.232-233), and π_old a hard copy of the actor. With
c = λ and η = 0 this is SAC's actor loss exactly.
Why π_old is scored at ã, the current policy's reparameterised action (as the reference does,
`old_policy.make_actor(action=policy_out, …)`, l.203-204): the two log terms are the sample estimate
of c·KL(π_θ ‖ π_old) + λ·E_{a∼π_θ}[log π_old(a|s)], and both expectations are over the *current*
policy. Their reparameterised gradient needs log π_old at ã = f_θ(ε) with the derivative flowing
through ã (π_old's own weights are frozen). Scored at an action that does not depend on θ, the
(λ − c)·log π_old term would be a constant: the KL's cross term would vanish and the loss would
collapse to SAC with temperature c.
π_old ← π_θ after gradient step n whenever n ≡ `old_update_phase` (mod m), m = `old_update_every`:
the reference copies after the env step `step % m == 0` (l.435-436), which, with its 10k warm-up a
multiple of m, is right after the first gradient step and then every m steps.

Where this module departs from the reference code (TF1), and why:
- off-policy Q(s, ã) in the actor loss is the minimum of the twin critics, as in our SAC (the
  reference uses Q1), so that c = λ reproduces our SAC bit for bit; the critic is SAC v2's twin-Q
  soft target r + γ(1 − d)(min Q_targ(s', a') − λ log π(a'|s')) (the reference keeps SAC v1's state
  value net V and regresses Q to r + γ(1 − d)·V_targ(s'), l.214-250);
- off-policy exploration samples the stochastic policy, as SAC does (the reference acts
  deterministically after warm-up);
- on-policy t_k is floored at 1/K, so a resumed run with a larger `total_steps` keeps a finite KL
  weight (within one run the reference's schedule never reaches the floor).

Earlier behaviours stay one setting away: `anneal_lr=True` (linear learning-rate decay to 0),
`step_size_offset=0` (t_k = 1 − k/K), `anneal_step_size=False` (t_k = 1), `vf_max_grad_norm=0.5`
with `vf_adam_eps=1e-5` (value steps like the policy's); off-policy `actor_reg_coef=0` (no output
regulariser) and `old_update_phase=0` (first copy after step m).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ctrlrl.algos.base import Metrics
from ctrlrl.algos.on_policy import ActorCriticConfig, OnPolicyAlgorithm
from ctrlrl.algos.sac import SAC, SACConfig
from ctrlrl.core.buffers import Batch, RolloutBatch, RolloutBuffer, standardize
from ctrlrl.core.config import check_ranges
from ctrlrl.core.nets import FlatParams, TanhSample, adam


@dataclass
class MDPOConfig(ActorCriticConfig):
    n_steps: int = 2048  # steps per env per rollout (one mirror-descent iteration)
    sgd_steps: int = 10  # m: full-batch policy steps per iteration
    learning_rate: float = 3e-4  # Adam step size of the policy and the value net (constant unless anneal_lr)
    anneal_lr: bool = False  # True: linear decay to 0 over total_steps (policy and value)
    anneal_step_size: bool = True  # t_k = 1 − (k − offset)/K; off: t_k = 1 (a fixed KL weight of 1)
    step_size_offset: int = 1  # the reference's 1: t_0 = 1 + 1/K; 0: t_k = 1 − k/K
    adam_eps: float = 1e-5  # policy Adam's ε
    normalize_advantage: bool = True  # standardise advantages over the full batch
    max_grad_norm: float = 0.5  # clip the policy gradient's global norm to this
    vf_epochs: int = 5  # value-net passes over each rollout
    vf_batch_size: int = 128  # value-net minibatch size
    clip_range_vf: float | None = 0.2  # clip V − V_old to ± this in the value loss; null: unclipped
    vf_max_grad_norm: float | None = None  # clip the value gradients' global norm to this; null: unclipped
    vf_adam_eps: float = 1e-8  # value Adam's ε

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, positive=("sgd_steps", "learning_rate", "adam_eps", "vf_epochs",
                                     "vf_batch_size", "vf_adam_eps"),
                     non_negative=("max_grad_norm", "step_size_offset"))
        if self.vf_max_grad_norm is not None:
            check_ranges(self, non_negative=("vf_max_grad_norm",))


def step_size(k: int, n_iterations: int, offset: int = 1) -> float:
    """t_k = 1 − (k − offset)/K for iteration k = 0, 1, …, floored at 1/K.

    offset 1 is the reference's schedule (t_0 = 1 + 1/K, t_{K−1} = 2/K), offset 0 starts at t_0 = 1.
    """
    n_iterations = max(n_iterations, 1)
    return max(1.0 - (k - offset) / n_iterations, 1.0 / n_iterations)


def frozen_copy(params: torch.Tensor | tuple[torch.Tensor, ...]):
    """A copy of a policy's `dist_params` that later optimiser steps cannot move: the Gaussian
    head returns its log-std as a view of the parameter itself."""
    if isinstance(params, torch.Tensor):
        return params.clone()
    return tuple(t.clone() for t in params)


class MDPO(OnPolicyAlgorithm):
    name = "mdpo"
    summary = "Mirror Descent Policy Optimization, on-policy (Tomar et al. 2022)"
    Config = MDPOConfig
    compile_modes = ("eager", "step")

    def build(self) -> None:
        cfg = self.cfg
        self.build_actor_critic()
        self.policy_flat, self.value_flat = FlatParams(self.policy), FlatParams(self.value_fn)
        self.policy_opt = adam([self.policy_flat.param], cfg.learning_rate, cfg.adam_eps)
        self.value_opt = adam([self.value_flat.param], cfg.learning_rate, cfg.vf_adam_eps)
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

    def update(self, rollout: RolloutBuffer) -> Metrics:
        cfg = self.cfg
        k, left = self.rollout_schedule()
        n_iterations = self.run.total_steps // (cfg.n_steps * self.run.n_envs)
        t_k = step_size(k, n_iterations, cfg.step_size_offset) if cfg.anneal_step_size else 1.0
        lr = cfg.learning_rate * (left if cfg.anneal_lr else 1.0)
        for opt in (self.policy_opt, self.value_opt):
            opt.param_groups[0]["lr"] = lr
        data = rollout.all()
        adv = data.advantages
        if cfg.normalize_advantage and len(adv) > 1:
            adv = standardize(adv)
        with torch.no_grad():  # π_k: the policy that collected the data, frozen for the m steps
            old_params = frozen_copy(self.policy.dist_params(data.obs))
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
                if cfg.vf_max_grad_norm is not None:
                    self.value_flat.clip_grad_norm_(cfg.vf_max_grad_norm)
                self.value_opt.step()
                value_losses.append(value_loss.detach())
        surrogate, kl, entropy = stats.detach()  # at the last inner step (KL after m − 1 steps)
        return {"policy_gradient_loss": -surrogate, "kl_mirror": kl, "step_size": t_k,
                "entropy": entropy, "value_loss": torch.stack(value_losses).mean(),
                "learning_rate": lr, **self.rollout_metrics(data)}


# ---- off-policy ---------------------------------------------------------------------------------
def mirror_actor_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, q: torch.Tensor,
                      c: float, lam: torch.Tensor | float) -> torch.Tensor:
    """mean[c·log π_θ(ã) + (λ − c)·log π_old(ã) − Q(s, ã)], all at the same actions ã ~ π_θ:
    the estimate of c·KL(π_θ ‖ π_old) + λ·E_{π_θ}[log π_old] − E_{π_θ}[Q]."""
    return (c * log_prob + (lam - c) * old_log_prob - q).mean()


def output_regulariser(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """mean(μ²) + mean((log σ)²) of the pre-tanh Gaussian, each averaged over batch and action."""
    return mean.pow(2).mean() + log_std.pow(2).mean()


@dataclass
class MDPOOffConfig(SACConfig):
    autotune: bool = False  # learn α as SAC does; off (MDPO): λ = ent_coef stays fixed
    ent_coef: float = 0.2  # λ, the entropy weight (the initial one under autotune)
    bregman_coef: float = 1.0  # c = 1/t_k, weight of the KL to π_old
    actor_reg_coef: float = 1e-3  # η on mean(μ²) + mean((log σ)²); 0: no regulariser
    old_update_every: int = 1000  # m: gradient steps between hard copies π_old ← π_θ
    old_update_phase: int = 1  # copy after step n ≡ phase (mod m): 1 after steps 1, m+1, …; 0 after m, 2m, …

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, positive=("bregman_coef", "old_update_every"),
                     non_negative=("actor_reg_coef", "old_update_phase"))


class MDPOOff(SAC):
    name = "mdpo-off"
    summary = "Mirror Descent Policy Optimization, off-policy: SAC's learner with a KL to π_old"
    Config = MDPOOffConfig

    def build(self) -> None:
        super().build()
        self.old_actor = copy.deepcopy(self.actor).requires_grad_(False)

    def state_modules(self):
        return {**super().state_modules(), "old_actor": self.old_actor}

    def actor_loss(self, obs: torch.Tensor, pi: TanhSample,
                   alpha: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
        """`mirror_actor_loss` with c = `bregman_coef`, λ = α and Q = min_i Q_i, plus
        η·`output_regulariser` of the current actor; with c = λ and η = 0, SAC's loss.
        Diagnostics: KL(π_θ ‖ π_old), the step size 1/c and the entropy, from the same actions."""
        cfg = self.cfg
        action, log_prob, pre_tanh = pi
        # π_old scored at ã itself, so its term's gradient reaches θ through ã (module docstring)
        old_log_prob = self.old_actor.log_prob_pre_tanh(obs, pre_tanh)
        q_pi = self.critic(obs, action, detach_params=True).min(0).values
        loss = mirror_actor_loss(log_prob, old_log_prob, q_pi, cfg.bregman_coef, alpha)
        if cfg.actor_reg_coef > 0:
            loss = loss + cfg.actor_reg_coef * output_regulariser(*self.actor.dist_params(obs))
        with torch.no_grad():
            # KL(π_θ ‖ π_old) from the batch's actions ã ~ π_θ: the unbiased, non-negative
            # estimator E[(r − 1) − log r], r = π_old(ã)/π_θ(ã) (no closed form through the tanh)
            log_r = old_log_prob - log_prob
            info = {"kl_mirror": (torch.expm1(log_r) - log_r).mean(),
                    "step_size": 1.0 / cfg.bregman_coef, "entropy": -log_prob.mean()}
        return loss, info

    def update(self, b: Batch) -> Metrics:
        metrics = super().update(b)
        if self.update_variant():
            self.refresh_old()
        return metrics

    def update_variant(self) -> bool:
        """Whether this update ends with the hard copy π_old ← π_θ."""
        step_number = self.n_updates + 1  # the loop counts this step after update()
        return (step_number - self.cfg.old_update_phase) % self.cfg.old_update_every == 0

    def refresh_old(self) -> None:
        self.old_actor.load_state_dict(self.actor.state_dict())
