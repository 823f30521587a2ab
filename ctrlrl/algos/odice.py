"""O-DICE: DICE with the orthogonal-gradient update (Mao, Xu, Zhang, Zhan; ICLR 2024).

A state-value function V is learnt from the DICE dual objective, then the policy is extracted by
weighted behaviour cloning. With δ(s, s') = r + γ(1−d)·V(s') − V(s):

    min_V  (1−λ)·E_D[V(s)] + λ·E_D[f*(δ)],      f* the convex conjugate of an f-divergence:
    Pearson χ² (`f: chi2`, default)   f*(y) = y + y²/4 for y ≥ −2, −1 below
    reverse KL (`f: kl`)              f*(y) = exp(y − 1)

The gradient of λ·E f*(δ) has a forward part (through V(s)) and a backward part (through V(s')).
`rule` says which reach V (V̄ is the target net, an EMA of V with rate τ = 0.005):

    semi        ∇(1−λ)·mean V(s) + g_f,     g_f = ∇ λ·mean f*(r + γ(1−d)·V̄(s') − V(s))
    true        ∇ of the objective with the gradient through V(s) and V(s')
    orthogonal  ∇(1−λ)·mean V(s) + g_f + g_b⊥   (O-DICE, the default), where
                g_b = ∇ λ·η·mean f*(r + γ(1−d)·V(s') − V̄(s)),
                g_b⊥ = g_b − (⟨g_f, g_b⟩ / max(‖g_f‖², 1e-10))·g_f,
                g_f and g_b flattened over all of V's parameters (one vector: `FlatParams`).

Policy extraction maximises E_D[w · log π(a|s)] with w = clamp(relu(δ_f), max=100), detached, where
δ_f = r + γ(1−d)·V̄(s') − V(s) is the forward residual before the value step (`weight: relu`, the
reference code's rule, whose results the paper reports). `weight: ratio` uses f*'(δ_f) instead, the
optimal density ratio the theory gives: max(0, 1 + δ_f/2) for χ², exp(δ_f − 1) for reverse KL
(the reference's rule with reverse KL), also clamped at 100.

Twin V (`twin_v`, on): two heads, each trained on its own residuals against the shared target
V̄ = min of the two target heads; the losses average over heads and samples, and the policy weight is
the mean of the two heads' weights. This is what the reference code does (`vf.both` in the losses,
`vf_target(·)` = min of heads, the weight tensor of shape (2, batch) broadcast against the BC loss).

Networks and defaults (the reference's `configs/offline_RL.yaml`): V 2×256 ReLU with LayerNorm;
policy a Gaussian with a 2×1024 ReLU mean and a state-independent log-std clamped to [−5, 2],
acting with its mean (no tanh: `tanh_mean` off); Adam 2e-4 for both, the policy's with coupled L2
weight decay 1e-4 (torch.optim.Adam's weight_decay, as the reference; not AdamW); batch 256, γ 0.99,
λ 0.6, η 1.0, 1M steps, no state normalisation. MuJoCo rewards are scaled by
1000 / (max − min) of the dataset's complete-episode returns (`scale_rewards`, on).

λ and η: the paper tunes them per dataset (its appendix D). That table could not be read for this
code: the reference repository carries no per-dataset values (its README points to appendix D; its
configs/*.yaml set neither λ nor η), and no copy of the appendix was at hand when this was
written. So there is no `paper_settings` table as A2PR has: every env uses the reference's
argparse defaults, `main_odice_rl.py` λ 0.6 and η 1.0 (`main_odice_il.py`: λ 0.4, η 1.0); pass a
dataset's values with `--set lam=… --set eta=…`.

λ sets how much of the data the `relu` weight clones. At a fixed point of V the forward gradient
(1−λ) − λ·f*'(δ) averages to zero, so E[f*'(δ)] = (1−λ)/λ; for χ² (f*'(y) = 1 + y/2 above −2) the
mean forward residual is near 2/λ − 4: −0.67 at λ 0.6, 0 at 0.5, +1 at 0.4. Only positive residuals
are cloned, so λ 0.6 keeps the upper tail (1-7% of the transitions of a generated hopper-medium set in
its first 20k steps, where the policy learnt too little to stand), 0.5 about half, 0.4 nearly all
(close to plain BC). The `ratio` weight max(0, 1 + δ/2) averages (1−λ)/λ and is 0 only below δ = −2:
it clones nearly every transition at these λ.

Sources, line by line (maoliyuan/ODICE-Pytorch at 1692507): f* and the relu weight are `odice.py`
`f_star` / `f_prime_inverse`; the orthogonal rule is `orthogonal_true_g_update` (forward residual
against `vf_target(next_observations)`, backward against `vf_target(observations)`, both losses
scaled by λ and the backward one by η, `parallel_coef` = ⟨g_f, g_b⟩ / max(‖g_f‖², 1e-10), applied
gradient ∇(1−λ)·mean V + (1 − coef)·g_f + g_b = … + g_f + g_b⊥); `semi_g_update` and
`true_g_update` the other two rules; the target EMA `util.update_exponential_moving_average` with
β 0.005 after the value step; the policy loss mean(w · −log π(a|s)) with `policy.GaussianPolicy`
(state-independent log-std clamped to [−5, 2]).

`odice-il` is the offline imitation variant of the reference's `main_odice_il.py`: it learns from
ONE expert trajectory, the episode with index `expert_trajectory` (0-based; the paper's T ∈ {1, 10,
20, 30} picks which trajectory of the `*-expert-v2` set, not how many) with every reward set to 0:
no suboptimal data, no discriminator, no expert indicator. With r = 0 the value objective only
shapes V along the demonstration, and w = relu(γV̄(s') − V(s)) weights its states (state-level
regularisation is what the orthogonal rule adds). `expert_trajectory = -1` keeps the whole dataset
(rewards still 0). Defaults from `configs/offline_IL.yaml` and `run_offline_il.sh`: λ 0.4, η 1.0,
Adam 1e-4, 500k steps, states normalised, tanh policy mean, no LayerNorm, policy weight decay
1e-5 (hopper) / 1e-3 (walker2d, in the preset).

Deviations from the reference code, and why:
- the policy weight uses the forward residual r + γV̄(s') − V(s) under every rule; the reference's
  `true` rule weights with its own residual r + γV(s') − V(s). One weight for all rules keeps an
  ablation of the value rule an ablation of the value rule only;
- `semi` computes V̄(s') with the target net like the other rules (the reference too) and the
  orthogonal step's forward part is the semi-gradient step's gradient, computed the same way, so
  η = 0 reproduces `semi` bit for bit;
- the return range for reward scaling comes from the dataset's complete episodes, each with all its
  rewards (the reference's `return_range` runs over `qlearning_dataset`, which drops each timed-out
  episode's last transition); 1000 is the reference's max_episode_steps;
- antmaze's reward transform and the reference's per-env switches (no LayerNorm, no twin V on
  antmaze-large) are not carried: the suite has no antmaze env;
- the IL episode split uses terminals and breaks in next_obs[i] ≠ obs[i+1] (a `Dataset` has no
  timeouts column); the reference keeps a timed-out episode's last row with the next episode's first
  observation as its successor, which this does not.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ctrlrl.algos.base import Metrics
from ctrlrl.algos.off_policy import OfflineAlgorithm
from ctrlrl.core.buffers import Batch
from ctrlrl.core.config import check_choices, check_ranges
from ctrlrl.core.errors import UserError
from ctrlrl.core.nets import FlatParams, GaussianPolicy, QEnsemble, adam, gaussian_log_prob, soft_update

if TYPE_CHECKING:
    from ctrlrl.data import Dataset

RULES = ("semi", "true", "orthogonal")
DIVERGENCES = ("chi2", "kl")
WEIGHTS = ("relu", "ratio")
SCALED_RETURN_RANGE = 1000.0  # scaled rewards make the dataset's episode returns span this
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


def f_star(y: torch.Tensor, f: str) -> torch.Tensor:
    """Convex conjugate f*(y): χ² y + y²/4 for y ≥ −2 and −1 below (C¹ at −2); reverse KL exp(y − 1)."""
    if f == "kl":
        return torch.exp(y - 1.0)
    return torch.where(y >= -2.0, y + 0.25 * y * y, -torch.ones_like(y))


def extraction_weight(residual: torch.Tensor, weight: str, f: str, max_weight: float) -> torch.Tensor:
    """The policy's BC weight of a (detached) forward residual, in [0, max_weight]."""
    if weight == "relu":
        w = F.relu(residual)
    elif f == "kl":
        w = torch.exp(residual - 1.0)
    else:
        w = F.relu(1.0 + 0.5 * residual)
    return w.clamp(max=max_weight)


def project_out(g_b: torch.Tensor, g_f: torch.Tensor) -> torch.Tensor:
    """g_b⊥ = g_b − (⟨g_f, g_b⟩ / max(‖g_f‖², 1e-10))·g_f: g_b without its component along g_f."""
    return g_b - (g_f.dot(g_b) / g_f.dot(g_f).clamp(min=1e-10)) * g_f


@dataclass
class ODICEConfig:
    batch_size: int = 256  # minibatch size
    learning_rate: float = 2e-4  # Adam step size of V and the policy (the reference's value_lr = policy_lr)
    gamma: float = 0.99  # discount factor
    tau: float = 0.005  # EMA rate of the target V
    lam: float = 0.6  # λ: weight of the f-divergence term against E[V(s)]
    eta: float = 1.0  # η: scale of the backward gradient (orthogonal rule)
    rule: str = "orthogonal"  # value update: semi | true | orthogonal (O-DICE's)
    f: str = "chi2"  # f-divergence: chi2 (Pearson χ²) | kl (reverse KL)
    # policy weight: relu: clamp(relu(δ)) (reference code) | ratio: clamp(f*'(δ)) (theory)
    weight: str = "relu"
    max_weight: float = 100.0  # clamp of the policy's behaviour-cloning weight
    weight_decay: float = 1e-4  # policy Adam's coupled L2 weight decay, as the reference
    scale_rewards: bool = True  # scale rewards by 1000 / (max − min episode return of the dataset)
    normalize_states: bool = False  # standardise states by the dataset's mean and std
    twin_v: bool = True  # two V heads, each on its own residuals; the target is their minimum
    layer_norm: bool = True  # LayerNorm in V's hidden layers
    tanh_mean: bool = False  # squash the policy mean with tanh (the sample is not squashed)
    hidden_sizes: tuple[int, ...] = (256, 256)  # hidden layer widths of V
    policy_hidden_sizes: tuple[int, ...] = (1024, 1024)  # hidden layer widths of the policy mean

    def __post_init__(self) -> None:
        check_ranges(self, positive=("batch_size", "learning_rate", "tau", "max_weight"),
                     non_negative=("eta", "weight_decay"), fraction=("gamma", "tau", "lam"),
                     widths=("hidden_sizes", "policy_hidden_sizes"))
        check_choices(self, rule=RULES, f=DIVERGENCES, weight=WEIGHTS)


class ValueGrad(NamedTuple):
    """One value step's pieces; `g_f`, `g_b`, `g_b_perp` only for the orthogonal rule."""

    loss: torch.Tensor
    v_mean: torch.Tensor  # mean of V_i(s) over heads and batch, detached
    residual: torch.Tensor  # forward residual r + γ(1−d)V̄(s') − V_i(s), (heads, batch), detached
    g_f: torch.Tensor | None
    g_b: torch.Tensor | None
    g_b_perp: torch.Tensor | None


class ValueEnsemble(QEnsemble):
    """`n` state-value heads V_i(s) in one batched call, output (n, batch)."""

    def __init__(self, obs_dim: int, hidden: tuple[int, ...], n: int, layer_norm: bool):
        super().__init__(obs_dim, 0, hidden, n, "relu", layer_norm)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(obs, obs[..., :0])


class ODICE(OfflineAlgorithm):
    name = "odice"
    summary = "O-DICE: DICE value learning with the orthogonal-gradient update (Mao et al. 2024)"
    Config = ODICEConfig

    def build(self) -> None:
        cfg = self.cfg
        self.build_replay()
        self.vf = ValueEnsemble(self.obs_dim, cfg.hidden_sizes, 2 if cfg.twin_v else 1,
                                cfg.layer_norm).to(self.device)
        self.vf_target = copy.deepcopy(self.vf).requires_grad_(False)
        # nn.Linear's init and a zero log-std, as the reference's GaussianPolicy
        self.policy = GaussianPolicy(self.obs_dim, self.act_dim, cfg.policy_hidden_sizes, "relu",
                                     log_std_init=0.0, ortho_init=False).to(self.device)
        self.v_flat, self.pi_flat = FlatParams(self.vf), FlatParams(self.policy)
        self.v_opt = adam([self.v_flat.param], cfg.learning_rate)
        self.pi_opt = adam([self.pi_flat.param], cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.reward_scale: float | None = None  # set by `prepare_dataset` under scale_rewards

    def state_modules(self):
        return {"vf": self.vf, "vf_target": self.vf_target, "policy": self.policy,
                "v_opt": self.v_opt, "pi_opt": self.pi_opt, "obs_stats": self.obs_stats}

    # ---- data ----------------------------------------------------------------------------------
    def prepare_dataset(self, data: Dataset) -> Dataset:
        if not self.cfg.scale_rewards:
            return data
        returns = data.episode_returns
        span = float(returns.max() - returns.min()) if len(returns) else 0.0
        if not span > 0:
            raise UserError(f"dataset {data.source}: scale_rewards needs complete episodes with "
                            f"different returns (found {len(returns)} episode(s), return range "
                            f"{span:g}); pass --set scale_rewards=false")
        scale = SCALED_RETURN_RANGE / span
        self.reward_scale = scale
        return dataclasses.replace(data, rewards=(data.rewards * scale).astype(np.float32))

    # ---- acting --------------------------------------------------------------------------------
    def policy_mean(self, obs: torch.Tensor) -> torch.Tensor:
        mean = self.policy.net(obs)
        return torch.tanh(mean) if self.cfg.tanh_mean else mean

    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy_mean(self.obs_stats(obs))

    # ---- learning ------------------------------------------------------------------------------
    def policy_loss(self, obs: torch.Tensor, actions: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        log_std = self.policy.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        return -(w * gaussian_log_prob(actions, self.policy_mean(obs), log_std)).mean()

    def weights(self, b: Batch, residual: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample BC weights, the mean over V's heads of each head's clamped weight."""
        if residual is None:
            with torch.no_grad():
                residual = self.forward_residual(b, self.vf(b.obs))
        cfg = self.cfg
        return extraction_weight(residual, cfg.weight, cfg.f, cfg.max_weight).mean(0)

    def forward_residual(self, b: Batch, v: torch.Tensor) -> torch.Tensor:
        """r + γ(1−d)·V̄(s') − V_i(s), shape (heads, batch)."""
        with torch.no_grad():
            target_next = self.vf_target(b.next_obs).min(0).values
        return b.rewards + self.cfg.gamma * (1.0 - b.terminated) * target_next - v

    def value_gradient(self, b: Batch) -> ValueGrad:
        """Leave the rule's value gradient in `self.v_flat.param.grad`; no optimiser step."""
        cfg, flat = self.cfg, self.v_flat
        lam = cfg.lam
        v = self.vf(b.obs)
        residual = self.forward_residual(b, v)
        loss_v = (1.0 - lam) * v.mean()
        if cfg.rule == "true":
            v_next = self.vf(b.next_obs)
            delta = b.rewards + cfg.gamma * (1.0 - b.terminated) * v_next - v
            loss = loss_v + lam * f_star(delta, cfg.f).mean()
            flat.zero_grad()
            loss.backward()
            return ValueGrad(loss.detach(), v.detach().mean(), residual.detach(), None, None, None)
        loss_f = lam * f_star(residual, cfg.f).mean()
        loss = loss_v + loss_f
        if cfg.rule == "semi":
            flat.zero_grad()
            loss.backward()
            return ValueGrad(loss.detach(), v.detach().mean(), residual.detach(), None, None, None)
        # orthogonal: g_f and g_b by themselves, then the semi-gradient step's gradient + g_b⊥
        with torch.no_grad():
            target_v = self.vf_target(b.obs).min(0).values
        v_next = self.vf(b.next_obs)
        backward = b.rewards + cfg.gamma * (1.0 - b.terminated) * v_next - target_v
        loss_b = lam * cfg.eta * f_star(backward, cfg.f).mean()
        flat.zero_grad()
        loss_f.backward(retain_graph=True)
        g_f = flat.param.grad.clone()
        flat.zero_grad()
        loss_b.backward(retain_graph=True)  # compiled, the three losses share one graph
        g_b = flat.param.grad.clone()
        flat.zero_grad()
        loss.backward()
        g_b_perp = project_out(g_b, g_f)
        flat.param.grad.add_(g_b_perp)
        return ValueGrad(loss.detach(), v.detach().mean(), residual.detach(), g_f, g_b, g_b_perp)

    def update(self, b: Batch) -> Metrics:
        cfg = self.cfg
        grad = self.value_gradient(b)
        self.v_opt.step()
        soft_update(self.vf_target, self.vf, cfg.tau)

        w = self.weights(b, grad.residual)
        pi_loss = self.policy_loss(b.obs, b.actions, w)
        self.pi_flat.zero_grad()
        pi_loss.backward()
        self.pi_opt.step()

        m: Metrics = {} if self.reward_scale is None else {"reward_scale": self.reward_scale}
        m["value_loss"] = grad.loss
        m["policy_loss"] = pi_loss.detach()
        m["v_mean"] = grad.v_mean
        m["residual_mean"] = grad.residual.mean()
        m["weight_mean"] = w.mean()
        m["weight_zero_frac"] = (w == 0).float().mean()
        if grad.g_f is not None:
            m["grad_cosine"] = F.cosine_similarity(grad.g_f, grad.g_b, dim=0, eps=1e-12)
        return m


@dataclass
class ODICEILConfig(ODICEConfig):
    """The offline imitation variant's defaults (the reference's `configs/offline_IL.yaml`)."""

    learning_rate: float = 1e-4
    lam: float = 0.4
    eta: float = 1.0
    # policy Adam's coupled L2 weight decay (hopper's; walker2d's 1e-3 is in the preset)
    weight_decay: float = 1e-5
    # scale rewards by 1000 / (max − min episode return); moot here: every reward is 0
    scale_rewards: bool = False
    normalize_states: bool = True
    layer_norm: bool = False
    tanh_mean: bool = True
    expert_trajectory: int = 1  # index of the one episode learnt from; -1: every transition

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, episode_index=("expert_trajectory",))


class ODICEIL(ODICE):
    """O-DICE for offline imitation: one expert trajectory, rewards unused (module docstring)."""

    name = "odice-il"
    summary = "O-DICE for offline imitation from one expert trajectory, rewards unused"
    Config = ODICEILConfig

    def prepare_dataset(self, data: Dataset) -> Dataset:
        from ctrlrl.data import one_episode

        data = one_episode(data, self.cfg.expert_trajectory, "expert_trajectory")
        return dataclasses.replace(data, rewards=np.zeros_like(data.rewards))
