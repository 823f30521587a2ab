"""Post-Decision PPO with dual critics (Felizardo et al., IJCNN 2025; arXiv 2504.05150).

A transition splits into a deterministic decision step s^x = f(s, a) (the post-decision state) and
a stochastic step s' = g(s^x, ξ). PDPPO keeps PPO's clipped actor and learns two critics, each with
its own Adam optimiser: V(s) on pre-decision states and V^x(s^x) on post-decision states. The
actor's advantage is the larger of the two (the paper's max-advantage; the authors' latest
`agents/PDPPO.py`, `advantages = torch.max(advantages_current, advantages_post)`):

    A_t = max(R_t − V(s_t),  R^x_t − V^x(s^x_t))

R_t = Σ_k γ^(k−t) r_k is the return of the env's rewards; R^x_t = Σ_k γ^(k−t) r^x_k is the return of
the post-decision reward stream alone: r^x_t is the decision's deterministic reward (lot-sizing:
minus the setup cost of the machines that switch), as the paper defines it and the reference code
records it (`post_rewards = −sum(setup_cost)`, discounted on its own and regressed by `critic_post`).
`post_return: shared` is the earlier form, where V^x also regresses R_t. `pre_reward: residual` is
the authors' latest training loop (`agents/PDPPOAgent.py` stores `reward - post_reward`), where R_t
is the return of r_t − r^x_t, the part of the reward the decision does not fix; the default
`total` is the paper's R_t = Σ_k γ^(k−t) r_k of the env's reward.

Both returns are λ-returns built the same way (core `compute_gae`): R_t with V, R^x_t with V^x, each
reset where an episode ends. The default λ = 1 makes them the Monte-Carlo returns of the paper and
the reference; where the rollout cuts an episode (a time-limit truncation, the rollout's end) R_t is
bootstrapped with V(s') and R^x_t with V^x(f(s', a')), a' drawn from the policy at s' (the next
decision's post-decision state). A termination — on lot-sizing the horizon's end, as the
reference's `done` — bootstraps neither.

The env supplies the decision step: `env.unwrapped.post_decision(obs, action)` and
`env.unwrapped.post_decision_reward(obs, action)`, pure and batched (ctrlrl/LotSizing-*,
ctrlrl/ProximityLakePD-v0; ctrlrl/FrozenLakePD*, whose decision earns 0). PDPPO evaluates both on
the raw observation and the action before each env step, and feeds V^x the state normalised with
the observation statistics when observation normalisation is on and s^x has the observation's
shape. r^x is in the env's reward units, so `post_return: own` takes raw rewards (no
`normalize_reward`). Where the decision earns nothing (FrozenLakePD) R^x is only V^x's bootstraps,
V^x learns ≈ 0 and the max keeps the actor's advantage at or above about 0: the paper's formula
taken as written (on the 4×4 lake, 40k steps, seed 0, PDPPO's deterministic policy scored 0 where
PPO's reached 0.7; the paper's lake, ProximityLakePD, pays the decision a reward).

Choices where the paper is silent or its reference code has known bugs:
- the whole actor trains (the reference's discrete-actor optimiser reached only the last layer);
  the rollout is rebuilt every update (the reference's buffer was never cleared, later kept as a
  sliding window of its last 2,000-3,000 steps); each critic's loss
  reaches its own optimiser with gradients (the reference added them detached);
- with a MultiDiscrete policy the ratio is clipped per action component and the surrogate and entropy
  are averaged over components (`ratio: factor`, as the reference code's factorised actor);
  `ratio: joint` clips the joint ratio as ctrlrl's PPO does;
- each critic fits its own returns standardised per rollout (`normalize_returns`; the reference
  fits them raw, its standardisation commented out), but the actor's advantages are formed in
  return units (each critic's output mapped back with the statistics it was fit with, which also
  serve the bootstraps) and then standardised per batch. Lot-sizing returns are large negative
  costs with a small spread, which the suite's `normalize_reward` (scaling by the std of the
  discounted return) turns into near-constant targets; this does not;
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

from ctrlrl.algos.base import Metrics
from ctrlrl.algos.on_policy import OnPolicyAlgorithm, RolloutConfig
from ctrlrl.core.buffers import RolloutBuffer, compute_gae, explained_variance, standardize
from ctrlrl.core.config import RunConfig, check_choices, check_ranges
from ctrlrl.core.nets import MLP, FlatParams, adam, make_policy, orthogonal_init

ADVANTAGES = ("dual", "pre", "post")
POST_RETURNS = ("own", "shared")
PRE_REWARDS = ("total", "residual")


@dataclass
class PDPPOConfig(RolloutConfig):
    n_steps: int = 4000  # steps per env per rollout (the authors' earlier code; lot-sizing's preset: 400)
    batch_size: int = 0  # minibatch size; 0: the full rollout in one batch, as the paper
    n_epochs: int = 60  # passes over each rollout
    actor_lr: float = 5.5e-4  # Adam step size of the actor
    critic_lr: float = 1e-3  # Adam step size of each critic (V and V^x)
    anneal_lr: bool = False  # linear decay of all three learning rates to 0 over total_steps
    adam_eps: float = 1e-8  # Adam's ε
    gae_lambda: float = 1.0  # λ of both λ-returns (1: Monte-Carlo returns)
    clip_range: float = 0.2  # ε of the clipped probability ratio, clip(r, 1 − ε, 1 + ε)
    ratio: str = "factor"  # factor | joint (MultiDiscrete policies; others are always joint)
    critics: str = "dual"  # dual: max of both advantages | pre: V(s) only | post: V^x(s^x) only
    post_return: str = "own"  # own: V^x fits R^x of the decisions' rewards r^x | shared: V^x fits R
    pre_reward: str = "total"  # total: R sums the env's r | residual: R sums r − r^x (the authors' code)
    normalize_advantage: bool = True  # standardise the actor's advantages per batch
    normalize_returns: bool = True  # critics fit returns standardised per rollout (as the paper's code)
    ent_coef: float = 1e-3  # weight of the entropy bonus
    max_grad_norm: float = 1.0  # clip each network's gradient norm to this
    actor_hidden_sizes: tuple[int, ...] = (128, 128)  # hidden layer widths of the actor
    actor_activation: str = "relu"  # the actor's hidden activation: tanh | relu | elu | leaky_relu
    critic_hidden_sizes: tuple[int, ...] = (128, 128)  # hidden layer widths of each critic
    critic_activation: str = "tanh"  # the critics' hidden activation: tanh | relu | elu | leaky_relu
    ortho_init: bool = False  # orthogonal weight initialisation; off: PyTorch's default, as the reference
    log_std_init: float = 0.0  # initial log-std of the Gaussian policy (Box action spaces)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, positive=("n_epochs", "actor_lr", "critic_lr", "adam_eps"),
                     non_negative=("batch_size", "clip_range", "ent_coef", "max_grad_norm"),
                     widths=("actor_hidden_sizes", "critic_hidden_sizes"))
        check_choices(self, ratio=("factor", "joint"), critics=ADVANTAGES,
                      post_return=POST_RETURNS, pre_reward=PRE_REWARDS)


def uses_post_rewards(cfg: PDPPOConfig) -> bool:
    """Whether a configuration learns from the decision's own reward r^x."""
    return cfg.post_return == "own" or cfg.pre_reward == "residual"


class PDPPO(OnPolicyAlgorithm):
    name = "pdppo"
    summary = "Post-Decision PPO with dual critics, for envs with post-decision states (Felizardo et al.)"
    Config = PDPPOConfig

    def build(self) -> None:
        cfg, env, device = self.cfg, self.env, self.device
        self.decision_env = gym.make(env.env_id).unwrapped
        self.own_post_return = cfg.post_return == "own"
        self.uses_post_rewards = uses_post_rewards(cfg)
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
        self.post_rewards = np.zeros((cfg.n_steps, env.n_envs), np.float32)  # r^x_t
        # γ·V^x(f(s', a')) where step t's episode was truncated, else 0; and V^x after the rollout
        self.post_bootstrap = np.zeros((cfg.n_steps, env.n_envs), np.float32)
        self.post_last_values = np.zeros(env.n_envs, np.float32)
        # each critic predicts (return − mean) / std with the statistics of the rollout it last fit
        self.return_stats = torch.tensor([0.0, 1.0], device=device)
        self.post_return_stats = torch.tensor([0.0, 1.0], device=device)

    @classmethod
    def incompatibility(cls, env: gym.Env, run: RunConfig, cfg: PDPPOConfig) -> str | None:
        """The env's decision step (`post_decision`, and `post_decision_reward` where the
        configuration uses the decision's own reward), besides the base checks."""
        decision_env, env_id = env.unwrapped, run.env
        if not callable(getattr(decision_env, "post_decision", None)):
            return (f"pdppo needs the post-decision state, and {env_id} has no "
                    "`post_decision(obs, action)`; use ctrlrl/LotSizing-<n>x<M>-v0 or "
                    "ctrlrl/FrozenLakePD-v0, or give your env that pure, batched method")
        if uses_post_rewards(cfg):
            if not callable(getattr(decision_env, "post_decision_reward", None)):
                return (f"pdppo's post-decision return needs the decision's own reward, and "
                        f"{env_id} has no `post_decision_reward(obs, action)`; give your env that "
                        "pure, batched method or set post_return=shared (and pre_reward=total)")
            if run.normalize_reward:
                return ("pdppo with post_return=own or pre_reward=residual uses the env's raw "
                        "decision rewards r^x; drop normalize_reward (PDPPO standardises each "
                        "critic's targets itself) or set post_return=shared (and pre_reward=total)")
        return super().incompatibility(env, run, cfg)

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

    def record_decision(self, action: np.ndarray) -> None:
        """s^x_t and r^x_t of the decision about to be taken."""
        t, raw_obs = self.rollout.pos, self.env.raw_obs
        self.post_obs[t] = self.post_decision(raw_obs, action)
        if self.uses_post_rewards:
            self.post_rewards[t] = self.decision_env.post_decision_reward(raw_obs, action)

    def next_post_value(self, obs: np.ndarray, raw_obs: np.ndarray) -> np.ndarray:
        """V^x(f(s', a')) with a' ~ π(s'): the post-decision return's bootstrap at s'."""
        with torch.no_grad():
            action = self.policy.sample(torch.as_tensor(obs, device=self.device))[0]
            action = action.cpu().numpy().reshape(len(obs), *self.rollout.act_shape)
            if self.rollout.discrete:
                action = action.astype(np.int64)
            post = torch.as_tensor(self.post_decision(raw_obs, action), device=self.device)
            return self.post_value(post).cpu().numpy()

    def record_outcome(self, step) -> None:
        """γ·V^x(f(s', a')) where a time limit cut step t's episode (R^x's bootstrap there)."""
        t = self.rollout.pos
        self.post_bootstrap[t] = 0.0
        truncated = step.truncated & ~step.terminated
        if self.own_post_return and truncated.any():
            self.post_bootstrap[t, truncated] = self.cfg.gamma * self.next_post_value(
                step.next_obs[truncated], step.raw_next_obs[truncated])

    def shape_rewards(self, rollout: RolloutBuffer) -> Metrics:
        """`pre_reward: residual`: R sums r − r^x."""
        if self.cfg.pre_reward == "residual":
            rollout.rewards -= self.post_rewards
        return {}

    def bootstrap_post_returns(self) -> None:
        """`post_last_values`: V^x(f(s', a')) where the rollout's end cuts an episode, else 0."""
        self.post_last_values[:] = 0.0
        cut = self.rollout.dones[-1] == 0  # episodes the rollout's end cuts
        if cut.any():
            self.post_last_values[cut] = self.next_post_value(self.env.obs[cut],
                                                              self.env.raw_obs[cut])

    def post_returns(self, post_values: torch.Tensor) -> torch.Tensor:
        """R^x: the λ-return of the decisions' rewards r^x with V^x, per row of `rollout.all()`
        (bootstrapped with `post_last_values` at the rollout's end)."""
        buf = self.rollout
        values = post_values.cpu().numpy().reshape(buf.n_steps, buf.n_envs)
        returns = compute_gae(self.post_rewards + self.post_bootstrap, values, buf.dones,
                              self.post_last_values, self.cfg.gamma, self.cfg.gae_lambda)[1]
        return torch.as_tensor(returns.reshape(-1), device=self.device)

    def host_actor(self) -> None:
        return None  # `value` rescales the critic's output: the rollout acts with torch

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.value_fn(obs).squeeze(-1) * self.return_stats[1] + self.return_stats[0]

    def post_value(self, post_obs: torch.Tensor) -> torch.Tensor:
        stats = self.post_return_stats
        return self.post_value_fn(post_obs).squeeze(-1) * stats[1] + stats[0]

    def extra_state(self):
        return {"return_stats": self.return_stats.cpu(),
                "post_return_stats": self.post_return_stats.cpu()}

    def load_extra_state(self, state) -> None:
        self.return_stats = state["return_stats"].to(self.device)
        # checkpoints from before each critic kept its own statistics shared one pair
        self.post_return_stats = state.get("post_return_stats", state["return_stats"]).to(self.device)

    def log_prob_entropy(self, obs: torch.Tensor, actions: torch.Tensor):
        """(log-probabilities, entropies), each (batch, factors): per component or joint."""
        if self.factor_ratio:
            return self.policy.factor_log_prob_entropy(obs, actions)
        log_prob, entropy = self.policy.log_prob_entropy(obs, actions)
        return log_prob[:, None], entropy[:, None]

    def advantages(self, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        return {"dual": torch.maximum(pre, post), "pre": pre, "post": post}[self.cfg.critics]

    def loss(self, obs: torch.Tensor, actions: torch.Tensor, post_obs: torch.Tensor,
             targets: torch.Tensor, post_targets: torch.Tensor, adv: torch.Tensor,
             old_log_prob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clipped surrogate + entropy bonus + both critics' losses for one batch; a stats row.
        `targets` (R for V) and `post_targets` (R^x for V^x) are on each critic's output scale
        (see `return_stats`, `post_return_stats`)."""
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
        post_value_loss = F.mse_loss(self.post_value_fn(post_obs).squeeze(-1), post_targets)
        loss = pg_loss + cfg.ent_coef * entropy_loss + value_loss + post_value_loss
        with torch.no_grad():
            approx_kl = ((ratio - 1) - log_ratio).mean()
            clip_frac = ((ratio - 1).abs() > cfg.clip_range).float().mean()
            stats = torch.stack([pg_loss, value_loss, post_value_loss, entropy_loss, clip_frac,
                                 approx_kl])
        return loss, stats

    def update(self, rollout: RolloutBuffer) -> Metrics:
        cfg = self.cfg
        if self.own_post_return:
            self.bootstrap_post_returns()
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
        post_returns = self.post_returns(post_values) if self.own_post_return else data.returns
        pre_adv, post_adv = data.advantages, post_returns - post_values
        advantages = self.advantages(pre_adv, post_adv)
        if cfg.normalize_returns:
            self.return_stats = torch.stack([data.returns.mean(), data.returns.std() + 1e-8])
            self.post_return_stats = torch.stack([post_returns.mean(), post_returns.std() + 1e-8])
        targets = (data.returns - self.return_stats[0]) / self.return_stats[1]
        post_targets = (post_returns - self.post_return_stats[0]) / self.post_return_stats[1]
        batch = cfg.batch_size or n
        stats = []
        for _ in range(cfg.n_epochs):
            for idx in torch.randperm(n, device=self.device).split(batch):
                loss, stats_row = self.loss(data.obs[idx], data.actions[idx], post_obs[idx],
                                            targets[idx], post_targets[idx], advantages[idx],
                                            old_log_prob[idx])
                for flat in self.flats.values():
                    flat.zero_grad()
                loss.backward()  # disjoint parameters: fills each network's own gradient
                for name, flat in self.flats.items():
                    flat.clip_grad_norm_(cfg.max_grad_norm)
                    self.optimizers[name].step()
                self.n_updates += 1
                stats.append(stats_row)
        means = torch.stack(stats).mean(0)
        return {
            "policy_gradient_loss": means[0], "value_loss": means[1], "post_value_loss": means[2],
            "entropy_loss": means[3], "clip_fraction": means[4], "approx_kl": means[5],
            "learning_rate": self.optimizers["actor"].param_groups[0]["lr"],
            # how often the post-decision critic gave the larger advantage
            "post_advantage_share": (post_adv > pre_adv).float().mean(),
            "explained_variance_post": explained_variance(post_returns, post_values),
            **self.rollout_metrics(data),
        }

    def close(self) -> None:
        super().close()
        self.decision_env.close()
