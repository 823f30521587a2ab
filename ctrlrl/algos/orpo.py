"""ORPO — occupancy-measure regularised PPO against reward hacking (Laidlaw, Singhal, Dragan; ICLR
2025, "Correlated Proxies: A New Definition and Improved Mitigation for Reward Hacking"), and the
action-distribution regularised baseline `ppo-adreg`.

Both optimise the env's (proxy) reward while staying close to a safe **base policy**: the env's
scripted one (`base_policy: scripted`, e.g. the tomato gridworld's) or any ctrlrl checkpoint of a
stochastic on-policy learner (`--base-policy PATH`, a run dir or .pt file, with the same observation
and action spaces).

`orpo`, each iteration, as the reference `occupancy_measures/agents/orpo.py` (`ORPO.training_step`)
does it:
1. the current policy's rollout (PPO's), and alongside it a rollout of the base policy in a second
   set of envs — `base_fraction` of all the env steps of the iteration (default 0.5: the
   reference's `percent_safe_policy = 0.5` of the workers, `experiments/orpo_experiments.py`
   `create_multiagent`). Both count in `total_steps`, as the reference's env-step counter counts the
   whole batch (`synchronous_parallel_sample(max_env_steps=train_batch_size)`): an iteration of
   n_steps × n_envs learner steps spends n_steps × n_envs / (1 − base_fraction) of the budget.
   `base_steps_in_budget: false` runs the base outside the budget instead (total_steps then counts
   the learner's steps only; earlier ctrlrl versions);
2. a discriminator d(s, a) (MLP 256-256 LeakyReLU; discrete actions one-hot, continuous actions
   clipped to the box; `state_only` drops the action) trained before it scores the rollout (the
   reference's `train_discriminator_first`) for `disc_epochs` epochs of
   `softplus(−d(current)) + softplus(d(base))` (the reference's `_kl_discriminator_loss`), so
   d ≈ log μ_π/μ_base at the optimum;
3. per-sample penalty by `divergence` (the reference's `_*_discriminator_rewards`): kl `d`; chi2
   `e^d − 1`; sqrt_chi2 (default) `(e^d − 1)/√χ̂²` with χ̂² the 1%-trimmed mean of `e^d − 1` over
   the rollout (the penalty of `e^d − 1` itself when χ̂² ≤ 0); tv `sign(d)`;
4. reward ← r̃ − clip(λ·penalty, ±penalty_clip) (`reg_coef` = λ; negative λ pushes away from the
   base, e.g. from a known hacking policy), then GAE and PPO's update as usual. `penalty_clip` is
   the reference's `discriminator_reward_clip`, by default infinite (`ORPOConfig`: `np.inf`; its
   tomato experiments set 1000); earlier ctrlrl versions clipped at 10, which the tomato preset
   keeps (measured there: the reference's 1000 lets a few overconfident samples swamp GAE).
   With `normalize_reward` the penalty is subtracted from the normalised reward, so λ is then in
   units of the normalised per-step reward.

`ppo-adreg`: PPO's loss + (1/(1−γ))·λ·mean_s D(π(·|s) ‖ π_base(·|s)) over the minibatch's states
(the reference's `ORPOPolicy.loss`: `gamma_scaling * action_dist_divergence_coeff *
mean(action_dist_divergence)`, with `current_action_dist.kl(safe_policy_action_dist)`), D the
closed-form KL (default) or χ² of the two action distributions (Gaussian χ² is infinite when the
base is more than √2 times narrower than the policy in some dimension; those states use the KL, as
the reference does).

Choices where the paper and its reference code are silent:
- The base rollouts run in their own envs, seeded run seed + 20000, and are checkpointed for exact
  resume; `train/base_steps` logs how many steps they took. A checkpoint base is read from its path
  again on resume: keep that file unchanged meanwhile.
- The discriminator sees observations normalised with the run's running statistics (both samples
  alike), trains on this iteration's samples only (reference: the same), minibatches of
  `disc_batch_size` pairing a current and a base minibatch, Adam 1e-3.
- Both algorithms log the occupancy-measure KL and χ² estimates (`train/om_kl` = mean d over the
  current samples, `train/om_chi2` = mean e^d − 1) — orpo only, it has the discriminator — and
  `train/action_kl`, the mean action-distribution KL to the base over the rollout's states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from ctrlrl.algos.base import Metrics
from ctrlrl.algos.ppo import PPO, PPOConfig
from ctrlrl.core.buffers import RolloutBatch, RolloutBuffer
from ctrlrl.core.checkpoint import read_checkpoint
from ctrlrl.core.config import RunConfig, check_ranges
from ctrlrl.core.envs import VecEnv
from ctrlrl.core.errors import UserError
from ctrlrl.core.nets import MLP, GaussianPolicy, adam

OM_DIVERGENCES = ("kl", "chi2", "sqrt_chi2", "tv")
ACTION_DIVERGENCES = ("kl", "chi2")
BASE_SEED_OFFSET = 20_000  # base-policy envs: never the training (seed + i) or evaluation seeds


# ---- the base policy ------------------------------------------------------------------------------
class BasePolicy:
    """The safe policy to stay close to: samples actions and gives its action distribution in the
    current policy's format (categorical log-probs, or a Gaussian's (mean, log_std)), from raw
    observations."""

    def dist(self, raw_obs: np.ndarray) -> Any:
        raise NotImplementedError

    def sample(self, raw_obs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


class ScriptedBase(BasePolicy):
    """An env's own `base_action_probs(obs)` (discrete actions), sampled with the run's numpy RNG."""

    def __init__(self, env: VecEnv, rng: np.random.Generator, device: torch.device):
        probe = gym.make(env.env_id)
        self.probs = probe.unwrapped.base_action_probs
        probe.close()
        self.rng, self.device = rng, device

    def dist(self, raw_obs: np.ndarray) -> torch.Tensor:
        probs = torch.as_tensor(self.probs(raw_obs), dtype=torch.float32, device=self.device)
        return probs.log()

    def sample(self, raw_obs: np.ndarray) -> np.ndarray:
        cum = self.probs(raw_obs).cumsum(1)
        u = self.rng.random((len(cum), 1))
        return (u > cum).sum(1).clip(max=cum.shape[1] - 1)


class CheckpointBase(BasePolicy):
    """A trained ctrlrl policy (PPO, MDPO, PDPPO… any on-policy checkpoint), acting with the
    observation statistics it was trained with; sampled with the torch RNG."""

    def __init__(self, path: str, env: VecEnv, device: torch.device):
        from ctrlrl.algos import REGISTRY

        ckpt = read_checkpoint(path)
        if ckpt["algo"] not in REGISTRY:
            raise UserError(f"base policy {path} is a {ckpt['algo']!r} run, an algorithm this ctrlrl "
                            "does not have; use a checkpoint of one of its on-policy learners")
        # building an algorithm seeds torch and sets its thread count: keep the learner's
        threads = torch.get_num_threads()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            self.algo = REGISTRY[ckpt["algo"]].from_checkpoint(ckpt, device=str(device), extra=False)
        torch.set_num_threads(threads)
        self.policy = getattr(self.algo, "policy", None)
        if self.policy is None or not hasattr(self.policy, "dist_params"):
            raise UserError(f"base policy {path} is a {ckpt['algo']} run, whose actor has no action "
                            "distribution to compare with; use an on-policy (ppo, mdpo) checkpoint")
        own = self.algo.env
        for what, mine, theirs in (("observes", env.observation_space, own.observation_space),
                                   ("acts in", env.action_space, own.action_space)):
            if type(mine) is not type(theirs) or mine.shape != theirs.shape or (
                    isinstance(mine, gym.spaces.Discrete) and mine.n != theirs.n):
                raise UserError(f"base policy {path} {what} {theirs} (trained on {own.env_id}) but "
                                f"{env.env_id} {what} {mine}; train the base policy on an env with "
                                "the same spaces (e.g. the env's -true variant)")
        self.device = device

    def _obs(self, raw_obs: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(self.algo.env.normalize_obs(raw_obs), device=self.device)

    @torch.no_grad()
    def dist(self, raw_obs: np.ndarray) -> Any:
        return self.policy.dist_params(self._obs(raw_obs))

    @torch.no_grad()
    def sample(self, raw_obs: np.ndarray) -> np.ndarray:
        return self.policy.sample(self._obs(raw_obs))[0].cpu().numpy()

    def close(self) -> None:
        self.algo.close()


def action_divergence(kind: str, policy: torch.nn.Module, p: Any, q: Any) -> torch.Tensor:
    """Per-state D(p ‖ q) of two action distributions in `policy`'s `dist_params` format."""
    kl = policy.kl(p, q)
    if kind == "kl":
        return kl
    if isinstance(policy, GaussianPolicy):
        (mp, lp), (mq, lq) = p, q
        var_p, var_q = torch.exp(2 * lp), torch.exp(2 * lq)
        d = 2 * var_q - var_p
        finite = (d > 0).all(-1)
        d = d.clamp(min=1e-8)
        log_terms = (torch.log(var_q) - lp - 0.5 * torch.log(d) + (mp - mq).pow(2) / d).sum(-1)
        chi2 = torch.expm1(log_terms.clamp(max=30.0))
        return torch.where(finite, chi2, kl)
    probs_p, probs_q = p.exp(), q.exp()
    return ((probs_p - probs_q).pow(2) / probs_q.clamp(min=1e-12)).sum(-1)


# ---- shared by both algorithms ----------------------------------------------------------------
@dataclass
class RegularizedConfig(PPOConfig):
    # the safe policy: scripted (the env's own) | a ctrlrl run dir or checkpoint
    base_policy: str = "scripted"
    reg_coef: float = 0.0  # λ, weight of the divergence from the base policy; negative pushes away from it
    init_from_base: bool = False  # start from the base checkpoint's actor, critic and statistics

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.base_policy:
            raise UserError("base_policy is empty; pass --base-policy PATH or 'scripted'")


class _BaseRegularized(PPO):
    """PPO with a base policy, and each rollout's raw observations kept to query it."""

    @classmethod
    def incompatibility(cls, env: gym.Env, run: RunConfig, cfg: RegularizedConfig) -> str | None:
        """A base policy: the env's scripted one, or a checkpoint that exists."""
        if cfg.base_policy == "scripted":
            if not callable(getattr(env.unwrapped, "base_action_probs", None)):
                return (f"{run.env} has no scripted base policy (`base_action_probs`); pass "
                        "--base-policy PATH with a ctrlrl checkpoint of a safe policy, or use an "
                        "env with one (ctrlrl/Tomato-v0)")
        elif not Path(cfg.base_policy).exists():
            return (f"base policy {cfg.base_policy} does not exist; pass --base-policy with a "
                    "ctrlrl run dir or checkpoint .pt file (or 'scripted' for the env's own)")
        return super().incompatibility(env, run, cfg)

    def build(self) -> None:
        super().build()
        cfg = self.cfg
        if cfg.base_policy == "scripted":
            self.base: BasePolicy = ScriptedBase(self.env, self.np_rng, self.device)
        else:
            self.base = CheckpointBase(cfg.base_policy, self.env, self.device)
        if cfg.init_from_base:
            self.init_from_base()
        self.raw_obs = np.zeros((cfg.n_steps, self.run.n_envs, self.obs_dim), np.float32)

    def init_from_base(self) -> None:
        """Copy the base checkpoint's actor and critic (and observation and reward statistics)
        into the learner, so that training starts at the safe policy."""
        base = getattr(self.base, "algo", None)
        if base is None or not hasattr(base, "value_fn"):
            raise UserError("init_from_base needs --base-policy with a ppo-family checkpoint "
                            "(a scripted base has no network to copy)")
        try:
            self.policy.load_state_dict(base.policy.state_dict())
            self.value_fn.load_state_dict(base.value_fn.state_dict())
        except RuntimeError:
            raise UserError(f"init_from_base: the base checkpoint's networks differ from this run's "
                            f"(hidden_sizes={list(self.cfg.hidden_sizes)}); set hidden_sizes and "
                            "activation to the base run's") from None
        # the statistics the copied networks were trained with (observations, reward scale)
        for key, mine, theirs in (("normalize_obs", self.env.obs_rms, base.env.obs_rms),
                                  ("normalize_reward", self.env.ret_rms, base.env.ret_rms)):
            if (mine is None) != (theirs is None):
                raise UserError(f"init_from_base: the base run has {key}={theirs is not None}, this "
                                f"run {key}={mine is not None}; set {key} as the base run did")
            if mine is not None:
                mine.load_state_dict(theirs.state_dict())
        self.obs = self.env.obs = self.env.normalize_obs(self.env.raw_obs)

    def record_decision(self, action: np.ndarray) -> None:
        self.raw_obs[self.rollout.pos] = self.env.raw_obs.reshape(self.run.n_envs, -1)

    def base_dist_of_rollout(self) -> Any:
        return self.base.dist(self.raw_obs.reshape(-1, self.obs_dim))

    def close(self) -> None:
        super().close()
        self.base.close()

    def action_kl(self, data: RolloutBatch, base_dist: Any) -> torch.Tensor:
        with torch.no_grad():
            return self.policy.kl(self.policy.dist_params(data.obs), base_dist).mean()


# ---- ppo-adreg --------------------------------------------------------------------------------
@dataclass
class ADRegConfig(RegularizedConfig):
    divergence: str = "kl"  # kl | chi2: of the action distributions

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.divergence not in ACTION_DIVERGENCES:
            raise UserError(f"divergence={self.divergence!r} is not known for ppo-adreg; use one "
                            f"of {', '.join(ACTION_DIVERGENCES)}")


class PPOADReg(_BaseRegularized):
    name = "ppo-adreg"
    summary = "PPO regularised towards a safe policy's action distribution (ORPO's baseline)"
    Config = ADRegConfig

    def regularizer(self, b: RolloutBatch, idx: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
        """(1/(1−γ))·λ·mean D(π ‖ π_base) over the minibatch's states; diagnostic: that D."""
        base = self.rollout_base_dist
        base_b = tuple(x[idx] for x in base) if isinstance(base, tuple) else base[idx]
        current = self.policy.dist_params(b.obs)
        div = action_divergence(self.cfg.divergence, self.policy, current, base_b).mean()
        return self.cfg.reg_coef / (1 - self.cfg.gamma) * div, {"action_divergence": div.detach()}

    def update(self, rollout: RolloutBuffer) -> Metrics:
        # the base's action distribution at every state of the rollout, rows in `rollout.all()`
        # order, for the minibatch regulariser
        self.rollout_base_dist = self.base_dist_of_rollout()
        metrics = super().update(rollout)
        return metrics | {"action_kl": self.action_kl(rollout.all(), self.rollout_base_dist)}


# ---- orpo -------------------------------------------------------------------------------------
@dataclass
class ORPOConfig(RegularizedConfig):
    reg_coef: float = 0.05  # λ; 0.05 is the tomato base policy's per-step reward std, the paper's unit
    divergence: str = "sqrt_chi2"  # kl | chi2 | sqrt_chi2 | tv: of the occupancy measures
    state_only: bool = False  # discriminate states only, d(s)
    base_fraction: float = 0.5  # share of each iteration's env steps run by the base policy
    disc_hidden_sizes: tuple[int, ...] = (256, 256)  # hidden layer widths of the discriminator
    disc_learning_rate: float = 1e-3  # Adam step size of the discriminator
    disc_epochs: int = 8  # discriminator passes over each iteration's samples
    disc_batch_size: int = 256  # discriminator minibatch size
    penalty_clip: float = math.inf  # |λ·penalty| per step at most (inf: no clip, the reference's)
    base_steps_in_budget: bool = True  # base-policy env steps count in total_steps (the reference)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, positive=("disc_learning_rate", "disc_epochs", "disc_batch_size",
                                     "penalty_clip"), widths=("disc_hidden_sizes",))
        if self.divergence not in OM_DIVERGENCES:
            raise UserError(f"divergence={self.divergence!r} is not known for orpo; use one of "
                            f"{', '.join(OM_DIVERGENCES)}")
        if not 0 < self.base_fraction < 1:
            raise UserError(f"base_fraction={self.base_fraction}: need a share strictly between 0 "
                            "and 1 of each iteration's env steps")


def fit_discriminator(disc: torch.nn.Module, optimizer: torch.optim.Optimizer, current: torch.Tensor,
                      base: torch.Tensor, epochs: int, batch_size: int) -> torch.Tensor:
    """Train d on `softplus(−d(current)) + softplus(d(base))` (step 2 above); returns the mean loss.

    Each step pairs a minibatch of current samples with one of base samples (as many minibatches
    of each per epoch, so the two sets need not be the same size)."""
    losses = []
    for _ in range(epochs):
        cur_perm = torch.randperm(len(current), device=current.device)
        base_perm = torch.randperm(len(base), device=base.device)
        n_batches = max(1, min(len(current), len(base)) // batch_size)
        for cur_idx, base_idx in zip(cur_perm.tensor_split(n_batches),
                                     base_perm.tensor_split(n_batches), strict=True):
            loss = (F.softplus(-disc(current[cur_idx])).mean()
                    + F.softplus(disc(base[base_idx])).mean())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
    return torch.stack(losses).mean()


def om_penalty(kind: str, d: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sample occupancy-measure penalty from discriminator logits d ≈ log μ_π/μ_base (step 3 above)."""
    chi2 = torch.expm1(d.clamp(max=30.0))
    stats = {"om_kl": d.mean(), "om_chi2": chi2.mean()}
    if kind == "kl":
        return d, stats
    if kind == "tv":
        return torch.sign(d), stats
    if kind == "chi2":
        return chi2, stats
    cut = int(0.01 * len(chi2))
    ordered = chi2.sort().values
    trimmed = ordered[cut:len(ordered) - cut].mean() if len(ordered) > 2 * cut else ordered.mean()
    stats["om_chi2_trimmed"] = trimmed
    return (chi2 / trimmed.sqrt() if trimmed > 0 else chi2), stats


class ORPO(_BaseRegularized):
    name = "orpo"
    summary = "ORPO: PPO regularised towards a safe policy's occupancy measure, against reward hacking"
    Config = ORPOConfig
    action_spaces = (gym.spaces.Box, gym.spaces.Discrete)  # what the discriminator takes

    def build(self) -> None:
        super().build()
        cfg, run = self.cfg, self.run
        space = self.env.action_space
        self.discrete = isinstance(space, gym.spaces.Discrete)
        act_dim = 0 if cfg.state_only else (int(space.n) if self.discrete else int(np.prod(space.shape)))
        self.disc = MLP(self.obs_dim + act_dim, cfg.disc_hidden_sizes, 1, "leaky_relu").to(self.device)
        self.disc_optimizer = adam(self.disc.parameters(), cfg.disc_learning_rate)
        # base envs: same count as the learner's; steps per env so that they make base_fraction
        self.base_steps = max(1, round(cfg.n_steps * cfg.base_fraction / (1 - cfg.base_fraction)))
        self.base_env = VecEnv(run.env, run.n_envs, run.vec_mode)
        self.base_env.reset(run.seed + BASE_SEED_OFFSET)
        self.base_steps_taken = 0
        if not self.discrete:
            self.act_low = torch.as_tensor(space.low, device=self.device)
            self.act_high = torch.as_tensor(space.high, device=self.device)

    def state_modules(self):
        return {**super().state_modules(), "discriminator": self.disc,
                "disc_optimizer": self.disc_optimizer}

    def extra_state(self) -> dict[str, Any]:
        return {"base_env": self.base_env.state_dict(), "base_steps": self.base_steps_taken}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.base_env.load_state_dict(state["base_env"])
        self.base_steps_taken = state["base_steps"]

    def disc_input(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        if self.cfg.state_only:
            return obs
        if self.discrete:
            actions = F.one_hot(actions.long().reshape(-1), int(self.env.action_space.n)).float()
        else:
            actions = torch.maximum(torch.minimum(actions, self.act_high), self.act_low)
        return torch.cat([obs, actions], 1)

    def base_rollout(self) -> torch.Tensor:
        """`base_steps` steps of the base policy in each base env → discriminator inputs."""
        env, n = self.base_env, self.run.n_envs
        obs, actions = [], []
        for _ in range(self.base_steps):
            action = self.base.sample(env.raw_obs.reshape(n, -1))
            obs.append(self.env.normalize_obs(env.raw_obs))  # the learner's statistics, as its samples
            actions.append(np.asarray(action, np.float32).reshape(n, -1))
            env.step(self.to_env_action(action))
        self.base_steps_taken += self.base_steps * n
        return self.disc_input(torch.as_tensor(np.concatenate(obs), device=self.device),
                               torch.as_tensor(np.concatenate(actions), device=self.device))

    def train_iteration(self) -> None:
        super().train_iteration()
        if self.cfg.base_steps_in_budget:  # after the update: rollout_schedule sees the learner's
            self.step += self.base_steps * self.run.n_envs

    def budget_note(self) -> str | None:
        if not self.cfg.base_steps_in_budget:
            return super().budget_note()
        n_steps, base, n_envs = self.cfg.n_steps, self.base_steps, self.run.n_envs
        return self.whole_iterations_note(
            (n_steps + base) * n_envs,
            f"(n_steps + base-policy steps) × n_envs = ({n_steps} + {base}) × {n_envs}")

    def rollout_schedule(self) -> tuple[int, float]:
        """As PPO's, with an iteration spending the base's steps of the budget too (when it does)."""
        learner = self.cfg.n_steps * self.run.n_envs
        batch = learner + (self.base_steps * self.run.n_envs if self.cfg.base_steps_in_budget else 0)
        started = self.step - learner
        return started // batch, max(0.0, 1.0 - started / self.run.total_steps)

    def shape_rewards(self, rollout: RolloutBuffer) -> Metrics:
        """Steps 2-4 above: fit the discriminator on this rollout and the base's, then subtract
        the clipped λ·penalty from the rollout's rewards."""
        cfg = self.cfg
        n = cfg.n_steps * self.run.n_envs
        current = self.disc_input(torch.as_tensor(rollout.obs.reshape(n, -1), device=self.device),
                                  torch.as_tensor(rollout.actions.reshape(n, -1), device=self.device))
        disc_loss = fit_discriminator(self.disc, self.disc_optimizer, current, self.base_rollout(),
                                      cfg.disc_epochs, cfg.disc_batch_size)
        with torch.no_grad():
            d = self.disc(current).squeeze(-1)
            penalty, stats = om_penalty(cfg.divergence, d)
            shaped = (cfg.reg_coef * penalty).clamp(-cfg.penalty_clip, cfg.penalty_clip)
        rollout.rewards -= shaped.cpu().numpy().reshape(rollout.rewards.shape)
        return {"disc_loss": disc_loss, "penalty": shaped.mean(), **stats,
                "base_steps": float(self.base_steps_taken)}

    def update(self, rollout: RolloutBuffer) -> Metrics:
        metrics = super().update(rollout)
        return metrics | {"action_kl": self.action_kl(rollout.all(), self.base_dist_of_rollout())}

    def close(self) -> None:
        super().close()
        self.base_env.close()
