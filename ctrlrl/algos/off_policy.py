"""The off-policy training loop (env steps into a replay buffer, gradient steps on sampled
minibatches) and the offline one (gradient steps on minibatches of a fixed dataset)."""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from ctrlrl.algos.base import Algorithm, Metrics
from ctrlrl.core.buffers import Batch, OfflineBuffer, ReplayBuffer
from ctrlrl.core.compiled_step import training_step
from ctrlrl.core.config import RunConfig
from ctrlrl.core.errors import UserError
from ctrlrl.core.nets import Standardizer
from ctrlrl.core.run_dir import DATASET_FILE

if TYPE_CHECKING:
    from ctrlrl.data import Dataset


class OffPolicyAlgorithm(Algorithm):
    """One env step per iteration into a replay buffer, then `gradient_steps` updates.

    Policies act in [-1, 1]; `to_env_action` rescales to the env's box. The first
    `learning_starts` steps act uniformly at random.
    """

    kind = "off-policy"
    action_spaces = (gym.spaces.Box,)
    compile_modes = ("eager", "step", "graph")  # `train_step` builds each from `update`

    @classmethod
    def incompatibility(cls, env: gym.Env, run: RunConfig, cfg: Any) -> str | None:
        """Bounded Box actions (policies act in [-1, 1]) and no running normalisation."""
        problem = super().incompatibility(env, run, cfg)
        if problem:
            return problem
        space = env.action_space
        if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
            return (f"{cls.name} needs a bounded Box action space (its policy acts in [-1, 1]), "
                    f"and {run.env} acts in {space}")
        if run.normalize_obs or run.normalize_reward:
            # stored transitions would mix the statistics of the moment each was collected
            return f"{cls.name} does not support normalize_obs/normalize_reward; drop those settings"
        return None

    def build_replay(self) -> None:
        self.set_action_box()
        self.replay = ReplayBuffer(self.cfg.buffer_size, self.obs_dim, self.act_dim, self.device)

    def set_action_box(self) -> None:
        """The action size, and the box that `to_env_action` rescales [-1, 1] to."""
        space = self.env.action_space
        self.act_dim = int(np.prod(space.shape))
        self._act_low, self._act_high = space.low, space.high

    def to_env_action(self, action: np.ndarray) -> np.ndarray:
        action = np.clip(action, -1.0, 1.0)
        return self._act_low + (action + 1.0) * 0.5 * (self._act_high - self._act_low)

    def from_env_action(self, action: np.ndarray) -> np.ndarray:
        """Env actions rescaled to the [-1, 1] the networks work in: `to_env_action`'s inverse."""
        low, high = self._act_low, self._act_high
        return np.clip(2.0 * (action - low) / (high - low) - 1.0, -1.0, 1.0)

    def exploration_action(self, obs: torch.Tensor) -> torch.Tensor:
        """Action in [-1, 1] taken while training (after warm-up)."""
        raise NotImplementedError

    def update(self, batch: Batch) -> Metrics:
        """One gradient step on `batch`, a minibatch the loop sampled from the replay buffer
        (`batch_size` transitions); returns the metrics."""
        raise NotImplementedError

    def update_variant(self) -> Hashable:
        """Which of its branches the next `update` takes, where that depends on more than the
        batch and the config (TD3's delayed actor step): `compile=graph` captures one CUDA graph
        per variant. One variant here."""
        return None

    _train_step: Callable[[Batch], Metrics] | None = None

    def train_step(self, batch: Batch) -> Metrics:
        """`update`, or its compiled or CUDA-graphed form (`compile: step | graph`), built at the
        first step: after any checkpoint is loaded, since a graph records the optimiser state it
        finds."""
        if self._train_step is None:
            self._train_step = training_step(self, self.run.compile)
        return self._train_step(batch)

    def budget_note(self) -> str | None:
        n = self.run.n_envs
        return self.whole_iterations_note(n, f"one step in each of n_envs={n} envs")

    def train_iteration(self) -> None:
        n = self.run.n_envs
        if self.step < self.cfg.learning_starts:
            action = self.np_rng.uniform(-1.0, 1.0, (n, self.act_dim)).astype(np.float32)
        else:
            with torch.no_grad():
                obs = torch.as_tensor(self.obs, device=self.device)
                action = self.exploration_action(obs).cpu().numpy()
        step = self.env.step(self.to_env_action(action))
        self.replay.add(self.obs, action, step.reward, step.next_obs, step.terminated)
        self.obs = step.obs
        self.step += n
        self.episodes.extend(step.episodes)
        self.true_returns.extend(step.true_returns)
        # after a resume without a stored replay buffer, refill it before learning again
        warm = min(self.cfg.learning_starts, self.replay.capacity)
        if self.step >= self.cfg.learning_starts and self.replay.size >= max(warm, 1):
            for _ in range(self.cfg.gradient_steps):
                self.metrics |= self.train_step(self.replay.sample(self.cfg.batch_size))
                self.n_updates += 1

    def load_state(self, ckpt: dict[str, Any], extra: bool = True) -> None:
        super().load_state(ckpt, extra)
        self._train_step = None  # a graph replays the optimiser state it was captured with

    def extra_state(self) -> dict[str, Any]:
        return {"replay": self.replay.state_dict()} if self.cfg.save_replay else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "replay" in state:
            self.replay.load_state_dict(state["replay"])

    def sample_action(self, obs: torch.Tensor) -> torch.Tensor:
        return self.exploration_action(obs)


class OfflineAlgorithm(OffPolicyAlgorithm):
    """Learns from a fixed dataset (`RunConfig.dataset`): an off-policy learner whose replay buffer
    is the dataset and which never steps its env for data. One iteration is one gradient step, so
    `step`, `total_steps`, `eval_every` and the logs count gradient steps; the env only evaluates
    (`eval/mean_reward`, and `eval/normalized_score` where the dataset carries reference scores,
    as Minari's may, or the env has D4RL's).

    Dataset actions are rescaled from the env's box to the policy's [-1, 1]. Every offline config
    has `normalize_states`: when set, observations are standardised with the dataset's mean and
    std (+1e-3, TD3+BC's rule); the statistics are part of the checkpoint, so a loaded policy acts
    without the dataset. The dataset is read when training starts (`learn`), not when a checkpoint
    is loaded to act, and it is not stored in checkpoints: a resumed run reads it again.
    """

    kind = "offline"
    vectorised = False

    replay: OfflineBuffer | None
    actor: nn.Module  # observations (standardised) → actions in [-1, 1]
    dataset_digest: str | None = None  # `Dataset.digest` of the rows read, once read
    trained_on: str | None = None  # the digest a resumed run's checkpoint was trained on

    @classmethod
    def incompatibility(cls, env: gym.Env, run: RunConfig, cfg: Any) -> str | None:
        if not run.dataset:
            return (f"{cls.name} learns offline: pass --dataset PATH.hdf5 | d4rl:<task> | "
                    "minari:<id> (or --set dataset=…)")
        return super().incompatibility(env, run, cfg)

    @classmethod
    def unused_settings(cls, env: gym.Env, run: RunConfig, cfg: Any) -> dict[str, str]:
        return {**super().unused_settings(env, run, cfg),
                "vec_mode": "an offline run steps no env to learn; it evaluates in-process"}

    def build_replay(self) -> None:
        self.set_action_box()
        self.obs_stats = Standardizer(self.obs_dim).to(self.device)
        self.replay = None

    def load_dataset(self) -> None:
        from ctrlrl.data import load

        data = load(self.run.dataset, self.run.env, self.run.keep_timeouts)
        digest = data.digest()
        if self.trained_on not in (None, digest):
            # a regenerated or edited file: training on would mix two datasets in one run
            raise UserError(f"dataset {self.run.dataset} is not the one this run trained on (its "
                            f"rows' SHA-256 is {digest[:12]}…, the checkpoint's {self.trained_on[:12]}…); "
                            "put that file back, or start the run afresh")
        self.dataset_digest = digest
        data = self.prepare_dataset(data)
        self.ref_scores = data.ref_scores  # eval/normalized_score's (min, max) returns, or None
        actions = self.from_env_action(data.actions)
        obs, next_obs, actions, rewards, terminals = (
            torch.as_tensor(x, dtype=torch.float32, device=self.device)
            for x in (data.observations, data.next_observations, actions, data.rewards,
                      data.terminals))
        if self.cfg.normalize_states:
            self.obs_stats.fit(obs)
        with torch.no_grad():
            obs, next_obs = self.obs_stats(obs), self.obs_stats(next_obs)
        self.replay = OfflineBuffer(obs, actions, rewards, next_obs, terminals)

    def prepare_dataset(self, data: Dataset) -> Dataset:
        """Hook: the loaded dataset, transformed before it fills the buffer (raw observations and
        actions, before normalisation and rescaling). The identity here; O-DICE scales rewards.
        Runs again on resume, so it must be a function of the dataset and the config alone."""
        return data

    def setup_run_dir(self, run_dir: str | Path | None = None, resuming: bool = False) -> Path:
        if self.replay is None:  # first: a bad dataset fails without leaving a run dir behind
            self.load_dataset()
        path = super().setup_run_dir(run_dir, resuming)
        # which rows the run learns from, beside its config: the file itself is not kept with it
        (path / DATASET_FILE).write_text(json.dumps(
            {"dataset": self.run.dataset, "sha256": self.dataset_digest,
             "transitions": self.replay.size}, indent=1) + "\n")
        return path

    def learn(self, total_steps: int | None = None) -> Algorithm:
        if self.replay is None:
            self.load_dataset()
        return super().learn(total_steps)

    def train_iteration(self) -> None:
        self.metrics |= self.train_step(self.replay.sample(self.cfg.batch_size))
        self.n_updates += 1
        self.step += 1

    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(self.obs_stats(obs))

    def sample_action(self, obs: torch.Tensor) -> torch.Tensor:
        return self.deterministic_action(obs)

    def state_modules(self):
        return {**super().state_modules(), "obs_stats": self.obs_stats}

    def extra_state(self) -> dict[str, Any]:
        # the dataset is read again on resume; its digest says whether it is still the same
        return {"dataset_digest": self.dataset_digest}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.trained_on = state.get("dataset_digest")  # absent from checkpoints written before

    def reference_scores(self) -> tuple[float, float] | None:
        """The dataset's; before the dataset is read (a checkpoint loaded to act), D4RL's for the
        env (a Minari dataset's own are known once it is read)."""
        if self.replay is not None:
            return self.ref_scores
        from ctrlrl.data import reference_scores

        return reference_scores(self.run.env)

    def budget_note(self) -> str | None:
        return None  # one gradient step per iteration
