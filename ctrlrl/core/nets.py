"""Networks and policy heads.

Log-probabilities are written out in closed form instead of going through `torch.distributions`:
the formulas are short, and skipping the distribution objects' validation and allocation is a
measurable share of a small-MLP update on CPU.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctrlrl.core.errors import UserError

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
ACTIVATIONS = {"tanh": torch.tanh, "relu": F.relu, "elu": F.elu, "leaky_relu": F.leaky_relu}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise UserError(f"activation {name!r} is not known; use one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLP(nn.Module):
    """Linear → [LayerNorm] → activation, repeated; a plain final linear layer when `out_dim` is set.

    The forward pass calls `F.linear` in a loop rather than chaining submodules: for the small
    networks of RL, per-module call overhead is about half the cost of a CPU forward pass.
    Hidden layers compute in `compute_dtype` (see `set_compute_dtype`); the output layer, and
    the output itself, are float32. `detach_params=True` evaluates with the weights cut from the
    graph: gradients reach the input only (as `QEnsemble`'s).
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int | None,
                 act: str = "relu", layer_norm: bool = False):
        super().__init__()
        dims = [in_dim, *hidden] + ([out_dim] if out_dim is not None else [])
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
        self.norms = nn.ModuleList(nn.LayerNorm(h) for h in hidden) if layer_norm else None
        self.act = activation(act)
        self.n_hidden = len(hidden)
        self.compute_dtype = torch.float32

    def forward(self, x: torch.Tensor, detach_params: bool = False) -> torch.Tensor:
        low = self.compute_dtype if self.compute_dtype != torch.float32 else None
        for i, layer in enumerate(self.layers):
            hidden = i < self.n_hidden
            w, b = layer.weight, layer.bias
            if detach_params:
                w, b = w.detach(), b.detach()
            if low is not None:  # casts are differentiable: float32 weights get float32 grads
                x, w, b = (x.to(low), w.to(low), b.to(low)) if hidden else (x.float(), w, b)
            x = F.linear(x, w, b)
            if hidden:
                if self.norms is not None:
                    norm = self.norms[i]
                    g, s = norm.weight, norm.bias
                    if detach_params:
                        g, s = g.detach(), s.detach()
                    if low is not None:
                        g, s = g.to(low), s.to(low)
                    x = F.layer_norm(x, norm.normalized_shape, g, s, norm.eps)
                x = self.act(x)
        return x.float()  # the identity in float32; a trunk without output layer ends in bf16


COMPUTE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # of the `precision` setting


def set_compute_dtype(module: nn.Module, dtype: torch.dtype) -> None:
    """Mixed precision for every `MLP` and `QEnsemble` inside `module`: their hidden layers
    multiply and activate in `dtype` (bfloat16) with the float32 weights cast on each forward;
    the output layers, everything outside the networks (losses, targets, log-probabilities,
    Polyak averaging, normalisers) and the weights and optimiser state stay float32."""
    for m in module.modules():
        if isinstance(m, (MLP, QEnsemble)):
            m.compute_dtype = dtype



def orthogonal_init(module: nn.Module, gain: float = math.sqrt(2), last_gain: float | None = None):
    """Orthogonal weights, zero biases (the PPO implementation detail); `last_gain` for the head."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    for i, layer in enumerate(linears):
        g = last_gain if (last_gain is not None and i == len(linears) - 1) else gain
        nn.init.orthogonal_(layer.weight, g)
        nn.init.zeros_(layer.bias)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Sum over the last axis of log N(x; mean, exp(log_std)²)."""
    z = (x - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - _LOG_SQRT_2PI).sum(-1)


class GaussianPolicy(nn.Module):
    """Diagonal Gaussian with a state-independent log-std (PPO, TRPO, MDPO)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], act: str = "tanh",
                 log_std_init: float = 0.0, ortho_init: bool = True):
        super().__init__()
        self.net = MLP(obs_dim, hidden, act_dim, act)
        self.log_std = nn.Parameter(torch.full((act_dim,), log_std_init))
        if ortho_init:
            orthogonal_init(self.net, last_gain=0.01)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.net(obs)
        noise = torch.randn_like(mean)
        action = mean + torch.exp(self.log_std) * noise
        # log N(action) from the standard-normal draw directly: (action − mean)/std is `noise`
        return action, (-0.5 * noise.pow(2) - self.log_std - _LOG_SQRT_2PI).sum(-1)

    def log_prob_entropy(self, obs: torch.Tensor, action: torch.Tensor):
        return self.log_prob_entropy_of(self.dist_params(obs), action)

    @staticmethod
    def log_prob_entropy_of(params: tuple[torch.Tensor, torch.Tensor], action: torch.Tensor):
        """log π(action) and entropy from `dist_params` (one forward serves both and the KL)."""
        mean, log_std = params
        entropy = (log_std + 0.5 + _LOG_SQRT_2PI).sum(-1)
        return gaussian_log_prob(action, mean, log_std), entropy

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)

    def dist_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.net(obs)
        return mean, self.log_std.expand_as(mean)

    @staticmethod
    def kl(p: tuple[torch.Tensor, torch.Tensor], q: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """KL(p ‖ q) per state, closed form for diagonal Gaussians given by `dist_params`."""
        (mp, lp), (mq, lq) = p, q
        return (lq - lp + 0.5 * (torch.exp(2 * (lp - lq)) + ((mp - mq) * torch.exp(-lq)).pow(2))
                - 0.5).sum(-1)


def categorical_kl(logp: torch.Tensor, logq: torch.Tensor, dims: tuple[int, ...] = (-1,)) -> torch.Tensor:
    """KL(p ‖ q) of categoricals given as log-probabilities; impossible actions (−inf) add 0."""
    return (logp.exp() * (logp - logq)).nan_to_num(nan=0.0).sum(dims)


class CategoricalPolicy(nn.Module):
    """Softmax over `n` actions."""

    def __init__(self, obs_dim: int, n: int, hidden: Sequence[int], act: str = "tanh",
                 ortho_init: bool = True):
        super().__init__()
        self.net = MLP(obs_dim, hidden, n, act)
        if ortho_init:
            orthogonal_init(self.net, last_gain=0.01)

    def sample(self, obs: torch.Tensor):
        logp_all = torch.log_softmax(self.net(obs), -1)
        action = torch.multinomial(logp_all.exp(), 1).squeeze(-1)
        return action, logp_all.gather(-1, action.unsqueeze(-1)).squeeze(-1)

    def log_prob_entropy(self, obs: torch.Tensor, action: torch.Tensor):
        return self.log_prob_entropy_of(self.dist_params(obs), action)

    @staticmethod
    def log_prob_entropy_of(logp_all: torch.Tensor, action: torch.Tensor):
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logp_all.gather(-1, action.long().unsqueeze(-1)).squeeze(-1), entropy

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).argmax(-1)

    def dist_params(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.net(obs), -1)

    @staticmethod
    def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return categorical_kl(p, q)


class MultiCategoricalPolicy(nn.Module):
    """Independent categoricals, one per action component (MultiDiscrete); one shared trunk."""

    def __init__(self, obs_dim: int, nvec: Sequence[int], hidden: Sequence[int], act: str = "tanh",
                 ortho_init: bool = True):
        super().__init__()
        self.nvec = [int(n) for n in nvec]
        self.max_n = max(self.nvec)
        self.net = MLP(obs_dim, hidden, len(self.nvec) * self.max_n, act)
        # components with fewer choices than max_n get -inf logits on the padding
        pad = torch.zeros(len(self.nvec), self.max_n)
        for i, n in enumerate(self.nvec):
            pad[i, n:] = float("-inf")
        self.register_buffer("pad", pad)
        if ortho_init:
            orthogonal_init(self.net, last_gain=0.01)

    def _log_probs(self, obs: torch.Tensor) -> torch.Tensor:
        logits = self.net(obs).view(*obs.shape[:-1], len(self.nvec), self.max_n) + self.pad
        return torch.log_softmax(logits, -1)

    def sample(self, obs: torch.Tensor):
        logp_all = self._log_probs(obs)
        flat = logp_all.exp().reshape(-1, self.max_n)
        action = torch.multinomial(flat, 1).view(logp_all.shape[:-1])
        return action, logp_all.gather(-1, action.unsqueeze(-1)).squeeze(-1).sum(-1)

    def log_prob_entropy(self, obs: torch.Tensor, action: torch.Tensor):
        return self.log_prob_entropy_of(self._log_probs(obs), action)

    @staticmethod
    def log_prob_entropy_of(logp_all: torch.Tensor, action: torch.Tensor):
        logp, entropy = MultiCategoricalPolicy.factor_log_prob_entropy_of(logp_all, action)
        return logp.sum(-1), entropy.sum(-1)

    def factor_log_prob_entropy(self, obs: torch.Tensor, action: torch.Tensor):
        """Per-component log-probabilities and entropies, each (..., n_components)."""
        return self.factor_log_prob_entropy_of(self._log_probs(obs), action)

    @staticmethod
    def factor_log_prob_entropy_of(logp_all: torch.Tensor, action: torch.Tensor):
        entropy = -(logp_all.exp() * logp_all.nan_to_num(neginf=0.0)).sum(-1)
        return logp_all.gather(-1, action.long().unsqueeze(-1)).squeeze(-1), entropy

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        return self._log_probs(obs).argmax(-1)

    def dist_params(self, obs: torch.Tensor) -> torch.Tensor:
        return self._log_probs(obs)

    @staticmethod
    def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return categorical_kl(p, q, (-1, -2))


def make_policy(space: gym.Space, obs_dim: int, hidden: Sequence[int], act: str,
                ortho_init: bool = True, log_std_init: float = 0.0) -> nn.Module:
    """The stochastic policy head that fits an action space."""
    if isinstance(space, gym.spaces.Box):
        return GaussianPolicy(obs_dim, int(np.prod(space.shape)), hidden, act, log_std_init,
                              ortho_init)
    if isinstance(space, gym.spaces.Discrete):
        return CategoricalPolicy(obs_dim, int(space.n), hidden, act, ortho_init)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return MultiCategoricalPolicy(obs_dim, space.nvec.ravel().tolist(), hidden, act, ortho_init)
    raise UserError(f"action space {space} is not supported; use Box, Discrete or MultiDiscrete")


class TanhSample(NamedTuple):
    """A reparameterised draw of `TanhGaussianPolicy`: the action tanh(u), its log-probability,
    and the pre-tanh u (another policy scores the same action through it)."""

    action: torch.Tensor
    log_prob: torch.Tensor
    pre_tanh: torch.Tensor


class TanhGaussianPolicy(nn.Module):
    """Squashed Gaussian with state-dependent log-std (SAC); actions in [-1, 1]."""

    LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], act: str = "relu"):
        super().__init__()
        self.trunk = MLP(obs_dim, hidden, None, act)
        self.head = nn.Linear(hidden[-1], 2 * act_dim)

    def _params(self, obs: torch.Tensor):
        mean, log_std = self.head(self.trunk(obs)).chunk(2, -1)
        return mean, log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)

    def dist_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, clamped log-std) of the pre-tanh Gaussian."""
        return self._params(obs)

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised sample and its log-probability (with the tanh change of variables)."""
        action, log_prob, _ = self.rsample(obs)
        return action, log_prob

    def rsample(self, obs: torch.Tensor) -> TanhSample:
        """`sample` plus the pre-tanh draw u, so another policy can score the same action."""
        mean, log_std = self._params(obs)
        u = mean + torch.exp(log_std) * torch.randn_like(mean)
        return TanhSample(torch.tanh(u), self._log_prob(u, mean, log_std), u)

    def log_prob_pre_tanh(self, obs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """log π(tanh(u) | obs) of an action given by its pre-tanh value u."""
        return self._log_prob(u, *self._params(obs))

    @staticmethod
    def _log_prob(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
        # log(1 - tanh(u)^2) = 2·(log 2 − u − softplus(−2u)), stable for large |u|
        correction = 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))
        return gaussian_log_prob(u, mean, log_std) - correction.sum(-1)

    def mode(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self._params(obs)[0])


class DeterministicPolicy(nn.Module):
    """tanh-bounded deterministic actor (TD3, TD3+BC); actions in [-1, 1]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], act: str = "relu"):
        super().__init__()
        self.net = MLP(obs_dim, hidden, act_dim, act)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs))

    mode = forward


class QEnsemble(nn.Module):
    """`n` Q-networks Q_i(s, a) evaluated in one batched call, output shape (n, batch).

    Weights are stacked per member and applied with batched matmuls, so twin critics cost one
    call instead of two. Initialised like `nn.Linear` (uniform ±1/√fan_in), member by member.
    `detach_params=True` evaluates with the weights cut from the graph: the actor's loss then
    back-propagates into actions only, with no wasted weight gradients for the critic.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], n: int = 2,
                 act: str = "relu", layer_norm: bool = False):
        super().__init__()
        self.n = n
        dims = [obs_dim + act_dim, *hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(dims):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(n, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n, 1, fan_out).uniform_(-bound, bound)))
        # per-member LayerNorm gains and shifts, shape (n, 1, width)
        self.ln_gains = nn.ParameterList(nn.Parameter(torch.ones(n, 1, h)) for h in hidden) \
            if layer_norm else None
        self.ln_shifts = nn.ParameterList(nn.Parameter(torch.zeros(n, 1, h)) for h in hidden) \
            if layer_norm else None
        self.act = activation(act)
        self.compute_dtype = torch.float32  # of the hidden layers (`set_compute_dtype`)

    def forward(self, obs: torch.Tensor, action: torch.Tensor,
                detach_params: bool = False) -> torch.Tensor:
        x = torch.cat([obs, action], -1)
        h = x.unsqueeze(0).expand(self.n, *x.shape)
        low = self.compute_dtype if self.compute_dtype != torch.float32 else None
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if detach_params:
                w, b = w.detach(), b.detach()
            if low is None:
                h = torch.baddbmm(b, h, w)
            elif i < last:
                h = torch.baddbmm(b.to(low), h.to(low), w.to(low))
            else:  # the float32 head as a product and sum (baddbmm is 2-3x slower for one column)
                h = (h.float() * w.transpose(1, 2)).sum(-1, keepdim=True) + b
            if i < last:
                if self.ln_gains is not None:
                    g, s = self.ln_gains[i], self.ln_shifts[i]
                    if detach_params:
                        g, s = g.detach(), s.detach()
                    if low is not None:
                        g, s = g.to(low), s.to(low)
                    h = F.layer_norm(h, h.shape[-1:]) * g + s
                h = self.act(h)
        return h.squeeze(-1)


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging θ_targ ← (1 − τ)·θ_targ + τ·θ, in one fused call over all tensors."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


class Standardizer(nn.Module):
    """(x − mean) / std with frozen statistics: the identity until `fit`; saved with the model."""

    def __init__(self, dim: int, eps: float = 1e-3):
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, x: torch.Tensor) -> None:
        """Statistics of the rows of `x`: population std + eps (TD3+BC's state normalisation)."""
        self.mean.copy_(x.mean(0))
        self.std.copy_(x.std(0, correction=0) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def adam(params, lr: float, eps: float = 1e-8, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam with the fused kernel (one call for all parameters; CPU and CUDA)."""
    return torch.optim.Adam(params, lr=lr, eps=eps, weight_decay=weight_decay, fused=True)


class FlatParams:
    """The parameters of some modules re-seated as views into one flat tensor, grads likewise.

    Small RL networks spend most of an update in per-tensor overhead: zeroing, norm-clipping and
    Adam each touch a dozen tensors. With one flat parameter they are one op each, and the
    optimiser sees a single tensor. Build it after `.to(device)` and after copying any target
    networks; zero grads with `zero_grad()`. Moving or casting the modules afterwards, or a
    `backward(create_graph=True)` (which assigns grads out of place), unhooks the views.
    """

    def __init__(self, *modules: nn.Module):
        params = [p for m in modules for p in m.parameters()]
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        grad = torch.zeros_like(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.data = flat[offset:offset + n].view_as(p)
            p.grad = grad[offset:offset + n].view_as(p)  # backward accumulates into this view
            offset += n
        self.param = nn.Parameter(flat)  # shares storage with the modules' parameters
        self.param.grad = self._grad = grad

    def zero_grad(self) -> None:
        # re-attach in case an optimizer's zero_grad(set_to_none=True) dropped the flat grad
        self.param.grad = self._grad
        self._grad.zero_()

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Scale the gradient to global L2 norm ≤ max_norm; returns the norm before clipping."""
        norm = torch.linalg.vector_norm(self.param.grad)
        self.param.grad.mul_((max_norm / (norm + 1e-6)).clamp_(max=1.0))
        return norm
