"""The on-policy training loop: collect `n_steps` per env with the current policy, compute GAE,
then hand the full rollout to the algorithm's `update`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from ctrlrl.algos.base import Algorithm, Metrics
from ctrlrl.core.acting import HostActorCritic
from ctrlrl.core.buffers import RolloutBatch, RolloutBuffer, explained_variance
from ctrlrl.core.config import RunConfig, check_ranges
from ctrlrl.core.envs import Step
from ctrlrl.core.nets import MLP, make_policy, orthogonal_init


@dataclass
class RolloutConfig:
    """The settings the on-policy loop reads: every on-policy learner's config inherits them."""

    n_steps: int = 2048  # steps per env per rollout
    gamma: float = 0.99  # discount factor
    gae_lambda: float = 0.95  # GAE λ (1: Monte-Carlo returns, 0: one-step TD)

    def __post_init__(self) -> None:
        check_ranges(self, positive=("n_steps",), fraction=("gamma", "gae_lambda"))


@dataclass
class ActorCriticConfig(RolloutConfig):
    """`RolloutConfig` and the actor and critic that `build_actor_critic` makes (PPO, MDPO, ORPO)."""

    # hidden layer widths of the actor and of the critic (separate nets)
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = "tanh"  # hidden activation: tanh | relu | elu | leaky_relu
    ortho_init: bool = True  # orthogonal weight initialisation (ppo2's); off: PyTorch's default
    log_std_init: float = 0.0  # initial log-std of the Gaussian policy (Box actions)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, widths=("hidden_sizes",))


class OnPolicyAlgorithm(Algorithm):
    """Collect `n_steps` per env with the current policy, compute GAE, then `update`.

    Subclasses set `self.policy` and `self.value_fn` in `build` (`build_actor_critic` makes the
    usual pair) and implement `update(rollout)`; their configs inherit `RolloutConfig`
    (`ActorCriticConfig` where `build_actor_critic` makes the networks).
    """

    kind = "on-policy"

    policy: nn.Module
    value_fn: nn.Module

    def __init__(self, run: RunConfig, cfg: Any):
        super().__init__(run, cfg)
        self.acting = self.host_actor()  # after `build`, which makes the networks

    def build_actor_critic(self) -> None:
        """`self.policy` (the head for the action space) and `self.value_fn`, from the config's
        hidden_sizes, activation, ortho_init and log_std_init."""
        cfg = self.cfg
        self.policy = make_policy(self.env.action_space, self.obs_dim, cfg.hidden_sizes,
                                  cfg.activation, cfg.ortho_init, cfg.log_std_init).to(self.device)
        self.value_fn = MLP(self.obs_dim, cfg.hidden_sizes, 1, cfg.activation).to(self.device)
        if cfg.ortho_init:
            orthogonal_init(self.value_fn, last_gain=1.0)

    def make_rollout_buffer(self) -> RolloutBuffer:
        space = self.env.action_space
        discrete = not isinstance(space, gym.spaces.Box)
        return RolloutBuffer(self.cfg.n_steps, self.run.n_envs, self.env.observation_space.shape,
                             space.shape, self.device, discrete)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.value_fn(obs).squeeze(-1)

    def budget_note(self) -> str | None:
        n_steps, n_envs = self.cfg.n_steps, self.run.n_envs
        return self.whole_iterations_note(n_steps * n_envs, f"n_steps × n_envs = {n_steps} × {n_envs}")

    def rollout_schedule(self) -> tuple[int, float]:
        """(index k of the rollout just collected, fraction of `total_steps` left when it began):
        what annealed learning rates and MDPO's t_k depend on."""
        batch = self.cfg.n_steps * self.run.n_envs
        started = self.step - batch
        return started // batch, max(0.0, 1.0 - started / self.run.total_steps)

    def rollout_metrics(self, data: RolloutBatch) -> Metrics:
        """Metrics every on-policy update logs: the value fit, and the Gaussian policy's std."""
        with torch.no_grad():
            metrics: Metrics = {
                "explained_variance": explained_variance(data.returns, data.values)}
        if hasattr(self.policy, "log_std"):
            metrics["std"] = self.policy.log_std.exp().mean().detach()
        return metrics

    def host_actor(self) -> HostActorCritic | None:
        """What the rollout acts with: the policy and critic in NumPy (`ctrlrl.core.acting`,
        several times cheaper per step than torch on a few observations), or None to act with
        the torch modules. None also where `value` is more than `value_fn`'s output."""
        return HostActorCritic.for_modules(self.policy, self.value_fn)

    def rollout_act(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(actions in the rollout's shape and dtype, their log-probabilities, V(obs)) on the host."""
        buf, n = self.rollout, self.run.n_envs
        if self.acting is not None:  # noise from `np_rng`, which checkpoints keep
            action, log_prob, value = self.acting.act(obs, self.np_rng)
        else:
            obs_t = torch.as_tensor(obs, device=self.device)
            with torch.no_grad():
                action_t, log_prob_t = self.policy.sample(obs_t)
                # one device→host transfer per step for action, log-prob and value together
                out = torch.cat([action_t.reshape(n, -1).float(), log_prob_t[:, None],
                                 self.value(obs_t)[:, None]], 1).cpu().numpy()
            action, log_prob, value = out[:, :-2], out[:, -2], out[:, -1]
            if buf.discrete:
                action = action.astype(np.int64)
        return action.reshape(n, *buf.act_shape), log_prob, value

    def rollout_value(self, obs: np.ndarray) -> np.ndarray:
        """V(obs) on the host, computed as `rollout_act` computes it."""
        if self.acting is not None:
            return self.acting.value(obs)
        with torch.no_grad():
            return self.value(torch.as_tensor(obs, device=self.device)).cpu().numpy()

    def train_iteration(self) -> None:
        buf, gamma, n = self.rollout, self.cfg.gamma, self.run.n_envs
        if self.acting is not None:
            self.acting.sync()  # the weights of the last update (or of a loaded checkpoint)
        for _ in range(self.cfg.n_steps):
            action, log_prob, value = self.rollout_act(self.obs)
            self.record_decision(action)
            step = self.env.step(self.to_env_action(action))
            self.record_outcome(step)
            reward = step.reward
            truncated = step.truncated & ~step.terminated
            if truncated.any():  # bootstrap a time-limit cut from V(final obs); not a termination
                reward = reward.copy()
                reward[truncated] += gamma * self.rollout_value(step.next_obs[truncated])
            buf.add(self.obs, action, log_prob, value, reward, step.done)
            self.obs = step.obs
            self.step += n
            self.episodes.extend(step.episodes)
            self.true_returns.extend(step.true_returns)
        shaping = self.shape_rewards(buf)
        buf.finish(self.rollout_value(self.obs), gamma, self.cfg.gae_lambda)
        self.metrics |= {**shaping, **self.update(buf)}

    def record_decision(self, action: np.ndarray) -> None:
        """Keep what the algorithm needs of each decision beyond the rollout buffer's row; runs with
        each rollout action, before the env steps (the env's observation is then `self.env.obs`,
        raw `self.env.raw_obs`; the row `self.rollout.pos`). PDPPO records the post-decision state
        and reward, ORPO and ppo-adreg the raw observation their base policy reads."""

    def record_outcome(self, step: Step) -> None:
        """Keep what the algorithm needs of each vector step's result; runs after the env step,
        before the step enters the rollout (row `self.rollout.pos`). PDPPO bootstraps its
        post-decision return where a time limit cuts an episode."""

    def shape_rewards(self, rollout: RolloutBuffer) -> Metrics:
        """Change `rollout.rewards` in place before GAE (runs once the rollout is full); returns
        the shaping's metrics. The identity here; ORPO subtracts its occupancy-measure penalty,
        PDPPO's `pre_reward: residual` the decisions' own rewards."""
        return {}

    def update(self, rollout: RolloutBuffer) -> Metrics:
        """Learn from a full rollout (returns and advantages computed); returns the metrics."""
        raise NotImplementedError

    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy.mode(obs)

    def sample_action(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy.sample(obs)[0]
