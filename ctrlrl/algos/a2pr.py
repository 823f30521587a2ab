"""A2PR: Adaptive Advantage-guided Policy Regularization (Liu et al., ICML 2024).

TD3+BC's learner (twin critics, target smoothing, delayed actor, states standardised by the
dataset's mean and std + 1e-3) plus a state-value net V and a BCQ-style conditional VAE that learns
only the dataset's better-than-average actions. Per minibatch (s, a, r, s', d):

    critic (TD3)   a' = clip(π_targ(s') + clip(N(0, 0.2²), ±0.5), ±1)
                   y  = r + γ(1−d)·min_i Q_targ,i(s', a');      L_Q = Σ_i mean (Q_i(s, a) − y)²
    value          L_V = mean (V(s) − min(y, r + γ(1−d)·min_i Q_i(s', a')))²
                   (Q_i: the online critic just updated, at the same a'); A(s, ·) = Q1(s, ·) − V(s)
    VAE            (â, μ, σ) = VAE(s, a);  L_VAE = mean[w_vae·1[A(s, a) > ε_A]·(â − a)²] + 0.5·KL
    actor (every 2 steps)
                   ã = VAE(s, π(s))   (encode (s, π(s)), sample z ~ N(μ, σ²), decode with s)
                   target = ã where A(s, ã) ≥ A(s, a), else a
                   weight = mask·1[A(s, ã) ≥ 0 or A(s, a) > 0]                  ∈ {0, mask}
                   L_π = −λ·mean Q1(s, π(s)) + mean[weight·(π(s) − target)²],  λ = α / mean|Q1(s, π(s))|
                   then Polyak τ = 0.005 on the critic and actor targets.

The BC term differentiates through ã: the VAE's reconstruction of π(s) is a function of π(s), so
its gradient reaches π both directly and through the VAE (the VAE's own parameters are not stepped
by the actor loss). Setting `vae_target_grad: false` makes ã a constant target instead.

Each line follows the reference code, ltlhuuu/A2PR `A2PR.py` at f92a2a4 (the paper's text was not
at hand when this was written, so the reference decides):
- critic target and loss: lines 111-122 and 127;
- value target min(y, r + γ(1−d)·min Q(s', a')) with the updated online critic: lines 134-142;
- VAE loss, gated by Q1(s, a) > V(s) (ε_A = 0) and weighted by w_vae, KL weight 0.5: lines 148-156;
- actor every `policy_freq` = 2 steps, counting from the first update (`total_it % 2 == 0` after
  the increment, i.e. updates 2, 4, …): line 167; λ = α / mean|Q1(s, π(s))| detached: line 172;
- ã = VAE(s, π(s)) without detaching: line 174; target selection with ≥ toward ã: lines 179-180;
- the weight `mask * (adv_pi + adv_action)`: line 184. Both indicators are bool tensors and torch
  adds bools as a logical or, so the weight is mask·1[A(s, ã) ≥ 0 or A(s, a) > 0] ∈ {0, mask}.
  Read as a count, the weight would be ∈ {0, mask, 2·mask}; `bc_weight: count` gives that;
- Polyak τ on critic and actor targets inside the delayed branch: lines 206-214.
The advantages of the VAE gate and of the actor use V(s) as computed before this step's value
update and Q1 after this step's critic update, as there. Defaults are the reference's: Adam 3e-4
(VAE 1e-3, Adam's default there), batch 256, actor 3×256, critics and value 4×256, γ 0.99, α 2.5,
w_vae 1, mask 1, 1M gradient steps.

Squared norms are means over action components, as in TD3+BC (`F.mse_loss`) and the reference
code; the KL of N(μ, σ²) to N(0, 1) is likewise averaged over batch and latent components. The VAE
is BCQ's (latent 2·act_dim, 750-750 ReLU, log σ clamped to [−4, 15]; `VAE.decode` without a latent
draws z ~ N(0, 1) clipped to ±0.5, for sampling; the update never does) with its own Adam at 1e-3.

Per-dataset settings. The preset files key entries by env id, while the paper tunes α, w_vae, mask
and γ per *dataset* (hopper-medium and hopper-medium-expert share Hopper-v5). So the table of the
reference repository's example commands lives here as `PAPER_SETTINGS`, and the config field
`paper_settings` names a row (`--set paper_settings=hopper-medium`; `d4rl:hopper-medium-v2` works
too). `__post_init__` copies the row into the four fields, so config.yaml and checkpoints hold the
values in effect; a field given another value than both its default and the row's is an error
rather than silently overridden (a value equal to the default cannot be told from no value and
yields to the row). Unknown names are an error that lists the known ones. The rows are the
example commands' current values; the reference README's history also shows hopper-medium with γ 0.99 and
halfcheetah-medium-expert with mask 10.

Variants that keep earlier behaviour reachable:
- `vae_target_grad: false`: ã is a constant (no gradient through the VAE's reconstruction);
- `bc_weight: count`: weight = mask·(1[A(s, ã) ≥ 0] + 1[A(s, a) > 0]) ∈ {0, mask, 2·mask}.

Deviations from the reference code, and why:
- The reference's VAE takes the env's max action; here actions are always in [−1, 1] (the offline
  loop rescales the dataset's actions), so the decoder ends in a plain tanh.
- Q1(s, a) for the VAE gate and for the actor's A(s, a) is evaluated once per step (the critic does
  not change between the two uses), and min Q(s', a') shares that batched critic call.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ctrlrl.algos.base import Metrics
from ctrlrl.algos.off_policy import OfflineAlgorithm
from ctrlrl.algos.td3 import TD3, TD3LearnerConfig
from ctrlrl.core.buffers import Batch
from ctrlrl.core.config import check_choices, check_ranges
from ctrlrl.core.errors import UserError
from ctrlrl.core.nets import MLP, FlatParams, adam, soft_update

# (α, w_vae, mask, γ) per D4RL-v2 dataset, from the reference repository's example commands
PAPER_SETTINGS: dict[str, dict[str, float]] = {
    name: dict(zip(("alpha", "vae_weight", "mask", "gamma"), row, strict=True))
    for name, row in {
        "hopper-random": (2.5, 1.5, 1.5, 0.995),
        "hopper-medium": (2.5, 1.0, 0.4, 0.995),
        "hopper-medium-replay": (2.5, 1.5, 0.5, 0.99),
        "hopper-medium-expert": (2.5, 1.0, 4.0, 0.99),
        "halfcheetah-medium": (40.0, 1.0, 1.0, 0.99),
        "halfcheetah-medium-replay": (40.0, 1.5, 0.8, 0.995),
        "halfcheetah-medium-expert": (40.0, 1.0, 15.0, 0.99),
        "walker2d-medium": (2.5, 1.5, 1.0, 0.99),
        "walker2d-medium-replay": (2.5, 1.5, 1.2, 0.995),
        "walker2d-medium-expert": (2.5, 1.0, 0.8, 0.99),
    }.items()}


BC_WEIGHTS = ("any", "count")


def paper_settings_key(name: str) -> str:
    """`d4rl:Hopper-Medium-v2` → `hopper-medium`: the `PAPER_SETTINGS` row a name means."""
    return re.sub(r"-v\d+$", "", name.strip().lower().removeprefix("d4rl:"))


@dataclass
class A2PRConfig(TD3LearnerConfig):
    learning_rate: float = 3e-4  # Adam step size of the actor, the critics and the value net
    vae_learning_rate: float = 1e-3  # Adam step size of the VAE
    alpha: float = 2.5  # λ = α / mean|Q1(s, π(s))|: weight of the Q term against the regulariser
    vae_weight: float = 1.0  # w_vae, weight of the VAE's reconstruction of high-advantage actions
    mask: float = 1.0  # scale of the regulariser's weights (see bc_weight)
    adv_threshold: float = 0.0  # ε_A: the VAE learns actions with A(s, a) > ε_A
    vae_target_grad: bool = True  # the BC term differentiates through ã = VAE(s, π(s)); false: ã constant
    bc_weight: str = "any"  # any: mask·1[A(s,ã) ≥ 0 or A(s,a) > 0] | count: mask·(sum of the two)
    normalize_states: bool = True  # standardise states by the dataset's mean and std + 1e-3
    actor_hidden_sizes: tuple[int, ...] = (256, 256, 256)  # hidden layer widths of the actor
    critic_hidden_sizes: tuple[int, ...] = (256, 256, 256, 256)  # hidden layer widths of the twin Q and of V
    vae_hidden_sizes: tuple[int, ...] = (750, 750)  # hidden layer widths of the VAE's encoder and decoder
    paper_settings: str = ""  # a PAPER_SETTINGS row (e.g. hopper-medium): sets α, w_vae, mask, γ

    def __post_init__(self) -> None:
        if self.paper_settings:
            self._apply_paper_settings()
        super().__post_init__()
        check_ranges(self, positive=("vae_learning_rate",),
                     non_negative=("alpha", "vae_weight", "mask"),
                     widths=("actor_hidden_sizes", "critic_hidden_sizes", "vae_hidden_sizes"))
        check_choices(self, bc_weight=BC_WEIGHTS)

    def _apply_paper_settings(self) -> None:
        key = paper_settings_key(self.paper_settings)
        if key not in PAPER_SETTINGS:
            raise UserError(f"setting paper_settings={self.paper_settings!r} is not known; use one "
                            f"of {', '.join(PAPER_SETTINGS)} (or leave it empty)")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for field, value in PAPER_SETTINGS[key].items():
            given = getattr(self, field)
            if given not in (defaults[field], value):
                raise UserError(f"paper_settings={key} sets {field}={value}, but {field}={given} "
                                "was given too; drop one of the two")
            setattr(self, field, value)
        self.paper_settings = key


class VAE(nn.Module):
    """BCQ's conditional VAE of actions in [-1, 1] given the state (Fujimoto et al. 2019)."""

    LOG_STD_MIN, LOG_STD_MAX = -4.0, 15.0

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = MLP(obs_dim + act_dim, hidden, 2 * latent_dim)  # → (μ, log σ)
        self.decoder = MLP(obs_dim + latent_dim, hidden, act_dim)

    def forward(self, obs: torch.Tensor, action: torch.Tensor, detach_params: bool = False):
        """(reconstruction from z ~ N(μ, σ²), μ, log σ) of `action` at `obs`; `detach_params`:
        gradients reach the inputs only (`MLP.forward`)."""
        mean, log_std = self.encoder(torch.cat([obs, action], -1), detach_params).chunk(2, -1)
        log_std = log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)
        z = mean + torch.exp(log_std) * torch.randn_like(mean)
        return self.decode(obs, z, detach_params), mean, log_std

    def decode(self, obs: torch.Tensor, z: torch.Tensor | None = None,
               detach_params: bool = False) -> torch.Tensor:
        """Action for latent `z`; without one, z ~ N(0, 1) clipped to ±0.5 (BCQ's sampling)."""
        if z is None:
            z = torch.randn(*obs.shape[:-1], self.latent_dim, device=obs.device).clamp(-0.5, 0.5)
        return torch.tanh(self.decoder(torch.cat([obs, z], -1), detach_params))


class A2PR(OfflineAlgorithm, TD3):
    """TD3's critic target and loss (`bellman_target`, `critic_loss`) with the offline loop, plus
    the value net, the advantage-masked VAE and the advantage-guided actor loss."""

    # bf16 ended no worse than fp32 on generated hopper-medium (5 seeds, 30k steps; docs/speed.md),
    # 1.65x faster there
    default_precision = "bf16"

    name = "a2pr"
    summary = "A2PR: TD3+BC regularised towards a VAE's high-advantage actions (Liu et al. 2024)"
    Config = A2PRConfig

    def build(self) -> None:
        cfg = self.cfg
        self.build_replay()
        self.build_networks(cfg.actor_hidden_sizes, cfg.critic_hidden_sizes)
        obs_dim, act_dim, device = self.obs_dim, self.act_dim, self.device
        self.value = MLP(obs_dim, cfg.critic_hidden_sizes, 1).to(device)
        self.vae = VAE(obs_dim, act_dim, cfg.vae_hidden_sizes, 2 * act_dim).to(device)
        self.value_flat, self.vae_flat = FlatParams(self.value), FlatParams(self.vae)
        self.value_opt = adam([self.value_flat.param], cfg.learning_rate)
        self.vae_opt = adam([self.vae_flat.param], cfg.vae_learning_rate)

    def state_modules(self):
        return {**super().state_modules(), "value": self.value, "value_opt": self.value_opt,
                "vae": self.vae, "vae_opt": self.vae_opt}

    def state_value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.value(obs).squeeze(-1)

    def update(self, b: Batch) -> Metrics:
        cfg = self.cfg
        next_action, y = self.bellman_target(b)
        critic_loss = self.critic_loss(b, y)
        self.critic_flat.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()

        value_target, q_data = self.value_target(b, next_action, y)
        v = self.state_value(b.obs)
        value_loss = F.mse_loss(v, value_target)
        self.value_flat.zero_grad()
        value_loss.backward()
        self.value_opt.step()
        v = v.detach()

        vae_loss, vae_info = self.vae_loss(b, q_data - v)
        self.vae_flat.zero_grad()
        vae_loss.backward()
        self.vae_opt.step()
        metrics = {"critic_loss": critic_loss.detach(), "value_loss": value_loss.detach(),
                   "vae_loss": vae_loss.detach(), **vae_info}

        if self.update_variant():
            actor_loss, actor_info = self.actor_loss(b, v)
            self.actor_flat.zero_grad()
            actor_loss.backward()
            self.actor_opt.step()
            soft_update(self.actor_target, self.actor, cfg.tau)
            soft_update(self.critic_target, self.critic, cfg.tau)
            metrics |= {**actor_info, "actor_loss": actor_loss.detach()}
        return metrics

    def value_target(self, b: Batch, next_action: torch.Tensor, y: torch.Tensor):
        """(min(y, r + γ(1−d)·min_i Q_i(s', a')), Q1(s, a)) with the online critic, no gradient.

        Q at (s, a) and at (s', a') come from one batched critic call.
        """
        n = b.rewards.shape[0]
        with torch.no_grad():
            q = self.critic(torch.cat([b.obs, b.next_obs]), torch.cat([b.actions, next_action]))
            online_y = b.rewards + self.cfg.gamma * (1 - b.terminated) * q[:, n:].min(0).values
            return torch.minimum(y, online_y), q[0, :n]

    def vae_loss(self, b: Batch, advantage: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
        """ELBO loss whose reconstruction term counts only actions with A(s, a) > ε_A; diagnostics:
        that reconstruction term."""
        cfg = self.cfg
        recon, mean, log_std = self.vae(b.obs, b.actions)
        keep = cfg.vae_weight * (advantage > cfg.adv_threshold).float()
        recon_loss = (keep[:, None] * (recon - b.actions) ** 2).mean()
        kl = -0.5 * (1 + 2 * log_std - mean**2 - torch.exp(2 * log_std)).mean()
        return recon_loss + 0.5 * kl, {"recon_loss": recon_loss.detach()}

    def bc_target(self, b: Batch, pi: torch.Tensor, v: torch.Tensor):
        """(target, weight, chose_vae) of the regulariser for policy actions `pi`, given V(s) = `v`.

        ã = VAE(s, π(s)) replaces the dataset's action where its advantage is at least as high.
        A sample is weighted `mask` when either ã has a non-negative or a has a positive advantage
        (`bc_weight: count`: `mask` for each of the two).
        """
        n = pi.shape[0]
        with torch.set_grad_enabled(self.cfg.vae_target_grad and torch.is_grad_enabled()):
            # the actor loss does not step the VAE: no gradients for its weights
            recon = self.vae(b.obs, pi, detach_params=True)[0]
        with torch.no_grad():
            q = self.critic(torch.cat([b.obs, b.obs]), torch.cat([recon, b.actions]))[0]
            adv_vae, adv_data = q[:n] - v, q[n:] - v
            chose_vae = adv_vae >= adv_data
            vae_ok, data_ok = adv_vae >= 0, adv_data > 0
            if self.cfg.bc_weight == "any":
                weight = self.cfg.mask * (vae_ok | data_ok).float()
            else:
                weight = self.cfg.mask * (vae_ok.float() + data_ok.float())
        target = torch.where(chose_vae[:, None], recon, b.actions)
        return target, weight, chose_vae

    def actor_loss(self, b: Batch, v: torch.Tensor | None = None) -> tuple[torch.Tensor, Metrics]:
        """−λ·mean Q1(s, π(s)) + weighted squared distance to the advantage-selected target;
        diagnostics: that distance term, the share of VAE targets, the share of samples the
        regulariser leaves out (weight 0: only the Q term acts on them) and λ.

        `v`: V(s) of the batch (default: the value net's current output).
        """
        if v is None:
            with torch.no_grad():
                v = self.state_value(b.obs)
        pi = self.actor(b.obs)
        q = self.critic(b.obs, pi, detach_params=True)[0]
        lam = self.cfg.alpha / q.abs().mean().detach()
        target, weight, chose_vae = self.bc_target(b, pi, v)
        bc_loss = (weight[:, None] * (pi - target) ** 2).mean()
        info = {"bc_loss": bc_loss.detach(), "vae_target_fraction": chose_vae.float().mean(),
                "bc_weight_zero_frac": (weight == 0).float().mean(), "lambda": lam}
        return -lam * q.mean() + bc_loss, info
