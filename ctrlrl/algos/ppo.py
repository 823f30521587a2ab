"""PPO with the clipped surrogate (Schulman et al. 2017), the suite's on-policy baseline.

Each line against its source:
- policy loss: −mean min(r·Â, clip(r, 1 − ε, 1 + ε)·Â), r = π/π_old (paper eq. 7);
- the loss minimised is L_CLIP + c1·L_VF − c2·S (paper eq. 9, signs for minimisation), L_VF the
  squared error to V_targ, unclipped as in the paper; V_targ = Â + V_old, the authors' code's
  (openai/baselines `ppo2/runner.py`: returns = advs + values);
  `clip_range_vf` clips V − V_old the way stable-baselines3 does (`ppo/ppo.py`, `train`);
- Â: GAE(γ, λ) (paper eq. 11–12, `ctrlrl.core.buffers.compute_gae`; a time-limit cut bootstraps
  from V(final obs), a termination does not), standardised per minibatch
  as in the authors' code (openai/baselines `ppo2/model.py`, `train`), which the paper leaves open;
- defaults: the paper's MuJoCo settings (Table 3): 2048 steps per env, 10 epochs of minibatch 64,
  Adam 3e-4, γ 0.99, GAE λ 0.95, ε 0.2, 64-64 tanh actor and critic without shared weights, no
  entropy bonus (§6.1). Adam eps 1e-5, orthogonal init and a global grad-norm clip of 0.5 are
  the authors' code's (ppo2), which stable-baselines3 shares. `anneal_lr` (off, as in the paper's
  MuJoCo runs) scales the rate by the fraction of steps left when the rollout began, ppo2's
  `frac = 1 − (update − 1)/nupdates` (`ppo2/ppo2.py`).
- `target_kl` (not in the paper) follows stable-baselines3's `ppo/ppo.py` (`train`): before each
  minibatch's step, its approximate KL mean((r − 1) − log r) (Schulman's k3 estimator) is compared
  with 1.5·target_kl, and the whole update stops at the first minibatch past it, without that
  minibatch's step. `kl_stop="epoch"` instead checks the epoch's mean KL after the epoch (this
  suite's earlier rule). `train/approx_kl` is the mean over every minibatch evaluated.

`loss` is the definition; in eager runs of a Gaussian policy with plain MLPs the update takes its
gradient from `loss_gradients`, the same derivatives written out (equal to autograd's up to
rounding, about twice as fast on CPU: `ctrlrl.core.handgrad`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ctrlrl.algos.base import Metrics
from ctrlrl.algos.on_policy import ActorCriticConfig, OnPolicyAlgorithm
from ctrlrl.core import handgrad
from ctrlrl.core.buffers import RolloutBatch, RolloutBuffer, standardize
from ctrlrl.core.config import check_choices, check_ranges
from ctrlrl.core.errors import UserError
from ctrlrl.core.nets import FlatParams, GaussianPolicy, adam


@dataclass
class PPOConfig(ActorCriticConfig):
    batch_size: int = 64  # minibatch size
    n_epochs: int = 10  # passes over each rollout
    learning_rate: float = 3e-4  # Adam step size of the actor and the critic
    anneal_lr: bool = False  # linear decay to 0 over total_steps
    adam_eps: float = 1e-5  # Adam's ε
    clip_range: float = 0.2  # ε of the clipped probability ratio, clip(r, 1 − ε, 1 + ε)
    clip_range_vf: float | None = None  # clip V − V_old to ± this in the value loss; null: unclipped
    normalize_advantage: bool = True  # standardise advantages per minibatch
    # MultiDiscrete policies: joint (one ratio of the whole action) | factor (a clipped ratio per
    # component, surrogate and entropy averaged over components, as PDPPO's reference baseline)
    ratio: str = "joint"
    ent_coef: float = 0.0  # weight of the entropy bonus
    vf_coef: float = 0.5  # weight of the value loss
    max_grad_norm: float = 0.5  # clip the gradients' global norm to this
    # stop the update at a minibatch whose approx KL > 1.5·target_kl; null: never
    target_kl: float | None = None
    kl_stop: str = "minibatch"  # minibatch (stable-baselines3's rule) | epoch (the epoch's mean KL)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, positive=("batch_size", "n_epochs", "learning_rate", "adam_eps"),
                     non_negative=("clip_range", "ent_coef", "vf_coef", "max_grad_norm"))
        if self.target_kl is not None and not self.target_kl > 0:
            raise UserError(f"setting target_kl={self.target_kl!r}: use a value > 0, or null for "
                            "no early stopping")
        check_choices(self, kl_stop=("minibatch", "epoch"), ratio=("joint", "factor"))


def kl_exceeded(approx_kl: torch.Tensor, target_kl: float | None) -> bool:
    """Whether an approximate KL is past the early-stopping threshold 1.5·target_kl."""
    return target_kl is not None and approx_kl.item() > 1.5 * target_kl


def ratio_diagnostics(log_ratios: list[torch.Tensor], clip_range: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per minibatch (one log π/π_old tensor each): the approximate KL mean((r − 1) − log r)
    (Schulman's k3 estimator) and the fraction of ratios r outside [1 − ε, 1 + ε]. One pass
    over all minibatches after the update rather than a few small ops in each step."""
    log_ratio = torch.cat(log_ratios)
    ratio_m1 = log_ratio.exp() - 1
    per_sample = torch.stack([ratio_m1 - log_ratio, (ratio_m1.abs() > clip_range).float()], 1)
    lengths = torch.tensor([len(x) for x in log_ratios], device=log_ratio.device)
    means = torch.segment_reduce(per_sample, "mean", lengths=lengths)
    return means[:, 0], means[:, 1]


class SurrogateTerms(NamedTuple):
    loss: torch.Tensor
    stats: torch.Tensor  # policy-gradient, value, entropy losses, total
    log_ratio: torch.Tensor  # log π/π_old per sample
    surrogate: torch.Tensor  # r·Â
    surrogate_clipped: torch.Tensor  # clip(r, 1 − ε, 1 + ε)·Â
    value: torch.Tensor  # V as the value loss sees it (clipped around V_old if clip_range_vf)
    value_shift: torch.Tensor  # V − V_old, unclipped


class PPO(OnPolicyAlgorithm):
    name = "ppo"
    summary = "Proximal Policy Optimization with the clipped surrogate (Schulman et al. 2017)"
    Config = PPOConfig
    compile_modes = ("eager", "step")

    def build(self) -> None:
        cfg = self.cfg
        self.build_actor_critic()
        self.flat = FlatParams(self.policy, self.value_fn)  # one optimiser over both nets
        self.optimizer = adam([self.flat.param], cfg.learning_rate, cfg.adam_eps)
        self.rollout = self.make_rollout_buffer()
        self._loss = self.maybe_compile(self.loss)
        self.factor_ratio = cfg.ratio == "factor" and hasattr(self.policy, "factor_log_prob_entropy")

    def state_modules(self):
        return {"policy": self.policy, "value_fn": self.value_fn, "optimizer": self.optimizer}

    def loss(self, b: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Clipped-surrogate loss of one minibatch, and its diagnostics, detached: the stats row
        (policy-gradient, value, entropy losses, total) and the log-ratios log π/π_old (one per
        action component with `ratio: factor`, where `b.log_probs` holds them per component)."""
        log_prob, entropy = (self.policy.factor_log_prob_entropy if self.factor_ratio
                             else self.policy.log_prob_entropy)(b.obs, b.actions)
        terms = self.surrogate_terms(b, log_prob, entropy, self.value(b.obs))
        return terms.loss, terms.stats.detach(), terms.log_ratio.detach().reshape(-1)

    def surrogate_terms(self, b: RolloutBatch, log_prob: torch.Tensor, entropy: torch.Tensor,
                        value: torch.Tensor) -> SurrogateTerms:
        """The loss (paper eq. 9) of a minibatch from the current policy's log-probabilities and
        entropies of its actions and the critic's values, with what its derivatives need."""
        cfg = self.cfg
        adv = b.advantages
        if cfg.normalize_advantage and len(adv) > 1:
            adv = standardize(adv)
        if log_prob.dim() == 2:  # per action component: each sample's advantage for each
            adv = adv.unsqueeze(1)
        log_ratio = log_prob - b.log_probs
        ratio = log_ratio.exp()
        clipped = ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range)
        surrogate, surrogate_clipped = adv * ratio, adv * clipped
        pg_loss = -torch.min(surrogate, surrogate_clipped).mean()
        value_shift = value - b.values
        if cfg.clip_range_vf is not None:
            value = b.values + value_shift.clamp(-cfg.clip_range_vf, cfg.clip_range_vf)
        value_loss = F.mse_loss(value, b.returns)
        entropy_loss = -entropy.mean()
        loss = pg_loss
        if cfg.ent_coef:  # with weight 0 the term would only add backward work
            loss = loss + cfg.ent_coef * entropy_loss
        loss = loss + cfg.vf_coef * value_loss
        stats = torch.stack([pg_loss, value_loss, entropy_loss, loss])
        return SurrogateTerms(loss, stats, log_ratio, surrogate, surrogate_clipped, value,
                              value_shift)

    def uses_hand_gradients(self) -> bool:
        """Whether the update takes `loss`'s gradient from `loss_gradients` instead of autograd:
        in eager runs of the Gaussian policy with plain float32 MLPs (`ctrlrl.core.handgrad`)."""
        return (self.run.compile == "eager" and type(self.policy) is GaussianPolicy
                and handgrad.covers(self.policy.net) and handgrad.covers(self.value_fn))

    @torch.no_grad()
    def loss_gradients(self, b: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """`loss(b)`'s diagnostics, with its gradient written into the parameters' `.grad` by hand
        (replacing it) instead of by autograd. The forward pass is `loss`'s; its derivatives,
        with z = (a − μ)/σ and B the minibatch size:
        ∂L/∂log π_i = −Â_i·r_i/B where min picks the unclipped term (or the two are equal), else 0;
        ∂log π/∂μ = z/σ, ∂log π/∂log σ = z² − 1, and the entropy bonus adds −c2 to ∂L/∂log σ;
        ∂L/∂V_i = c1·2(V_i − V_targ,i)/B, 0 where the value clip binds."""
        cfg, policy = self.cfg, self.policy
        actor, critic = handgrad.forward(policy.net, b.obs), handgrad.forward(self.value_fn, b.obs)
        mean, log_std = actor[-1], policy.log_std
        log_prob, entropy = policy.log_prob_entropy_of((mean, log_std.expand_as(mean)), b.actions)
        terms = self.surrogate_terms(b, log_prob, entropy, critic[-1].squeeze(-1))
        n = len(b.actions)
        grad_log_prob = (terms.surrogate <= terms.surrogate_clipped) * terms.surrogate * (-1.0 / n)
        inv_std = torch.exp(-log_std)
        z = (b.actions - mean) * inv_std
        handgrad.backward_into_grads(policy.net, actor, grad_log_prob[:, None] * z * inv_std)
        grad_log_std = (grad_log_prob[:, None] * (z.square() - 1)).sum(0)
        if cfg.ent_coef:
            grad_log_std -= cfg.ent_coef
        policy.log_std.grad.copy_(grad_log_std)
        grad_value = (terms.value - b.returns) * (2 * cfg.vf_coef / n)
        if cfg.clip_range_vf is not None:
            grad_value *= terms.value_shift.abs() <= cfg.clip_range_vf
        handgrad.backward_into_grads(self.value_fn, critic, grad_value[:, None])
        return terms.stats, terms.log_ratio

    def minibatch_loss(self, b: RolloutBatch, by_hand: bool
                       ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(loss to back-propagate, stats row, log-ratios) of a minibatch, as `loss` returns them;
        `by_hand`: from `loss_gradients`, its gradient already in `.grad` and no loss to
        back-propagate (None)."""
        if by_hand:
            return None, *self.loss_gradients(b)
        return self._loss(b)

    def regularizer(self, b: RolloutBatch, idx: torch.Tensor
                    ) -> tuple[torch.Tensor, Metrics] | None:
        """An extra loss term for minibatch `b` (rows `idx` of the rollout) and its diagnostics,
        which the update averages over the minibatches that step; none in PPO. (ppo-adreg adds
        its action-distribution divergence to the base policy here.)"""
        return None

    def update(self, rollout: RolloutBuffer) -> Metrics:
        cfg = self.cfg
        if cfg.anneal_lr:  # by the fraction of training left when this rollout began
            self.optimizer.param_groups[0]["lr"] = cfg.learning_rate * self.rollout_schedule()[1]
        # of every minibatch evaluated, the one that stops included
        stats: list[torch.Tensor] = []
        log_ratios: list[torch.Tensor] = []
        reg_infos: list[Metrics] = []
        per_minibatch = cfg.kl_stop == "minibatch"
        by_hand = self.uses_hand_gradients()
        if self.factor_ratio:  # π_old per component: the policy that acted, before this update
            whole = rollout.all()
            with torch.no_grad():
                old_log_probs = self.policy.factor_log_prob_entropy(whole.obs, whole.actions)[0]
        for _ in range(cfg.n_epochs):
            stopped = False
            epoch_start = len(log_ratios)
            for idx, b in rollout.indexed_minibatches(cfg.batch_size):
                if self.factor_ratio:
                    b = b._replace(log_probs=old_log_probs[idx])
                loss, stats_row, log_ratio = self.minibatch_loss(b, by_hand)
                log_ratios.append(log_ratio)
                stats.append(stats_row)
                if per_minibatch and cfg.target_kl is not None and kl_exceeded(
                        ratio_diagnostics([log_ratio], cfg.clip_range)[0][0], cfg.target_kl):
                    stopped = True  # before this minibatch's step
                    break
                reg = self.regularizer(b, idx)
                if reg is not None:
                    reg_infos.append(reg[1])
                if loss is None:  # the loss's gradient is in place; a regulariser's adds to it
                    if reg is not None:
                        reg[0].backward()
                else:
                    self.flat.zero_grad()
                    (loss if reg is None else loss + reg[0]).backward()
                self.flat.clip_grad_norm_(cfg.max_grad_norm)
                self.optimizer.step()
                self.n_updates += 1
            if stopped or (not per_minibatch and cfg.target_kl is not None and kl_exceeded(
                    ratio_diagnostics(log_ratios[epoch_start:], cfg.clip_range)[0].mean(),
                    cfg.target_kl)):
                break
        means = torch.stack(stats).mean(0)
        kls, clip_fractions = ratio_diagnostics(log_ratios, cfg.clip_range)
        reg_means = {key: torch.stack([info[key] for info in reg_infos]).mean()
                     for key in (reg_infos[0] if reg_infos else {})}
        return {
            "policy_gradient_loss": means[0], "value_loss": means[1], "entropy_loss": means[2],
            "clip_fraction": clip_fractions.mean(), "loss": means[3], "approx_kl": kls.mean(),
            "learning_rate": self.optimizer.param_groups[0]["lr"],
            **reg_means, **self.rollout_metrics(rollout.all()),
        }
