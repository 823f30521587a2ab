"""Rollout storage (host arrays, moved to the device once per rollout) and replay storage
(one preallocated tensor on the training device)."""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import numpy as np
import torch


def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    dones: np.ndarray,
    last_values: np.ndarray,
    gamma: float,
    gae_lambda: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation over a (T, n_envs) rollout.

    `dones[t]` marks that the episode ended at step t (terminated or truncated), so nothing flows
    from step t+1 back into t. A truncation's bootstrap value is already folded into `rewards[t]`
    by the collector (r + γ·V(final_obs)); a termination adds nothing. Returns (advantages, returns).
    The TD errors δ_t and decays γλ(1 − d_t) are computed for the whole rollout at once; only the
    recursion A_t = δ_t + γλ(1 − d_t)·A_{t+1} loops over time (vectorised over envs), two array
    operations a step. The same operations in the same order as the textbook loop: bit-identical.
    """
    not_done = 1.0 - dones
    next_values = np.concatenate([values[1:], last_values[None].astype(values.dtype)])
    adv = rewards + gamma * next_values * not_done - values  # δ_t, then A_t in place
    decay = gamma * gae_lambda * not_done
    for t in range(rewards.shape[0] - 2, -1, -1):
        adv[t] += decay[t] * adv[t + 1]
    return adv, adv + values


def standardize(x: torch.Tensor) -> torch.Tensor:
    """(x − mean) / (std + 1e-8): advantages on a common scale."""
    return (x - x.mean()) / (x.std() + 1e-8)


def explained_variance(returns: torch.Tensor, values: torch.Tensor) -> torch.Tensor | float:
    """1 − Var(returns − values) / Var(returns); 0 when the returns do not vary."""
    var_y = returns.var()
    return 1 - (returns - values).var() / var_y if var_y > 0 else 0.0


class RolloutBatch(NamedTuple):
    obs: torch.Tensor
    actions: torch.Tensor
    log_probs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


class RolloutBuffer:
    """On-policy storage of `n_steps` × `n_envs` transitions.

    Filled on the host (the env's arrays and the policy's outputs arrive there anyway) and moved to
    the training device in one copy per rollout by `finish`, packed as one (n, width) tensor so a
    minibatch is a single row gather.
    """

    def __init__(self, n_steps: int, n_envs: int, obs_shape: tuple[int, ...],
                 act_shape: tuple[int, ...], device: torch.device, discrete: bool = False):
        self.n_steps, self.n_envs, self.device = n_steps, n_envs, device
        self.obs_shape, self.act_shape, self.discrete = obs_shape, act_shape, discrete
        self.obs = np.zeros((n_steps, n_envs, *obs_shape), np.float32)
        self.actions = np.zeros((n_steps, n_envs, *act_shape), np.float32)
        self.log_probs = np.zeros((n_steps, n_envs), np.float32)
        self.values = np.zeros((n_steps, n_envs), np.float32)
        self.rewards = np.zeros((n_steps, n_envs), np.float32)
        self.dones = np.zeros((n_steps, n_envs), np.float32)  # episode ended at this step
        self.pos = 0
        self.data: torch.Tensor | None = None  # packed device tensor after `finish`
        o, a = int(np.prod(obs_shape)), int(np.prod(act_shape))
        cuts = np.cumsum([0, o, a, 1, 1, 1, 1])
        self._slices = [slice(int(lo), int(hi)) for lo, hi in itertools.pairwise(cuts)]

    def add(self, obs: np.ndarray, action: np.ndarray, log_prob: np.ndarray, value: np.ndarray,
            reward: np.ndarray, done: np.ndarray) -> None:
        t = self.pos
        self.obs[t], self.actions[t], self.log_probs[t], self.values[t] = obs, action, log_prob, value
        self.rewards[t], self.dones[t] = reward, done
        self.pos += 1

    def finish(self, last_values: np.ndarray, gamma: float, gae_lambda: float) -> None:
        """Compute advantages and returns, then move the rollout to the device."""
        assert self.pos == self.n_steps, "rollout not full"
        adv, ret = compute_gae(self.rewards, self.values, self.dones, last_values, gamma, gae_lambda)
        n = self.n_steps * self.n_envs
        packed = np.concatenate(
            [self.obs.reshape(n, -1), self.actions.reshape(n, -1),
             *(x.reshape(n, 1) for x in (self.log_probs, self.values, adv, ret))], axis=1)
        self.data = torch.from_numpy(packed).to(self.device)
        self.pos = 0

    def _batch(self, rows: torch.Tensor) -> RolloutBatch:
        obs, act, logp, val, adv, ret = (rows[:, s] for s in self._slices)
        act = act.reshape(-1, *self.act_shape)
        return RolloutBatch(obs.reshape(-1, *self.obs_shape), act.long() if self.discrete else act,
                            logp.squeeze(1), val.squeeze(1), adv.squeeze(1), ret.squeeze(1))

    def all(self) -> RolloutBatch:
        """The whole rollout as one batch (time and env axes merged)."""
        assert self.data is not None, "call finish() first"
        return self._batch(self.data)

    def minibatches(self, batch_size: int):
        """One epoch of shuffled minibatches."""
        for _, batch in self.indexed_minibatches(batch_size):
            yield batch

    def indexed_minibatches(self, batch_size: int):
        """`minibatches`, each with its row indices into `all()` (for per-sample side data)."""
        assert self.data is not None, "call finish() first"
        perm = torch.randperm(self.data.shape[0], device=self.device)
        for idx in perm.split(batch_size):
            yield idx, self._batch(self.data[idx])


class Batch(NamedTuple):
    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_obs: torch.Tensor
    terminated: torch.Tensor


class ReplayBuffer:
    """Circular transition store in one preallocated (capacity, width) tensor.

    One row = [obs | action | reward | next_obs | terminated]. Adding copies one host block per
    step; sampling gathers rows with one index (torch.randint on the device). `terminated` excludes
    time-limit truncations, so the critic still bootstraps through a truncated step.
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device,
                 storage: torch.Tensor | None = None):
        self.capacity, self.device = capacity, device
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.width = 2 * obs_dim + act_dim + 2
        if storage is None:
            storage = torch.zeros((capacity, self.width), device=device)
        self.storage = storage
        self.pos, self.size = 0, 0
        o, a = obs_dim, act_dim
        self._slices = (slice(0, o), slice(o, o + a), slice(o + a, o + a + 1),
                        slice(o + a + 1, 2 * o + a + 1), slice(2 * o + a + 1, 2 * o + a + 2))

    def add(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
            next_obs: np.ndarray, terminated: np.ndarray) -> None:
        """Add one transition per env; arrays have a leading n_envs axis."""
        n = obs.shape[0]
        block = np.concatenate(
            [obs.reshape(n, -1), actions.reshape(n, -1), rewards.reshape(n, 1),
             next_obs.reshape(n, -1), terminated.reshape(n, 1)], axis=1, dtype=np.float32)
        rows = torch.from_numpy(block).to(self.device, non_blocking=True)
        end = self.pos + n
        if end <= self.capacity:
            self.storage[self.pos:end] = rows
        else:  # wrap around
            first = self.capacity - self.pos
            self.storage[self.pos:] = rows[:first]
            self.storage[: n - first] = rows[first:]
        self.pos = end % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int) -> Batch:
        idx = torch.randint(0, self.size, (batch_size,), device=self.device)
        rows = self.storage[idx]
        o, a, r, o2, d = (rows[:, s] for s in self._slices)
        return Batch(o, a, r.squeeze(1), o2, d.squeeze(1))

    def state_dict(self) -> dict[str, Any]:
        # clone: saving a view would write the whole preallocated storage behind it
        return {"storage": self.storage[: self.size].cpu().clone(), "pos": self.pos,
                "size": self.size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        stored = state["storage"]
        if stored.shape[1] != self.width or state["size"] > self.capacity:
            raise ValueError("replay buffer shape does not match this run's env and buffer_size")
        self.storage[: state["size"]] = stored.to(self.device)
        self.pos, self.size = state["pos"], state["size"]


class OfflineBuffer(ReplayBuffer):
    """A full, fixed replay buffer made from a dataset's tensors (already on the training device).

    Sampling is the replay buffer's: uniform rows by `torch.randint` on the device, so it follows
    the torch RNG that checkpoints restore.
    """

    def __init__(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                 next_obs: torch.Tensor, terminals: torch.Tensor):
        n = obs.shape[0]
        rows = torch.cat([obs, actions, rewards.reshape(n, 1), next_obs, terminals.reshape(n, 1)], 1)
        super().__init__(n, obs.shape[1], actions.shape[1], obs.device, rows)
        self.size = n
