"""Vanilla and normalised policy gradients: PG, normalised momentum PG, N-PG-IGT, (N)-HARPG
(Fatkhullin, Barakat, Kireeva, He, ICML 2023, "Stochastic Policy Gradient Methods: Improved Sample
Complexity for Fisher-non-degenerate Policies").

Five single-loop methods share one sampler, one estimator and one update rule, differing only in
where they sample and how they combine gradients into the direction d_t (θ ascends J):

- `pg`: REINFORCE/GPOMDP with a baseline, θ_{t+1} = θ_t + γ_t ĝ(θ_t), γ_t = γ_0 (2/(t+2))^{2/3}.
- `npg-momentum`: d_t = (1−η_t) d_{t−1} + η_t ĝ(θ_t), θ_{t+1} = θ_t + γ_t d_t/‖d_t‖,
  γ_t = γ_0·2/(t+2), η_t = η_0 (2/(t+2))^{2/3} (the reference code's normalised SGDM).
- `npg-igt`: sample at θ̃_t = θ_t + ((1−η_t)/η_t)(θ_t − θ_{t−1}), d_t = (1−η_t) d_{t−1} + η_t ĝ(θ̃_t),
  normalised step; γ_t = γ_0·2/(t+2), η_t = η_0 (2/(t+2))^{4/5}.
- `n-harpg` / `harpg`: q ~ U[0,1], θ̂_t = q θ_t + (1−q) θ_{t−1}, v_t = B̂(θ̂_t)(θ_t − θ_{t−1}),
  d_t = (1−η_t)(d_{t−1} + v_t) + η_t ĝ(θ_t); normalised step with γ_t = γ_0·2/(t+2) (n-harpg) or
  plain θ_{t+1} = θ_t + γ_t d_t with γ_t = γ_0 (2/(t+2))^{1/2} (harpg); η_t = η_0·2/(t+2).

Where the schedules start, as in the reference code (`torch/optimizers/SGDM_optimizer.py`,
`NIGT_optimizer.py`, `STORMHess_optimizer.py` of aabkn/Stochastic-Policy-Gradient-Methods): the
iteration counter is 0 at the first step (`iteration = -1`, incremented before `update_gamma` /
`update_eta`), so γ at the first step is γ_0 and η is η_0; the exponents above are those files'
`update_gamma` / `update_eta`. The first direction is the first gradient, d_0 = ĝ_0, whatever η_0
(the reference's momentum buffer is created as a copy of the first gradient: SGDM_optimizer.py
`compute_grad_estimator`, STORMHess_optimizer.py `compute_grad_estimator`); `first_direction:
scaled` instead takes d_{−1} = 0, i.e. d_0 = η_0 ĝ_0 (the same with the default η_0 = 1).
θ_{−1} = θ_0, so at t = 0 there is neither extrapolation nor a Hessian correction. η_t is capped
at 1; `const_eta: true` holds η_t = η_0 (η = 1 turns every momentum method into normalised PG).
HARPG still draws its Hessian batch at t = 0 (the correction is then B̂·0 = 0): every iteration
costs the same samples, so budgets and resumes line up with iterations.

Where this module follows the paper rather than the reference code:
- IGT extrapolates with the current η_t, which makes the transport exact on quadratics; the
  reference moves to the line point before `step()` updates η, i.e. with η_{t−1}
  (NIGT_optimizer.py `update_model_to_line_point`, called first in `NIGT._train_once`).
- The Hessian estimate pairs each trajectory's score with its own surrogate gradient, with the
  sign of ∇²J; the reference pairs step-averaged quantities, and its second term ∇L·(∇L_logp·v)
  is formed from two loss gradients (L = −objective), so it enters with the sign opposite to the
  Hessian term (STORMHess_optimizer.py `step`, `hvp_full_p`).

The update rules are the pure functions `schedule`, `igt_point`, `harpg_point`, `direction` and
`ascent_step` below, combined by `npg_update` over a gradient oracle ĝ(point) and a
Hessian-vector oracle B̂(point)·v: the exactness tests drive that same function with exact
gradients of a quadratic.

Estimators (per whole trajectory τ_i, i = 1..N, averaged over trajectories):
- GPOMDP surrogate Φ_i(θ) = Σ_k log π_θ(a_k|s_k) Ψ_k with Ψ_k = Σ_{t≥k} γ^t r_t − γ^k b(s_k, k),
  so ĝ = (1/N) Σ_i ∇Φ_i is unbiased for the discounted objective J (the γ^k is kept: the
  reference's garage VPG drops it, which estimates a different vector). b is rllab/garage's linear
  feature baseline (features s, s², k/100, (k/100)², (k/100)³, 1; ridge regression onto the
  discounted reward-to-go); it is fit on each gradient batch **after** that batch's Ψ are formed
  and used for the next batches, so b never depends on the trajectories it corrects.
- B̂ v = (1/N) Σ_i [∇²Φ_i v + ∇Φ_i (∇log p(τ_i)·v)], with ∇log p(τ_i) = Σ_k ∇log π(a_k|s_k):
  each trajectory's score is paired with its own surrogate gradient (the reference code pairs
  step-averaged quantities, which biases the estimate). Computed without a
  per-trajectory loop: one forward-mode JVP gives u_k = ∇log π_k·v for every step, c_i = Σ_{k∈i} u_k,
  and one double backward of (∇ΣΦ_i)·v + Σ_k c_{i(k)} Ψ_k log π_k gives N·B̂v. Memory stays linear
  in the parameter count (no Hessian matrix is ever formed).

Step sizes of the unnormalised methods (pg, harpg): γ_0 multiplies ĝ, whose scale is not the
reference's. The reference steps along the gradient of garage's per-step mean loss,
(1/Σ_i T_i) Σ_{i,k} ∇log π_k (G_k − b_k) with G_k = Σ_{t≥k} γ^{t−k} r_t; ĝ is larger by about Σ_k γ^k
over an episode (not by the horizon). The presets convert the authors' tuned γ_0 by the ratio
‖ĝ‖/‖ĝ_ref‖ measured on the same batch at θ_0 (`benchmarks/pg_step_calibration.py`; the
numbers are in the presets' comments). The normalised methods' γ_0 is a step length and needs no
conversion.

Sampling and sample counting: an iteration collects whole trajectories (each from a reset, to
termination or the env's time limit, or `horizon` if set) until at least `batch_steps` env
steps; HARPG's Hessian batch is a second such batch of at least `hess_batch_steps` steps (the
reference's default 32, i.e. one or a few whole trajectories) at θ̂_t. **Every env step taken,
the Hessian batch's included, counts towards `total_steps`**, so runs with the same budget have
seen the same number of samples; (N)-HARPG does correspondingly fewer iterations. One env
(`n_envs: 1`) steps the trajectories one after another.

Defaults are the paper's (reference `run_PG.py`): 1000 steps per iteration, γ_0 0.1, η_0 1,
discount 0.99, linear feature baseline, softmax 32-32 tanh for discrete actions (preset), Gaussian
64-64 tanh with state-independent log-std 0 for continuous ones; raw observations and rewards.
Choices where the paper is silent: the suite's orthogonal initialisation (last layer gain 0.01)
instead of garage's Xavier; evaluation is the suite's deterministic one (mean action / argmax),
while the paper plots the stochastic training return (`rollout/ep_rew_mean` here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from ctrlrl.algos.base import Algorithm, Metrics
from ctrlrl.core.config import RunConfig, check_ranges
from ctrlrl.core.envs import VecEnv, is_continuing
from ctrlrl.core.errors import UserError
from ctrlrl.core.nets import FlatParams, make_policy

METHODS = ("pg", "npg-momentum", "npg-igt", "n-harpg", "harpg")
NORMALISED = {"pg": False, "npg-momentum": True, "npg-igt": True, "n-harpg": True, "harpg": False}

Oracle = Callable[[torch.Tensor], torch.Tensor]
HvpOracle = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---- the update rules (pure) -------------------------------------------------------------------
def schedule(method: str, t: int, gamma0: float, eta0: float,
             const_eta: bool = False) -> tuple[float, float]:
    """(γ_t, η_t) of iteration t = 0, 1, …; η is 1 for vanilla PG (no momentum)."""
    r = 2.0 / (t + 2)
    gamma = {"pg": gamma0 * r ** (2 / 3), "harpg": gamma0 * r ** 0.5}.get(method, gamma0 * r)
    if method == "pg":
        return gamma, 1.0
    power = {"npg-momentum": 2 / 3, "npg-igt": 4 / 5}.get(method, 1.0)
    eta = eta0 if const_eta else eta0 * r ** power
    return gamma, min(eta, 1.0)


def igt_point(theta: torch.Tensor, theta_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """θ̃ = θ + ((1−η)/η)(θ − θ_prev): where IGT samples its gradient."""
    return theta + ((1.0 - eta) / eta) * (theta - theta_prev)


def harpg_point(theta: torch.Tensor, theta_prev: torch.Tensor, q: float) -> torch.Tensor:
    """θ̂ = q θ + (1−q) θ_prev: HARPG's random point on the last step's segment."""
    return q * theta + (1.0 - q) * theta_prev


def direction(d_prev: torch.Tensor, g: torch.Tensor, eta: float,
              correction: torch.Tensor | None = None) -> torch.Tensor:
    """d = (1−η)(d_prev + correction) + η g (no correction: plain momentum / IGT)."""
    carried = d_prev if correction is None else d_prev + correction
    return (1.0 - eta) * carried + eta * g


def ascent_step(theta: torch.Tensor, d: torch.Tensor, gamma: float,
                normalised: bool) -> torch.Tensor:
    """θ + γ d/‖d‖ (normalised; a zero d stays put) or θ + γ d."""
    if normalised:
        norm = torch.linalg.vector_norm(d)
        return theta + gamma * d / norm if norm > 0 else theta.clone()
    return theta + gamma * d


@dataclass
class UpdateInfo:
    gamma: float
    eta: float
    g: torch.Tensor  # the fresh gradient estimate of this iteration
    d: torch.Tensor
    correction: torch.Tensor | None  # HARPG's B̂(θ̂)(θ_t − θ_{t−1}), or None


def npg_update(method: str, theta: torch.Tensor, theta_prev: torch.Tensor, d_prev: torch.Tensor,
               t: int, gamma0: float, eta0: float, grad: Oracle, hvp: HvpOracle | None = None,
               q: float = 0.5, const_eta: bool = False,
               first_direction: str = "gradient") -> tuple[torch.Tensor, UpdateInfo]:
    """One iteration of `method`: returns θ_{t+1} and what it used.

    `grad(point)` estimates ∇J(point); `hvp(point, v)` estimates ∇²J(point)·v (HARPG only; called
    at t = 0 too, with v = 0, so that every iteration draws the same batches). At t = 0 the
    direction is ĝ_0 (`first_direction="gradient"`) or η_0 ĝ_0 (`"scaled"`, d_{−1} = 0).
    """
    if method not in METHODS:
        raise UserError(f"method {method!r} is not known; use one of {METHODS}")
    gamma, eta = schedule(method, t, gamma0, eta0, const_eta)
    # the weight of the fresh estimate in d_t: all of it at t = 0 when d_0 = ĝ_0
    mix = 1.0 if t == 0 and first_direction == "gradient" else eta
    correction = None
    if method == "pg":
        g = d = grad(theta)
    elif method == "npg-momentum":
        g = grad(theta)
        d = direction(d_prev, g, mix)
    elif method == "npg-igt":
        g = grad(igt_point(theta, theta_prev, eta) if t > 0 else theta)
        d = direction(d_prev, g, mix)
    else:
        shift = theta - theta_prev
        if hvp is None:
            raise ValueError(f"{method} needs a Hessian-vector oracle")
        correction = hvp(harpg_point(theta, theta_prev, q), shift)
        g = grad(theta)
        d = direction(d_prev, g, mix, correction)
    return ascent_step(theta, d, gamma, NORMALISED[method]), UpdateInfo(gamma, eta, g, d,
                                                                         correction)


# ---- the estimators (batched over whole trajectories) ------------------------------------------
def discounted_tails(rewards: torch.Tensor, traj: torch.Tensor, t: torch.Tensor,
                     gamma: float) -> torch.Tensor:
    """Σ_{t'≥k} γ^{t'} r_{t'} within each step k's trajectory (float64); steps are stored
    trajectory after trajectory, `traj` the trajectory index and `t` the time in it."""
    disc = rewards.double() * torch.pow(torch.tensor(gamma, dtype=torch.float64), t.double())
    n = int(traj.max()) + 1 if len(traj) else 0
    totals = torch.zeros(n, dtype=torch.float64).index_add_(0, traj, disc)
    before = torch.cumsum(disc, 0) - disc  # Σ of the steps before k (all trajectories)
    starts = torch.zeros(n, dtype=torch.float64).index_add_(0, traj, torch.where(t == 0, before, 0))
    return totals[traj] - (before - starts[traj])


def surrogate_gradient(logp_fn: Oracle, theta: torch.Tensor, psi: torch.Tensor,
                       n_traj: int) -> torch.Tensor:
    """ĝ = (1/N) Σ_i ∇Φ_i(θ), Φ_i = Σ_{k∈τ_i} Ψ_k log π_θ(a_k|s_k); `logp_fn(θ)` gives every
    step's log π_θ(a_k|s_k)."""
    theta = theta.detach().requires_grad_(True)
    (g,) = torch.autograd.grad((psi * logp_fn(theta)).sum() / n_traj, theta)
    return g


def surrogate_hvp(logp_fn: Oracle, theta: torch.Tensor, psi: torch.Tensor, traj: torch.Tensor,
                  n_traj: int, v: torch.Tensor) -> torch.Tensor:
    """B̂v = (1/N) Σ_i [∇²Φ_i v + ∇Φ_i (∇log p(τ_i)·v)], formed per trajectory (see the module
    docstring): one JVP for the per-step directional scores, one double backward."""
    theta = theta.detach()
    with torch.no_grad():
        _, u = torch.func.jvp(logp_fn, (theta,), (v,))  # u_k = ∇log π_k · v
    c = torch.zeros(n_traj, dtype=u.dtype, device=u.device).index_add_(0, traj, u)  # ∇log p(τ_i) · v
    theta = theta.requires_grad_(True)
    logp = logp_fn(theta)
    (g,) = torch.autograd.grad((psi * logp).sum(), theta, create_graph=True)
    (out,) = torch.autograd.grad(g @ v + (psi * c[traj] * logp).sum(), theta)
    return out / n_traj


def linear_features(obs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """rllab/garage LinearFeatureBaseline features: s, s², k/100, (k/100)², (k/100)³, 1."""
    o = obs.double().clamp(-10, 10)
    al = (t.double() / 100.0)[:, None]
    return torch.cat([o, o * o, al, al * al, al ** 3, torch.ones_like(al)], 1)


def fit_linear_baseline(features: torch.Tensor, targets: torch.Tensor,
                        reg: float = 1e-5) -> torch.Tensor:
    """Ridge regression weights (the regulariser grows ×10 until the solve is finite)."""
    a, b = features.T @ features, features.T @ targets.double()
    eye = torch.eye(a.shape[0], dtype=a.dtype)
    for _ in range(5):
        w = torch.linalg.solve(a + reg * eye, b)
        if torch.isfinite(w).all():
            return w
        reg *= 10
    return torch.zeros_like(b)


# ---- the algorithms ----------------------------------------------------------------------------
@dataclass
class NPGConfig:
    batch_steps: int = 1000  # env steps per gradient batch (whole trajectories, ≥ this many)
    hess_batch_steps: int = 32  # (N)-HARPG's Hessian batch at θ̂ (whole trajectories, ≥ this many)
    gamma0: float = 0.1  # γ_0, initial step size (a step length for the normalised methods)
    eta0: float = 1.0  # η_0, initial momentum weight of the fresh estimate
    const_eta: bool = False  # η_t = η_0 for all t
    first_direction: str = "gradient"  # gradient: d_0 = ĝ_0 (reference) | scaled: d_0 = η_0 ĝ_0 (d_{−1} = 0)
    gamma: float = 0.99  # discount factor
    horizon: int = 0  # trajectory cap in steps; 0: the env's own time limit
    baseline: str = "linear"  # linear (rllab's linear feature baseline) | none
    baseline_reg: float = 1e-5  # ridge coefficient of the linear baseline's fit
    hidden_sizes: tuple[int, ...] = (64, 64)  # hidden layer widths of the policy
    activation: str = "tanh"  # hidden activation: tanh | relu | elu | leaky_relu
    ortho_init: bool = True  # orthogonal weight initialisation (last layer gain 0.01); off: PyTorch's default
    log_std_init: float = 0.0  # initial state-independent log-std of the Gaussian policy (Box actions)

    def __post_init__(self) -> None:
        check_ranges(self, positive=("batch_steps", "hess_batch_steps", "gamma0", "eta0"),
                     non_negative=("horizon", "baseline_reg"), fraction=("gamma",),
                     widths=("hidden_sizes",))
        if self.baseline not in ("linear", "none"):
            raise UserError(f"setting baseline={self.baseline!r}: use linear or none")
        if self.first_direction not in ("gradient", "scaled"):
            raise UserError(f"setting first_direction={self.first_direction!r}: use gradient or "
                            "scaled")


@dataclass
class Batch:
    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    traj: torch.Tensor  # trajectory index of each step
    t: torch.Tensor  # time index within its trajectory
    n_traj: int


class _LogProb(nn.Module):
    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.policy.log_prob_entropy(obs, actions)[0]


class PG(Algorithm):
    """Shared machinery of the five methods; `method` picks the update rule."""

    kind = "on-policy"  # whole trajectories of the current policy per update

    name = "pg"
    summary = "vanilla policy gradient: GPOMDP with a linear feature baseline"
    method = "pg"
    Config = NPGConfig

    vectorised = False  # whole trajectories, one after another

    @classmethod
    def incompatibility(cls, env: gym.Env, run: RunConfig, cfg: NPGConfig) -> str | None:
        if not cfg.horizon and is_continuing(run.env):
            return (f"{run.env} is a continuing task (its episodes never end); {cls.name} "
                    "samples whole trajectories: set a cap, e.g. --set horizon=1000")
        return super().incompatibility(env, run, cfg)

    @classmethod
    def unused_settings(cls, env: gym.Env, run: RunConfig, cfg: NPGConfig) -> dict[str, str]:
        unused = super().unused_settings(env, run, cfg)
        if cls.method == "pg":
            unused |= dict.fromkeys(("eta0", "const_eta", "first_direction"),
                                    "pg has no momentum (η = 1)")
        if cls.method not in ("harpg", "n-harpg"):
            unused["hess_batch_steps"] = f"only (n-)harpg take a Hessian batch, not {cls.name}"
        if cfg.baseline == "none":
            unused["baseline_reg"] = "it regularises the linear baseline, and baseline=none"
        return unused

    def build(self) -> None:
        cfg, run = self.cfg, self.run
        if cfg.horizon:  # the env truncates its own episodes at the cap
            self.env.close()
            self.env = VecEnv(run.env, 1, run.vec_mode, run.normalize_obs, run.normalize_reward,
                              cfg.gamma, run.clip_obs, {"max_episode_steps": cfg.horizon})
            self.obs = self.env.reset(run.seed)
        space = self.env.action_space
        self.discrete = not isinstance(space, gym.spaces.Box)
        self.policy = make_policy(space, self.obs_dim, cfg.hidden_sizes, cfg.activation,
                                  cfg.ortho_init, cfg.log_std_init).to(self.device)
        self.flat = FlatParams(self.policy)
        self._logp_module = _LogProb(self.policy)
        self._names = [f"policy.{n}" for n, _ in self.policy.named_parameters()]
        self._shapes = [p.shape for p in self.policy.parameters()]
        self._sizes = [p.numel() for p in self.policy.parameters()]
        theta = self.flat.param.detach()
        self.theta_prev = theta.clone()
        self.d = torch.zeros_like(theta)
        self.baseline_w = torch.zeros(2 * self.obs_dim + 4, dtype=torch.float64)

    def budget_note(self) -> str | None:
        if self.step >= self.run.total_steps:
            return None
        return (f"this run ends at the first iteration to reach total_steps={self.run.total_steps}, "
                f"possibly past it: {self.name} iterations sample whole trajectories")

    def state_modules(self):
        return {"policy": self.policy}

    def extra_state(self) -> dict[str, Any]:
        return {"theta_prev": self.theta_prev, "d": self.d, "baseline_w": self.baseline_w}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.theta_prev = state["theta_prev"].to(self.device)
        self.d = state["d"].to(self.device)
        self.baseline_w = state["baseline_w"]

    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy.mode(obs)

    def sample_action(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy.sample(obs)[0]

    # ---- sampling --------------------------------------------------------------------------
    def collect(self, point: torch.Tensor, min_steps: int) -> Batch:
        """Whole trajectories under π_point until at least `min_steps` steps (all counted)."""
        with torch.no_grad():
            self.flat.param.copy_(point)
        obs_l, act_l, rew_l, traj_l, t_l = [], [], [], [], []
        n, k, steps = 0, 0, 0
        while True:
            obs = torch.as_tensor(self.obs, device=self.device)
            with torch.no_grad():
                action = self.policy.sample(obs)[0].cpu().numpy()
            step = self.env.step(self.to_env_action(action))
            obs_l.append(self.obs[0])
            act_l.append(action[0])
            rew_l.append(step.reward[0])
            traj_l.append(n)
            t_l.append(k)
            self.obs = step.obs
            self.episodes.extend(step.episodes)
            self.true_returns.extend(step.true_returns)
            steps += 1
            k += 1
            if step.done[0]:
                n, k = n + 1, 0
                if steps >= min_steps:
                    break
        self.step += steps
        as_t = lambda x, dtype: torch.as_tensor(np.asarray(x), dtype=dtype, device=self.device)  # noqa: E731
        return Batch(as_t(obs_l, torch.float32),
                     as_t(act_l, torch.int64 if self.discrete else torch.float32),
                     as_t(rew_l, torch.float32), as_t(traj_l, torch.int64),
                     as_t(t_l, torch.int64), n)

    def logp_fn(self, batch: Batch) -> Oracle:
        """θ (flat) ↦ log π_θ(a_k|s_k) for every step of `batch`, functionally in θ."""
        def fn(theta: torch.Tensor) -> torch.Tensor:
            parts = torch.split(theta, self._sizes)
            params = {n: p.view(s) for n, p, s in zip(self._names, parts, self._shapes,
                                                      strict=True)}
            return torch.func.functional_call(self._logp_module, params,
                                              (batch.obs, batch.actions))
        return fn

    def weights(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(Ψ_k as float32, the discounted reward-to-go the baseline regresses onto)."""
        gamma = self.cfg.gamma
        tails = discounted_tails(batch.rewards.cpu(), batch.traj.cpu(), batch.t.cpu(), gamma)
        disc = torch.pow(torch.tensor(gamma, dtype=torch.float64), batch.t.cpu().double())
        psi = tails
        if self.cfg.baseline == "linear":
            psi = tails - disc * (linear_features(batch.obs.cpu(), batch.t.cpu()) @ self.baseline_w)
        return psi.float().to(self.device), tails / disc

    def fit_baseline(self, batch: Batch, returns: torch.Tensor) -> None:
        if self.cfg.baseline == "linear":
            self.baseline_w = fit_linear_baseline(
                linear_features(batch.obs.cpu(), batch.t.cpu()), returns, self.cfg.baseline_reg)

    # ---- one iteration ---------------------------------------------------------------------
    def train_iteration(self) -> None:
        self.metrics |= self.update()

    def update(self) -> Metrics:
        """One iteration of `method` (`npg_update`), its batches sampled where the rule asks
        (inside the oracles); returns the metrics."""
        cfg, t = self.cfg, self.n_updates
        theta = self.flat.param.detach().clone()
        stats: dict[str, Any] = {}

        def grad(point: torch.Tensor) -> torch.Tensor:
            batch = self.collect(point, cfg.batch_steps)
            psi, returns = self.weights(batch)
            g = surrogate_gradient(self.logp_fn(batch), point, psi, batch.n_traj)
            self.fit_baseline(batch, returns)  # after Ψ: used from the next batch on
            stats["n_traj"] = batch.n_traj
            return g

        def hvp(point: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            batch = self.collect(point, cfg.hess_batch_steps)
            psi, _ = self.weights(batch)
            stats["hess_traj"] = batch.n_traj
            return surrogate_hvp(self.logp_fn(batch), point, psi, batch.traj, batch.n_traj, v)

        q = float(self.np_rng.uniform()) if self.method in ("n-harpg", "harpg") else 0.5
        new, info = npg_update(self.method, theta, self.theta_prev, self.d, t, cfg.gamma0,
                               cfg.eta0, grad, hvp, q, cfg.const_eta, cfg.first_direction)
        with torch.no_grad():
            self.flat.param.copy_(new)
        self.theta_prev, self.d = theta, info.d
        self.n_updates += 1
        metrics = {"step_size": info.gamma, "momentum": info.eta,
                   "grad_norm": float(torch.linalg.vector_norm(info.g)),
                   "direction_norm": float(torch.linalg.vector_norm(info.d)),
                   "update_norm": float(torch.linalg.vector_norm(new - theta)),
                   **{k: float(v) for k, v in stats.items()}}
        if info.correction is not None:
            metrics["correction_norm"] = float(torch.linalg.vector_norm(info.correction))
        if hasattr(self.policy, "log_std"):
            metrics["std"] = float(self.policy.log_std.detach().exp().mean())
        return metrics


class NPGMomentum(PG):
    name = method = "npg-momentum"
    summary = "normalised policy gradient with momentum (Fatkhullin et al. 2023)"


class NPGIGT(PG):
    name = method = "npg-igt"
    summary = "normalised policy gradient with implicit gradient transport (Fatkhullin et al.)"


class NHARPG(PG):
    name = method = "n-harpg"
    summary = "normalised Hessian-aided recursive policy gradient (Fatkhullin et al. 2023)"


class HARPG(PG):
    name = method = "harpg"
    summary = "Hessian-aided recursive policy gradient (Fatkhullin et al. 2023)"

