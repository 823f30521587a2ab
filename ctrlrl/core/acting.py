"""Acting for on-policy rollouts in NumPy on the host: π's sample, its log-probability and V(s).

A rollout step acts on a handful of observations with small networks, where torch's per-call
dispatch (a few µs per op, ~20 ops for a sample, its log-probability and a value) costs several
times the arithmetic. NumPy's calls on arrays this small cost a fraction of that, so the rollout
acts here, on host copies of the weights taken once per rollout (`sync`), and the update keeps
training the torch modules. Actor and critic run as one MLP: the first layer's weights stacked,
the deeper layers' block-diagonal, so each layer is one matrix product for both networks.

The distributions and formulas are the torch heads' (`ctrlrl.core.nets`); the draws come from a
NumPy generator (the algorithm's `np_rng`, which checkpoints restore) instead of torch's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ctrlrl.core.nets import MLP, CategoricalPolicy, GaussianPolicy, MultiCategoricalPolicy

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
_ACTIVATIONS = {
    torch.tanh: np.tanh,
    torch.nn.functional.relu: lambda x: np.maximum(x, 0.0, out=x),
    torch.nn.functional.elu: lambda x: np.where(x > 0, x, np.expm1(x)),
    torch.nn.functional.leaky_relu: lambda x: np.where(x > 0, x, np.float32(0.01) * x),
}
_HEADS = (GaussianPolicy, CategoricalPolicy, MultiCategoricalPolicy)


class HostActorCritic:
    """A policy head and a value MLP of the same depth, evaluated together in NumPy.

    `act(obs, rng)` returns what the rollout stores: the sampled actions, their log-probabilities
    and the values, float32 like the torch modules'. Build it with `for_modules`, which answers
    None for networks it does not cover (LayerNorm, critics of another depth or activation).
    """

    def __init__(self, policy: nn.Module, value_fn: MLP):
        self.policy, self.value_fn = policy, value_fn
        actor, critic = policy.net, value_fn
        self.act_fn = _ACTIVATIONS[actor.act]
        self.out_dim = actor.layers[-1].out_features  # the actor's outputs; the value is last
        self.weights: list[np.ndarray] = []  # (in, out) per layer, both networks side by side
        self.biases: list[np.ndarray] = []
        for i, (a, c) in enumerate(zip(actor.layers, critic.layers, strict=True)):
            rows = a.in_features if i == 0 else a.in_features + c.in_features
            self.weights.append(np.zeros((rows, a.out_features + c.out_features), np.float32))
            self.biases.append(np.zeros(a.out_features + c.out_features, np.float32))
        self.sync()

    @classmethod
    def for_modules(cls, policy: nn.Module, value_fn: nn.Module) -> HostActorCritic | None:
        """The host actor of these torch modules, or None where they are not a plain MLP head
        (`GaussianPolicy`, `CategoricalPolicy`, `MultiCategoricalPolicy`) and an MLP critic
        with one output, the same depth and the same activation, both in float32 (a network in
        mixed precision acts as it learns: in torch)."""
        if type(policy) not in _HEADS or type(value_fn) is not MLP:
            return None
        actor = policy.net
        if (type(actor) is not MLP or actor.norms is not None or value_fn.norms is not None
                or actor.compute_dtype != torch.float32 or value_fn.compute_dtype != torch.float32
                or actor.act is not value_fn.act or actor.act not in _ACTIVATIONS
                or len(actor.layers) != len(value_fn.layers) or actor.n_hidden != value_fn.n_hidden
                or value_fn.layers[-1].out_features != 1):
            return None
        return cls(policy, value_fn)

    def sync(self) -> None:
        """Copy the torch modules' current weights (after each update)."""
        with torch.no_grad():
            for i, (a, c) in enumerate(zip(self.policy.net.layers, self.value_fn.layers,
                                           strict=True)):
                w, b = self.weights[i], self.biases[i]
                a_out, a_in = a.weight.shape
                if i == 0:  # both read the observation
                    w[:, :a_out] = a.weight.T.cpu().numpy()
                    w[:, a_out:] = c.weight.T.cpu().numpy()
                else:  # block-diagonal: each network reads its own previous layer
                    w[:a_in, :a_out] = a.weight.T.cpu().numpy()
                    w[a_in:, a_out:] = c.weight.T.cpu().numpy()
                b[:a_out] = a.bias.cpu().numpy()
                b[a_out:] = c.bias.cpu().numpy()
            if isinstance(self.policy, GaussianPolicy):
                self.log_std = self.policy.log_std.cpu().numpy().astype(np.float32)
                self.std = np.exp(self.log_std)
                # log N(mean + std·ε; mean, std) = −½|ε|² − (Σ log std + k·log √(2π))
                self.log_prob_shift = np.float32(self.log_std.sum() + len(self.log_std) * _LOG_SQRT_2PI)
            elif isinstance(self.policy, MultiCategoricalPolicy):
                self.pad = self.policy.pad.cpu().numpy()

    def forward(self, obs: np.ndarray) -> np.ndarray:
        """(n, actor outputs + 1): the actor's outputs, then V(s) in the last column."""
        x = np.asarray(obs, np.float32)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = x @ w
            x += b
            if i < last:
                x = self.act_fn(x)
        return x

    def value(self, obs: np.ndarray) -> np.ndarray:
        return self.forward(obs)[:, -1]

    def act(self, obs: np.ndarray, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(actions, log π(actions), V(obs)) for a batch of observations."""
        out = self.forward(obs)
        params, value = out[:, :-1], out[:, -1]
        if isinstance(self.policy, GaussianPolicy):
            noise = rng.standard_normal(params.shape, dtype=np.float32)
            action = params + self.std * noise
            log_prob = -0.5 * np.einsum("ij,ij->i", noise, noise) - self.log_prob_shift
            return action, log_prob, value
        if isinstance(self.policy, CategoricalPolicy):
            logp = _log_softmax(params)
            action = _sample_categorical(logp, rng)
            return action, np.take_along_axis(logp, action[:, None], 1)[:, 0], value
        logp = _log_softmax(params.reshape(len(params), *self.pad.shape) + self.pad)
        action = _sample_categorical(logp, rng)
        return action, np.take_along_axis(logp, action[..., None], -1)[..., 0].sum(-1), value


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _sample_categorical(logp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row of the last axis, by inverting the CDF at a uniform; a category of
    probability 0 (−inf log-probability) is never drawn."""
    cdf = np.cumsum(np.exp(logp.astype(np.float64)), -1)
    u = rng.random((*cdf.shape[:-1], 1)) * cdf[..., -1:]
    return (cdf <= u).sum(-1).astype(np.int64)
