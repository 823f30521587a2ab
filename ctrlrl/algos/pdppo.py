"""Post-Decision PPO with dual critics (Felizardo et al., IJCNN 2025; ALGORITHMS.md §2).

A transition splits into a deterministic decision step s^x = f(s, a) (the post-decision state) and
a stochastic step s' = g(s^x, ξ). PDPPO keeps PPO's clipped actor and learns two critics, each with
its own Adam optimiser: V(s) on pre-decision states and V^x(s^x) on post-decision states. The
actor's advantage is the larger of the two:

    A_t = max(R_t − V(s_t),  R_t − V^x(s^x_t))

Both critics regress the same return R_t: s^x_t is reached by the decision taken at s_t, so the
return that follows it is the same sample (the decision's deterministic cost — the setup cost on
lot-sizing — is part of r_t and known once s^x_t is). This is what the paper's max-advantage and its
reference code compute; ALGORITHMS.md's R^x_t is this return seen from s^x_t.

R_t is the λ-return of the pre-decision critic; the default λ = 1 makes it the Monte-Carlo return
the paper uses, bootstrapped with V only where the rollout cuts an episode (time limit, rollout end).

The env supplies the decision step: `env.unwrapped.post_decision(obs, action)`, pure and batched
(ctrlrl/LotSizing-*, ctrlrl/FrozenLakePD*). PDPPO evaluates it on the raw observation and the
action before each env step, and feeds V^x the result normalised with the observation statistics
when observation normalisation is on and s^x has the observation's shape.

Choices where the paper is silent or its reference code has known bugs (ALGORITHMS.md §2):
- the whole actor trains (the reference's discrete-actor optimiser reached only the last layer);
  the rollout is rebuilt every update (the reference never cleared its buffer); each critic's loss
  reaches its own optimiser with gradients (the reference added them detached);
- with a MultiDiscrete policy the ratio is clipped per action component and the surrogate and entropy
  are averaged over components (`ratio: factor`, as the reference code's factorised actor);
  `ratio: joint` clips the joint ratio as ctrlrl's PPO does;
- the critics fit the returns standardised per rollout, as the reference code does, but the actor's
  advantages are formed in return units (the critics' outputs mapped back with the statistics they
  were fit with, which also serve the bootstraps) and then standardised per batch. Lot-sizing
  returns are large negative costs with a small spread, which the suite's `normalize_reward`
  (scaling by the std of the discounted return) turns into near-constant targets; this does not;
- gradients are norm-clipped per network, since each has its own optimiser;
- `critics: pre` (V only: PPO with PDPPO's settings, the paper's baseline) and `critics: post`
  (V^x only) are the ablations; both critics are trained in every mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from ctrlrl.algos.base import OnPolicyAlgorithm
from ctrlrl.core.buffers import RolloutBuffer, explained_variance, standardize
from ctrlrl.core.config import check_ranges
from ctrlrl.core.errors import UserError
from ctrlrl.core.nets import MLP, FlatParams, adam, make_policy, orthogonal_init

ADVANTAGES = ("dual", "pre", "post")


@dataclass
class PDPPOConfig:
    n_steps: int = 4000  # steps per env per rollout (the paper updates every 4000 steps)
    batch_size: int = 0  # minibatch size; 0: the full rollout in one batch, as the paper
    n_epochs: int = 60
    actor_lr: float = 5.5e-4
    critic_lr: float = 1e-3
    anneal_lr: bool = False  # linear decay of all three learning rates to 0 over total_steps
    adam_eps: float = 1e-8
    gamma: float = 0.99
    gae_lambda: float = 1.0  # 1: Monte-Carlo returns
    clip_range: float = 0.2
    ratio: str = "factor"  # factor | joint (MultiDiscrete policies; others are always joint)
    critics: str = "dual"  # dual: max of both advantages | pre: V(s) only | post: V^x(s^x) only
    normalize_advantage: bool = True
    normalize_returns: bool = True  # critics fit returns standardised per rollout (as the paper's code)
    ent_coef: float = 1e-3
    max_grad_norm: float = 1.0  # per network
    actor_hidden_sizes: tuple[int, ...] = (128, 128)
    actor_activation: str = "relu"
    critic_hidden_sizes: tuple[int, ...] = (128, 128)
    critic_activation: str = "tanh"
    ortho_init: bool = False  # PyTorch's default init, as the reference
    log_std_init: float = 0.0  # Box action spaces

    def __post_init__(self) -> None:
        check_ranges(self, positive=("n_steps", "n_epochs", "actor_lr", "critic_lr", "adam_eps"),
                     non_negative=("batch_size", "clip_range", "ent_coef", "max_grad_norm"),
                     fraction=("gamma", "gae_lambda"),
                     widths=("actor_hidden_sizes", "critic_hidden_sizes"))
        for key, allowed in (("ratio", ("factor", "joint")), ("critics", ADVANTAGES)):
            if getattr(self, key) not in allowed:
                raise UserError(f"{key}={getattr(self, key)!r} is not known; use one of "
                                f"{', '.join(allowed)}")


class PDPPO(OnPolicyAlgorithm):
    name = "pdppo"
    Config = PDPPOConfig

    def build(self) -> None:
        cfg, env, device = self.cfg, self.env, self.device
        self.decision_env = gym.make(env.env_id).unwrapped
        if not callable(getattr(self.decision_env, "post_decision", None)):
            self.decision_env.close()
            raise UserError(
                f"pdppo needs the post-decision state, and {env.env_id} has no "
                "`post_decision(obs, action)`; use ctrlrl/LotSizing-<n>x<M>-v0 or "
                "ctrlrl/FrozenLakePD-v0, or give your env that pure, batched method")
        post = self.post_decision(env.raw_obs, env.action_space.sample()[None].repeat(env.n_envs, 0))
        self.post_dim = post.shape[-1]

        self.policy = make_policy(env.action_space, self.obs_dim, cfg.actor_hidden_sizes,
                                  cfg.actor_activation, cfg.ortho_init, cfg.log_std_init).to(device)
        self.value_fn = MLP(self.obs_dim, cfg.critic_hidden_sizes, 1, cfg.critic_activation).to(device)
        self.post_value_fn = MLP(self.post_dim, cfg.critic_hidden_sizes, 1,
                                 cfg.critic_activation).to(device)
        if cfg.ortho_init:
            orthogonal_init(self.value_fn, last_gain=1.0)
            orthogonal_init(self.post_value_fn, last_gain=1.0)
        self.factor_ratio = cfg.ratio == "factor" and hasattr(self.policy, "factor_log_prob_entropy")
        # one flat parameter and one Adam per network: each critic's optimiser sees only its own
        self.flats = {"actor": FlatParams(self.policy), "critic": FlatParams(self.value_fn),
                      "post_critic": FlatParams(self.post_value_fn)}
        self.optimizers = {
            name: adam([flat.param], cfg.actor_lr if name == "actor" else cfg.critic_lr,
                       cfg.adam_eps)
            for name, flat in self.flats.items()}
        self.rollout = self.make_rollout_buffer()
        self.post_obs = np.zeros((cfg.n_steps, env.n_envs, self.post_dim), np.float32)
        # the critics predict (R − mean) / std with the statistics of the rollout they last fit
        self.return_stats = torch.tensor([0.0, 1.0], device=device)

    def state_modules(self):
        return {"policy": self.policy, "value_fn": self.value_fn,
                "post_value_fn": self.post_value_fn,
                **{f"{name}_optimizer": opt for name, opt in self.optimizers.items()}}

    def post_decision(self, raw_obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        """s^x for a batch, on the scale V^x sees (normalised like observations where they match)."""
        post = np.asarray(self.decision_env.post_decision(raw_obs, action), np.float32)
        if self.env.obs_rms is not None and post.shape[-1:] == self.env.observation_space.shape:
            return self.env.normalize_obs(post)
        return post

    def on_action(self, action: np.ndarray) -> None:
        self.post_obs[self.rollout.pos] = self.post_decision(self.env.raw_obs, action)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.value_fn(obs).squeeze(-1) * self.return_stats[1] + self.return_stats[0]

    def post_value(self, post_obs: torch.Tensor) -> torch.Tensor:
        return self.post_value_fn(post_obs).squeeze(-1) * self.return_stats[1] + self.return_stats[0]

    def extra_state(self):
        return {"return_stats": self.return_stats.cpu()}

    def load_extra_state(self, state) -> None:
        self.return_stats = state["return_stats"].to(self.device)

    def log_prob_entropy(self, obs: torch.Tensor, actions: torch.Tensor):
        """(log-probabilities, entropies), each (batch, factors): per component or joint."""
        if self.factor_ratio:
            return self.policy.factor_log_prob_entropy(obs, actions)
        log_prob, entropy = self.policy.log_prob_entropy(obs, actions)
        return log_prob[:, None], entropy[:, None]

    def advantages(self, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        return {"dual": torch.maximum(pre, post), "pre": pre, "post": post}[self.cfg.critics]

    def loss(self, obs: torch.Tensor, actions: torch.Tensor, post_obs: torch.Tensor,
             targets: torch.Tensor, adv: torch.Tensor, old_log_prob: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Clipped surrogate + entropy bonus + both critics' losses for one batch; a stats row.
        `targets` are the returns on the critics' output scale (see `return_stats`)."""
        cfg = self.cfg
        if cfg.normalize_advantage and len(adv) > 1:
            adv = standardize(adv)
        log_prob, entropy = self.log_prob_entropy(obs, actions)
        log_ratio = log_prob - old_log_prob
        ratio = log_ratio.exp()
        clipped = ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range)
        adv = adv[:, None]
        pg_loss = -torch.min(adv * ratio, adv * clipped).mean()
        entropy_loss = -entropy.mean()
        value_loss = F.mse_loss(self.value_fn(obs).squeeze(-1), targets)
        post_value_loss = F.mse_loss(self.post_value_fn(post_obs).squeeze(-1), targets)
        loss = pg_loss + cfg.ent_coef * entropy_loss + value_loss + post_value_loss
        with torch.no_grad():
            approx_kl = ((ratio - 1) - log_ratio).mean()
            clip_frac = ((ratio - 1).abs() > cfg.clip_range).float().mean()
            stats = torch.stack([pg_loss, value_loss, post_value_loss, entropy_loss, clip_frac,
                                 approx_kl])
        return loss, stats

    def update(self, rollout: RolloutBuffer) -> None:
        cfg = self.cfg
        if cfg.anneal_lr:
            left = self.rollout_schedule()[1]
            for name, opt in self.optimizers.items():
                opt.param_groups[0]["lr"] = left * (cfg.actor_lr if name == "actor" else cfg.critic_lr)
        data = rollout.all()
        n = data.obs.shape[0]
        post_obs = torch.as_tensor(self.post_obs.reshape(n, -1), device=self.device)
        with torch.no_grad():
            post_values = self.post_value(post_obs)
            old_log_prob = self.log_prob_entropy(data.obs, data.actions)[0]
        pre_adv, post_adv = data.advantages, data.returns - post_values
        advantages = self.advantages(pre_adv, post_adv)
        if cfg.normalize_returns:
            self.return_stats = torch.stack([data.returns.mean(), data.returns.std() + 1e-8])
        targets = (data.returns - self.return_stats[0]) / self.return_stats[1]
        batch = cfg.batch_size or n
        stats = []
        for _ in range(cfg.n_epochs):
            for idx in torch.randperm(n, device=self.device).split(batch):
                loss, stats_row = self.loss(data.obs[idx], data.actions[idx], post_obs[idx],
                                            targets[idx], advantages[idx], old_log_prob[idx])
                for flat in self.flats.values():
                    flat.zero_grad()
                loss.backward()  # disjoint parameters: fills each network's own gradient
                for name, flat in self.flats.items():
                    flat.clip_grad_norm_(cfg.max_grad_norm)
                    self.optimizers[name].step()
                self.n_updates += 1
                stats.append(stats_row)
        means = torch.stack(stats).mean(0)
        self.metrics = {
            "policy_gradient_loss": means[0], "value_loss": means[1], "post_value_loss": means[2],
            "entropy_loss": means[3], "clip_fraction": means[4], "approx_kl": means[5],
            "learning_rate": self.optimizers["actor"].param_groups[0]["lr"],
            # how often the post-decision critic gave the larger advantage
            "post_advantage_share": (post_adv > pre_adv).float().mean(),
            "explained_variance_post": explained_variance(data.returns, post_values),
            **self.rollout_metrics(data),
        }

    def close(self) -> None:
        super().close()
        self.decision_env.close()
