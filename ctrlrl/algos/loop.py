"""LOOP — optimistic average-reward learning (He, Zhong, Yang, ICLR 2024) in two
practical instantiations, the UCRL2 baseline (Jaksch, Ortner, Auer, JMLR 2010) and uniform-random
play, on finite MDPs that expose their exact model (`ctrlrl.envs.average_reward`).

The paper is theory with no code: a hypothesis f = (Q_f, J_f) is kept while it fits the data, a
new one is the hypothesis of largest gain J_f in the confidence set
B_t = {f : Σ_i ℓ_f(f, ζ_i)² − inf_g Σ_i ℓ_f(g, ζ_i)² ≤ β}, with the discrepancy
ℓ_{f'}(f, ζ) = Q_f(s, a) + J_f − r − V_{f'}(s') ("local fit": the targets use f itself), and the
learner acts greedily w.r.t. Q_f. What ctrlrl runs instead, and why:

`loop`, `instantiation: tabular`, `confidence: joint` (the default; the paper's set):
- Confidence set. For a fixed V (the hypothesis' own values, min V = 0, H = sp V: local fit) the
  squared discrepancy of the transitions from (s, a) is minimised by the empirical target
  r̂(s, a) + (P̂V)(s, a) (the inf over g of the paper's set, the auxiliary class being all tables),
  and another hypothesis' excess loss is Σ_{sa} N(s, a)·Δ(s, a)² with Δ = its target − r̂ − P̂V.
  So B_t = {Σ_{sa} N·Δ² ≤ β}: one budget shared by all pairs — exact.
- β = c²·(1 + H)²/2 · log(t·N(1/t)/δ) (`joint_beta`): the paper's form sp²·log(covering/δ), with
  (1 + H)² the squared range of a target in [0, 1 + H], 1/2 Hoeffding's constant (the paper leaves
  its absolute constant open: c = `beta_scale` scales the radius √β), t steps in the union bound,
  and the covering number of the tabular class at scale ρ = 1/t (`tabular_log_covering`): grids
  of step ρ over the S·A targets in [0, 1 + H] and the S values in [0, H],
  log N(ρ) = S·A·log(1 + (1 + H)/ρ) + S·log(1 + H/ρ). Not as in the paper: sp(V*) is unknown, so H
  is the span of the current value iterate, and t (the step count) stands for the horizon T.
- Feasibility: a target must be some model's r + PV, i.e. at most 1 + max V, so Δ ≤ room =
  1 + max V − r̂ − P̂V (the cap is the model "reward 1, jump to the best state"); an unvisited
  pair costs nothing (N·Δ² = 0) and reaches its cap 1 + max V.
- Optimism: J_f = max over the set, by extended value iteration (`evi_joint`). For one policy π
  whose pairs stay below their caps the inner max is exact and closed-form (Cauchy–Schwarz):
  Δ = λ·μ_π/N on π's pairs, J_f = J_π(r̂, P̂) + √(β·Σ_s μ_π(s)²/N(s, π(s))), μ_π the long-run state
  frequencies; with caps, the KKT solution min(λ·w/N, room) (`allocate_budget`, exact). The max
  over policies of that convex function of μ_π has no closed form (enumerating policies is
  exponential in S): `evi_joint` ascends by alternating the two exact steps — allocate the budget
  for the previous greedy policy's frequencies, re-solve the extended MDP for its greedy policy —
  from the per-pair shape Δ ∝ 1/√N, until the greedy policy repeats (at most `max_plan_rounds`),
  and returns the round of largest gain. Within a round the value iteration runs with the KKT
  shape Δ = min(κ·(1 + sp u)·w/N, room) for a fixed κ (the per-pair backup's form, which
  converges where a budget re-split at every sweep can cycle), and κ is refitted (at most 50
  times) until the converged values spend the budget β(sp u) exactly.
  Exact: the returned hypothesis lies in the set (its bonus spends Σ N·Δ² = β at its values, or
  < β when every weighted pair is at its cap; the backup used it to the refit's relative accuracy
  10⁻⁶) and, once the policy repeats, its allocation is the best one for its own policy (tested
  against enumeration).
  Approximated: the max over policies (a local maximum — measured at the global one on 17 of 20
  random 5-state MDPs, within 0.012 on the rest; optimism J_f ≥ J* is checked, not proved),
  value iteration to accuracy 1/√t (UCRL2's) or `max_plan_iters` sweeps; J_f is the midpoint of
  the last increment's range, the policy greedy in the last Q.
`loop`, `instantiation: tabular`, `confidence: per_pair` (a UCB-style variant, not the paper's):
- The joint constraint relaxed to one per pair, |Δ(s, a)| ≤ √(β/N(s, a)) (a superset: still
  optimistic), with the Hoeffding radius of a target in [min V, 1 + max V]: √(β/N) =
  c·(1 + sp V)·√(log(2·S·A·(1+t)/δ) / (2N)), c = `beta_scale`, and no covering number. The inner
  max has the closed form min(r̂ + P̂V + width, 1 + max V) (`evi_value_aware`).
Both tabular sets:
- Low switching: re-plan when det Λ doubles for the tabular Gram matrix Λ = diag(1 + N(s, a)),
  i.e. when Σ_{sa} log(1 + N(s, a)) has grown by log 2 since the last plan — the linear rule of the
  paper read with one-hot features, at most S·A·log2(1 + T/(S·A)) + 1 plans (AM–GM).
`loop`, `instantiation: linear` (value-based; approximate):
- Ridge regression of the targets r_t + V(s_{t+1}) on φ(s_t, a_t) (the linear-MDP form
  Q(s, a) + J = φᵀw): Λ = λI + Σ φφᵀ, w(V) = Λ⁻¹(Σ φ_t r_t + M V) with M = Σ φ_t e_{s_{t+1}}ᵀ.
  The finite state space makes (Λ⁻¹, Σ φ r, M) sufficient statistics, so no transition is stored;
  Λ⁻¹ is kept by Sherman–Morrison updates and log det Λ by the matrix-determinant lemma.
- Optimism: the elliptical bonus width·‖φ‖_{Λ⁻¹} with the tabular width above, d in place of S·A
  in the log (with one-hot features and λ = 1 the two instantiations coincide up to the
  λ-shrinkage). The theory's width
  carries a further √d (self-normalised bound) and covering terms; `beta_scale` stands for them.
- Fixed point in J: relative value iteration on V ← max_a min(1 + max V, φᵀw(V) + bonus),
  normalised to min V = 0, J_f = midpoint of the increment, same stopping rule (the paper's
  argmax over B_t of J_f is replaced by this optimistic fixed point; not exact).
  `span_bound` > 0 truncates V to span ≤ H (the paper assumes sp(V*) ≤ H known); 0: no truncation.
- Switch when det Λ doubles (log det Λ grew by log 2 since the last plan), the paper's rule.
Features: `env.unwrapped.features()` (ctrlrl/LinearMDP-v0 has genuine d-dim ones; the tabular envs
give one-hot (s, a), d = S·A).

Also not as in the paper: sp(V*) is not assumed known (the widths use the span of the current
iterate; `span_bound` optionally imposes H); the auxiliary class G and its inf_g term need no
search here (for a fixed V the empirical target, resp. the ridge fit, is the minimiser); the
model-based MLE-LOOP box (likelihood confidence set) is not implemented — the tabular instance uses
the squared-discrepancy set above; δ is a setting (0.05, UCRL2's default too), not tied to T.
`confidence` selects the tabular set; the linear instantiation always uses its elliptical bonus.

`ucrl2`: Jaksch et al. as published: L1 confidence ball of radius √(14·S·log(2·A·t_k/δ)/N) around
P̂, reward radius √(3.5·log(2·S·A·t_k/δ)/N), extended value iteration with the L1 inner max (mass
moved to the best state, taken from the worst), accuracy 1/√t_k, and its episode rule: a new
episode (policy) when the count of the pair being played within the episode reaches its count at
the episode's start. So LOOP (tabular) and UCRL2 differ where the papers do: LOOP's set bounds the
fit of the target r + V(s') summed over all pairs, one budget (∝ sp V, no √S per pair), UCRL2's
bounds each pair's model in L1 (width ∝ √S, reward separately); LOOP switches on the determinant,
UCRL2 on one pair's count. Both use the same δ (`delta`, 0.05) by default.

`random-policy`: uniform actions; the reference point "LOOP beats uniform-random play".

Every run logs `train/regret` = Σ_{t ≤ T} (J* − r_t) with the realised rewards r_t (J* from
relative value iteration on the env's exact model; so the regret of even the optimal policy
fluctuates around a bounded bias, by O(√T) noise where rewards or transitions are random),
`train/switches` (number of plans, the first one included), `train/optimistic_gain` (J_f of the
current hypothesis), `train/policy_gain` (exact gain of the current policy on the true model),
`train/optimal_gain` (J*) and `train/optimism_fraction` (share of plans with J_f ≥ J* − 1/√t).

Practical notes: one env (n_envs 1), no observation or reward normalisation; `block_steps` env
steps per training iteration (the policy may change inside a block: the switching rule is checked
every step, but the plans' time index t — in the widths' log term, the accuracy 1/√t and UCRL2's
t_k — is the step count at the start of the block, so t is underestimated by < `block_steps`
inside a block; this matters only in the first blocks). Evaluation (`eval_every` > 0,
`ctrlrl eval`) plays the greedy policy for `eval_horizon` steps per "episode" and reports the
total reward.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from ctrlrl.algos.base import Algorithm, Metrics
from ctrlrl.core.config import RunConfig, check_choices, check_ranges
from ctrlrl.core.envs import is_continuing
from ctrlrl.core.errors import UserError
from ctrlrl.core.evaluation import Evaluation

INSTANTIATIONS = ("tabular", "linear")
CONFIDENCE_SETS = ("joint", "per_pair")


# ---- exact solvers -------------------------------------------------------------------------------
def relative_value_iteration(P: np.ndarray, R: np.ndarray, tol: float = 1e-10,
                             max_iter: int = 200_000, tau: float = 0.5
                             ) -> tuple[float, np.ndarray, np.ndarray]:
    """(J*, bias h with h[0] = 0, greedy policy) of the MDP (P[S, A, S'], R[S, A]).

    Runs on the aperiodic transform P_τ = τP + (1 − τ)I, R_τ = τR (same optimal policies, gain
    τJ, bias h), so the iteration converges for periodic MDPs too; stops when the span of the
    increment is below `tol`. Needs a weakly communicating MDP (J* state-independent).
    """
    h = np.zeros(P.shape[0])
    for _ in range(max_iter):
        q = R + P @ h
        new = tau * q.max(1) + (1.0 - tau) * h
        diff = new - h
        h = new - new[0]
        if diff.max() - diff.min() < tol * tau:
            break
    else:
        raise RuntimeError("relative value iteration did not converge: is the MDP multichain?")
    q = R + P @ h
    return float((diff.max() + diff.min()) / (2.0 * tau)), h, q.argmax(1)


def limiting_distribution(P_pi: np.ndarray) -> np.ndarray:
    """Cesàro limit of P_pi^n (row s: the long-run state frequencies from s), by the aperiodic
    transform and repeated squaring."""
    M = 0.5 * (P_pi + np.eye(P_pi.shape[0]))
    for _ in range(50):  # M^(2^50): converged for any chain whose mixing is not astronomically slow
        M = M @ M
        M /= M.sum(1, keepdims=True)  # rounding errors would double with every squaring
    return M


def policy_gain(P: np.ndarray, R: np.ndarray, policy: np.ndarray, start: int = 0) -> float:
    """Exact long-run average reward of a deterministic (or, with policy[S, A], stochastic) policy
    started in `start`: the Cesàro limit, by solving for the stationary distribution(s)."""
    S = P.shape[0]
    if policy.ndim == 1:
        P_pi, r_pi = P[np.arange(S), policy], R[np.arange(S), policy]
    else:
        P_pi, r_pi = np.einsum("sa,sat->st", policy, P), (policy * R).sum(1)
    return float(limiting_distribution(P_pi)[start] @ r_pi)


def _greedy_gain(diff: np.ndarray) -> float:
    return float(0.5 * (diff.max() + diff.min()))


def _relative_step(q: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One relative-value-iteration step from Q-values q (S, A): (the increment max_a q − u, the new
    values shifted to min 0)."""
    new = q.max(1)
    return new - u, new - new.min()


def evi_value_aware(r_hat: np.ndarray, P_hat: np.ndarray, n: np.ndarray, log_term: float,
                    scale: float, tol: float, max_iter: int, u0: np.ndarray | None = None
                    ) -> tuple[float, np.ndarray, np.ndarray]:
    """Extended value iteration over LOOP's tabular confidence set (module docstring):
    Q = min(r̂ + P̂u + scale·(1 + sp u)·√(log_term / (2N)), 1 + max u); unvisited pairs 1 + max u.
    Returns (J_f, u, greedy policy)."""
    visited = n > 0
    inv = np.where(visited, np.sqrt(log_term / (2.0 * np.maximum(n, 1.0))), 0.0) * scale
    u = np.zeros(P_hat.shape[0]) if u0 is None else u0.copy()
    for _ in range(max_iter):
        top = u.max()
        q = np.where(visited, np.minimum(r_hat + P_hat @ u + (1.0 + top - u.min()) * inv, 1.0 + top),
                     1.0 + top)
        diff, u = _relative_step(q, u)
        if diff.max() - diff.min() < tol:
            break
    return _greedy_gain(diff), u, q.argmax(1)


# ---- the joint least-squares confidence set (LOOP's default) ---------------------------------
def tabular_log_covering(n_states: int, n_actions: int, span: float, rho: float) -> float:
    """log N(ρ) of the tabular class: the targets (r + PV)(s, a) ∈ [0, 1 + H] of S·A pairs and the
    values V ∈ [0, H]^S (H = sp V), each coordinate covered in sup norm by a grid of step ρ."""
    return (n_states * n_actions * math.log(1.0 + (1.0 + span) / rho)
            + n_states * math.log(1.0 + span / rho))


def joint_beta(span: float, *, n_states: int, n_actions: int, t: int, delta: float,
               scale: float) -> float:
    """β = scale²·(1 + H)²/2 · log(t·N(1/t)/δ): the squared range of a target, the Hoeffding
    constant 1/2, and the union over t steps and a 1/t-cover of the class (module docstring)."""
    log_cover = tabular_log_covering(n_states, n_actions, span, 1.0 / t)
    return scale ** 2 * (1.0 + span) ** 2 / 2.0 * (math.log(t / delta) + log_cover)


def allocate_budget(weight: np.ndarray, n: np.ndarray, room: np.ndarray, beta: float
                    ) -> tuple[np.ndarray, float]:
    """argmax_Δ Σ w·Δ subject to Σ N·Δ² ≤ β and 0 ≤ Δ ≤ room (w ≥ 0; N > 0 where w > 0).

    KKT: Δ = min(λ·w/N, room) with the one λ that spends the budget, Σ N·Δ² = β, unless every
    weighted pair reaches its room first (then Δ = room there, λ = ∞). Exact: the pairs are sorted
    by the λ at which they reach their room, and λ is solved in closed form on that piece.
    Returns (Δ, λ).
    """
    out = np.zeros(np.shape(room))
    active = weight > 0
    w, N, c = weight[active], n[active], room[active]
    if w.size == 0:
        return out, math.inf
    knee = c * N / w  # λ at which a pair reaches its room
    order = np.argsort(knee, kind="stable")
    w, N, c, knee = w[order], N[order], c[order], knee[order]
    capped_cost = np.concatenate(([0.0], np.cumsum(N * c ** 2)))  # the first k pairs at their room
    free = np.concatenate((np.cumsum((w ** 2 / N)[::-1])[::-1], [0.0]))  # Σ_{i ≥ k} w²/N
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.where(free > 0, np.sqrt(np.maximum(beta - capped_cost, 0.0) / free), np.inf)
    k = int(np.argmax(lam <= np.concatenate((knee, [np.inf]))))  # the piece λ lies on
    delta = np.minimum(lam[k] * w / N, c)
    picked = np.empty_like(delta)
    picked[order] = delta
    out[active] = picked
    return out, float(lam[k])


@dataclass
class JointPlan:
    """The optimistic hypothesis found in the joint set: its gain J_f, values u (min 0), greedy
    policy, the bonus Δ(s, a) over the empirical target r̂ + P̂u (0 where no budget is spent),
    the budget β = beta_of_span(sp u), the pairs whose target is at the feasibility cap
    1 + max u, and the gain after each ascent round."""
    gain: float
    u: np.ndarray
    policy: np.ndarray
    bonus: np.ndarray
    beta: float
    capped: np.ndarray
    gains: list[float]


def evi_joint(r_hat: np.ndarray, P_hat: np.ndarray, n: np.ndarray,
              beta_of_span: Callable[[float], float], tol: float, max_iter: int,
              u0: np.ndarray | None = None, max_rounds: int = 20, max_fits: int = 50
              ) -> JointPlan:
    """max J_f over LOOP's joint set {Σ_{sa} N·Δ² ≤ β}: alternating ascent (module docstring).

    Within a round the allocation weights w are fixed, and the bonus has the KKT form
    Δ = min(κ·(1 + sp u)·w/N, room) (`allocate_budget`; room = 1 + max u − (r̂ + P̂u), the
    feasibility cap, and √β grows like 1 + sp u). For a fixed κ, extended value iteration on the
    optimistic target min(r̂ + P̂u + Δ, 1 + max u) (an unvisited pair: 1 + max u at no cost) has
    the per-pair backup's form and converges like it (re-splitting the budget at every sweep
    instead can cycle); κ is then refitted so the converged values spend the budget exactly,
    Σ N·Δ² = beta_of_span(sp u), until it stops moving (at most `max_fits` times).
    Weights: in the first round √N on every visited pair (Δ ∝ 1/√N, the per-pair shape under one
    shared budget); in each later one the long-run state frequencies of the previous round's
    greedy policy in its optimistic model (the gain's gradient in Δ). Stops when the greedy policy
    repeats. Every round's hypothesis lies in the set; the one of largest gain is returned (the
    caps make the gain non-smooth in Δ, so a round can lose gain).
    """
    visited = n > 0
    S = P_hat.shape[0]
    states = np.arange(S)
    n1 = np.maximum(n, 1.0)
    u = np.zeros(S) if u0 is None else u0.copy()
    weight = np.where(visited, np.sqrt(n), 0.0)
    policy, gains, best = None, [], None
    for _ in range(max_rounds):
        kappa = None
        for _ in range(max_fits):
            base = r_hat + P_hat @ u
            span = float(u.max() - u.min())
            room = np.where(visited, np.maximum(1.0 + u.max() - base, 0.0), 0.0)
            beta = beta_of_span(span)
            bonus, lam = allocate_budget(weight, n, room, beta)
            fitted = lam / (1.0 + span)
            if kappa is not None and abs(fitted - kappa) <= 1e-6 * kappa:
                break
            kappa = fitted
            # κ = ∞ (every weighted pair fits at its cap): widths large enough to stay capped
            width = np.where(weight > 0, np.minimum(kappa, 1e12) * weight / n1, 0.0)
            for _ in range(max_iter):
                top = u.max()
                q = np.where(visited, np.minimum(r_hat + P_hat @ u + (1.0 + top - u.min()) * width,
                                                 1.0 + top), 1.0 + top)
                diff, u = _relative_step(q, u)
                if diff.max() - diff.min() < tol:
                    break
        gains.append(_greedy_gain(diff))
        greedy = q.argmax(1)
        capped = ~visited | (bonus >= room)
        if best is None or gains[-1] > best.gain:
            best = JointPlan(gains[-1], u, greedy, bonus, beta, capped, gains)
        if policy is not None and (greedy == policy).all():
            break
        policy = greedy
        # the greedy policy's optimistic chain: P̂ where the target is below its cap, else the
        # jump to the best state; its long-run frequencies from a uniform start weigh the budget
        jump = capped[states, policy]
        P_pi = P_hat[states, policy].copy()
        P_pi[jump] = 0.0
        P_pi[jump, u.argmax()] = 1.0
        weight = np.zeros(n.shape)
        weight[states, policy] = limiting_distribution(P_pi).mean(0)
        weight[~visited] = 0.0
    return best


def evi_l1(r_tilde: np.ndarray, P_hat: np.ndarray, eps: np.ndarray, tol: float, max_iter: int,
           u0: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """UCRL2's extended value iteration: for each (s, a), the model in the L1 ball ‖p − P̂‖₁ ≤ ε
    that maximises p·u puts min(1, P̂(s*) + ε/2) on the best state s* and removes the excess from
    the worst states. Returns (J_f, u, greedy policy)."""
    S = P_hat.shape[0]
    u = np.zeros(S) if u0 is None else u0.copy()
    half = (eps / 2.0)[..., None]
    for _ in range(max_iter):
        order = np.argsort(-u, kind="stable")
        p = P_hat[..., order]  # (S, A, S) states from best to worst
        best = np.minimum(1.0, p[..., :1] + half)
        excess = best[..., 0] - p[..., 0]  # mass added to the best state
        rest = p[..., 1:]
        # remove `excess` from the worst states first: what lies behind each state (worst side)
        behind = np.cumsum(rest[..., ::-1], -1)[..., ::-1] - rest
        take = np.clip(excess[..., None] - behind, 0.0, rest)
        q = r_tilde + best[..., 0] * u[order[0]] + ((rest - take) * u[order[1:]]).sum(-1)
        diff, u = _relative_step(q, u)
        if diff.max() - diff.min() < tol:
            break
    return _greedy_gain(diff), u, q.argmax(1)


# ---- configuration ---------------------------------------------------------------------------
@dataclass
class RandomPolicyConfig:
    block_steps: int = 250  # env steps per training iteration
    eval_horizon: int = 1000  # steps per evaluation "episode" (the tasks never end)

    def __post_init__(self) -> None:
        check_ranges(self, positive=("block_steps", "eval_horizon"))


@dataclass
class UCRL2Config(RandomPolicyConfig):
    delta: float = 0.05  # δ, confidence level of the sets' log term
    max_plan_iters: int = 5000  # value-iteration sweeps per plan at most

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges(self, positive=("delta", "max_plan_iters"))


@dataclass
class LOOPConfig(UCRL2Config):
    instantiation: str = "tabular"  # tabular (model-based, EVI) | linear (ridge + elliptical bonus)
    confidence: str = "joint"  # tabular set: joint (Σ N·Δ² ≤ β, the paper's) | per_pair (Hoeffding)
    beta_scale: float = 1.0  # c: scales the radius √β of the confidence set (the theory's absolute constant)
    max_plan_rounds: int = 20  # ascent rounds of the joint set's planner at most
    ridge: float = 1.0  # λ of the linear instantiation's Λ = λI + Σφφᵀ
    span_bound: float = 0.0  # H: truncate V to span ≤ H (linear); 0: no truncation

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choices(self, instantiation=INSTANTIATIONS, confidence=CONFIDENCE_SETS)
        check_ranges(self, positive=("beta_scale", "ridge", "max_plan_rounds"),
                     non_negative=("span_bound",))


class ArrayState(nn.Module):
    """The learner's statistics as module buffers (checkpointed and compared like weights).

    Each buffer shares memory with a numpy array that the hot loop updates in place; loading a
    state dict copies into the buffers, so the numpy views see the loaded values.
    """

    def __init__(self, arrays: dict[str, np.ndarray]):
        super().__init__()
        self.arrays = arrays
        for name, value in arrays.items():
            self.register_buffer(name, torch.from_numpy(value))


# ---- the algorithms --------------------------------------------------------------------------
class AverageRewardAlgorithm(Algorithm):
    """Shared machinery: exact model and J*, counts, regret, the step loop, checkpoint state."""

    kind = "average-reward"

    SCALARS = ("regret", "switches", "optimistic_gain", "policy_gain", "optimism_hits", "plan_mark")

    action_spaces = (gym.spaces.Discrete,)
    vectorised = False
    evaluates_continuing = True  # over a fixed horizon (`eval_horizon`)

    @classmethod
    def incompatibility(cls, env: gym.Env, run: RunConfig, cfg: Any) -> str | None:
        """A continuing finite MDP that exposes its exact model, observed as one-hot states, and
        one stream of raw rewards."""
        if not callable(getattr(env.unwrapped, "model", None)) or not is_continuing(run.env):
            return (f"{cls.name} needs a continuing finite MDP that exposes its exact model "
                    f"(env.unwrapped.model() → P[S, A, S'], R[S, A]), and {run.env} is not one: "
                    "use ctrlrl/RiverSwim-v0, ctrlrl/RandomMDP-v0, ctrlrl/LinearMDP-v0 or "
                    "ctrlrl/Inventory-v0")
        problem = super().incompatibility(env, run, cfg)
        if problem:
            return problem
        n_states = env.unwrapped.model()[0].shape[0]
        if env.observation_space.shape != (n_states,):
            return (f"{cls.name} reads one-hot states of {run.env}'s {n_states}-state model, and "
                    f"it observes {env.observation_space}")
        if run.normalize_obs or run.normalize_reward:
            return (f"{cls.name} learns from raw rewards and one-hot states; drop "
                    "normalize_obs/normalize_reward")
        return None

    @classmethod
    def unused_settings(cls, env: gym.Env, run: RunConfig, cfg: Any) -> dict[str, str]:
        unused = super().unused_settings(env, run, cfg)
        if run.device.startswith("cuda"):
            unused["device"] = f"{cls.name} computes with numpy on the CPU"
        if run.precision != "auto":
            unused["precision"] = f"{cls.name} has no neural networks; it computes in float64"
        return unused

    def build(self) -> None:
        probe = gym.make(self.run.env)
        env = probe.unwrapped
        P, R = env.model()
        features = env.features() if hasattr(env, "features") else None
        probe.close()
        self.P_true, self.R_true = P, R
        self.n_states, self.n_actions = P.shape[0], P.shape[1]
        self.optimal_gain, _, self.optimal_policy = relative_value_iteration(P, R)
        self.features = features
        self.policy = np.zeros(self.n_states, np.int64)
        self.arrays: dict[str, np.ndarray] = {"policy": self.policy}
        self.scalars = dict.fromkeys(self.SCALARS, 0.0)
        self.setup()
        self.holder = ArrayState(self.arrays)

    def setup(self) -> None:
        """Allocate the algorithm's arrays (add them to `self.arrays`)."""

    def array(self, name: str, shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
        out = np.zeros(shape, dtype)
        self.arrays[name] = out
        return out

    # ---- the step loop ------------------------------------------------------------------------
    def train_iteration(self) -> None:
        n = max(1, min(self.cfg.block_steps, self.run.total_steps - self.step))
        s = int(self.obs[0].argmax())
        regret, j_star = self.scalars["regret"], self.optimal_gain
        action = np.zeros(1, np.int64)
        for _ in range(n):
            if self.should_plan():
                self._plan()
            a = self.act(s)
            action[0] = a
            step = self.env.step(action)
            obs, r = step.obs[0], float(step.raw_reward[0])
            if step.terminated[0] or step.truncated[0]:
                raise UserError(f"{self.run.env} ended an episode; {self.name} needs a continuing "
                                "task (no termination, no time limit)")
            s2 = int(obs.argmax())
            self.observe(s, a, r, s2)
            regret += j_star - r
            s = s2
        self.obs = self.env.obs
        self.step += n
        self.scalars["regret"] = regret
        self.metrics |= self.progress()

    def progress(self) -> Metrics:
        """The run so far, as the logs show it: the regret, the plans, the gains (module docstring)."""
        sc = self.scalars
        metrics: Metrics = {"regret": sc["regret"], "switches": sc["switches"],
                            "policy_gain": sc["policy_gain"], "optimal_gain": self.optimal_gain}
        if sc["switches"] > 0:
            metrics["optimistic_gain"] = sc["optimistic_gain"]
            metrics["optimism_fraction"] = sc["optimism_hits"] / sc["switches"]
        return metrics

    def _plan(self) -> None:
        gain = self.plan()
        sc = self.scalars
        sc["switches"] += 1
        sc["optimistic_gain"] = gain
        sc["optimism_hits"] += gain >= self.optimal_gain - 1.0 / math.sqrt(self.step + 1)
        sc["policy_gain"] = policy_gain(self.P_true, self.R_true, self.policy)
        self.n_updates += 1

    def should_plan(self) -> bool:
        raise NotImplementedError

    def plan(self) -> float:
        """Recompute `self.policy` in place; return the optimistic gain J_f."""
        raise NotImplementedError

    def act(self, s: int) -> int:
        return int(self.policy[s])

    def observe(self, s: int, a: int, r: float, s2: int) -> None:
        raise NotImplementedError

    # ---- acting and checkpoints ----------------------------------------------------------------
    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.policy)[obs.argmax(-1).cpu()]

    def sample_action(self, obs: torch.Tensor) -> torch.Tensor:
        return self.deterministic_action(obs)

    def state_modules(self) -> dict[str, nn.Module]:
        return {"statistics": self.holder}

    def extra_state(self) -> dict[str, Any]:
        return {"scalars": dict(self.scalars)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.scalars = {k: float(state["scalars"][k]) for k in self.SCALARS}

    def evaluate_episodes(self, episodes: int | None = None,
                          seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Total reward of `eval_horizon` greedy steps from the start state, per "episode"."""
        n = self.run.eval_episodes if episodes is None else episodes
        env = self.eval_env(n)
        seed = self.evaluation_seed(seed)
        obs, total = env.reset(seed), np.zeros(n)
        for _ in range(self.cfg.eval_horizon):
            step = env.step(self.predict(obs))
            total += step.raw_reward
            obs = step.obs
        return total, np.full(n, np.nan)

    def headline(self, evaluation: Evaluation | None) -> dict[str, float]:
        """The regret so far and the current policy's exact gain beside the optimal gain J*: what
        says whether the learner learns (the task has no episode return). From the latest training
        metrics, which checkpoints keep."""
        metrics = self.metrics
        if "regret" not in metrics:
            return {}
        return {"regret": float(metrics["regret"]), "gain": float(metrics["policy_gain"]),
                "optimal gain": float(metrics["optimal_gain"])}


class TabularCounts(AverageRewardAlgorithm):
    """Visit counts, transition counts and reward sums: the empirical model P̂, r̂."""

    def setup(self) -> None:
        S, A = self.n_states, self.n_actions
        self.N = self.array("N", (S, A))
        self.N_sas = self.array("N_sas", (S, A, S))
        self.R_sum = self.array("R_sum", (S, A))

    def observe(self, s: int, a: int, r: float, s2: int) -> None:
        self.N[s, a] += 1.0
        self.N_sas[s, a, s2] += 1.0
        self.R_sum[s, a] += r

    def empirical(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = np.maximum(self.N, 1.0)
        return self.R_sum / n, self.N_sas / n[..., None], self.N

    def tolerance(self) -> float:
        return 1.0 / math.sqrt(self.step + 1)


class LOOP(TabularCounts):
    name = "loop"
    summary = "LOOP: optimistic average-reward learning, tabular or linear (He, Zhong, Yang 2024)"
    Config = LOOPConfig

    @classmethod
    def unused_settings(cls, env: gym.Env, run: RunConfig, cfg: LOOPConfig) -> dict[str, str]:
        unused = super().unused_settings(env, run, cfg)
        if cfg.instantiation == "tabular":
            unused |= dict.fromkeys(("ridge", "span_bound"), "it belongs to instantiation=linear")
            if cfg.confidence == "per_pair":
                unused["max_plan_rounds"] = "it bounds the joint set's planner (confidence=joint)"
        else:
            unused |= dict.fromkeys(("confidence", "max_plan_rounds"),
                                    "it belongs to the tabular instantiation")
        return unused

    def setup(self) -> None:
        super().setup()
        cfg = self.cfg
        self.u = self.array("u", (self.n_states,))  # warm start of the value iteration
        if cfg.instantiation == "linear":
            phi = self.features
            if phi is None:
                S, A = self.n_states, self.n_actions
                phi = np.eye(S * A).reshape(S, A, S * A)
            self.phi = np.ascontiguousarray(phi, np.float64)
            d = self.phi.shape[-1]
            self.Lambda_inv = self.array("Lambda_inv", (d, d))
            self.Lambda_inv[:] = np.eye(d) / cfg.ridge
            self.M = self.array("M", (d, self.n_states))
            self.b = self.array("b", (d,))
            self.scalars["logdet"] = d * math.log(cfg.ridge)
        else:
            self.scalars["logdet"] = 0.0  # Σ log(1 + N(s, a)): log det diag(1 + N)
        self.scalars["plan_mark"] = -math.inf  # log det at the last plan: plan at once

    SCALARS = (*AverageRewardAlgorithm.SCALARS, "logdet")

    def should_plan(self) -> bool:
        return self.scalars["logdet"] >= self.scalars["plan_mark"] + math.log(2.0)

    def observe(self, s: int, a: int, r: float, s2: int) -> None:
        if self.cfg.instantiation == "tabular":
            self.scalars["logdet"] += math.log1p(1.0 / (1.0 + self.N[s, a]))
            super().observe(s, a, r, s2)
            return
        self.N[s, a] += 1.0  # counts only for inspection; the linear learner uses (Λ⁻¹, b, M)
        x = self.phi[s, a]
        Lx = self.Lambda_inv @ x
        quad = float(x @ Lx)
        self.scalars["logdet"] += math.log1p(quad)
        self.Lambda_inv -= np.outer(Lx, Lx) / (1.0 + quad)
        self.b += r * x
        self.M[:, s2] += x

    def log_term(self, pairs: int) -> float:
        return math.log(2.0 * pairs * (self.step + 1) / self.cfg.delta)

    def plan(self) -> float:
        cfg = self.cfg
        self.scalars["plan_mark"] = self.scalars["logdet"]
        if cfg.instantiation == "tabular" and cfg.confidence == "joint":
            r_hat, P_hat, n = self.empirical()
            beta = functools.partial(joint_beta, n_states=self.n_states, n_actions=self.n_actions,
                                     t=self.step + 1, delta=cfg.delta, scale=cfg.beta_scale)
            found = evi_joint(r_hat, P_hat, n, beta, self.tolerance(), cfg.max_plan_iters, self.u,
                              cfg.max_plan_rounds)
            gain, u, policy = found.gain, found.u, found.policy
        elif cfg.instantiation == "tabular":
            r_hat, P_hat, n = self.empirical()
            gain, u, policy = evi_value_aware(
                r_hat, P_hat, n, self.log_term(self.n_states * self.n_actions), cfg.beta_scale,
                self.tolerance(), cfg.max_plan_iters, self.u)
        else:
            gain, u, policy = self.plan_linear()
        self.u[:] = u
        self.policy[:] = policy
        return gain

    def plan_linear(self) -> tuple[float, np.ndarray, np.ndarray]:
        """Optimistic relative value iteration on the ridge fit (module docstring)."""
        cfg = self.cfg
        S, A, d = self.phi.shape
        phi = self.phi.reshape(S * A, d)
        C = phi @ self.Lambda_inv  # (SA, d)
        base = (C @ self.b).reshape(S, A)
        trans = (C @ self.M).reshape(S, A, S)
        norm = np.sqrt(np.maximum((C * phi).sum(1), 0.0)).reshape(S, A)
        width = cfg.beta_scale * math.sqrt(self.log_term(d) / 2.0) * norm
        u, tol, H = self.u.copy(), self.tolerance(), cfg.span_bound
        for _ in range(cfg.max_plan_iters):
            top = u.max()
            q = np.minimum(base + trans @ u + (1.0 + top - u.min()) * width, 1.0 + top)
            new = q.max(1)
            diff = new - u
            u = new - new.min()
            if H > 0:
                u = np.minimum(u, H)
            if diff.max() - diff.min() < tol:
                break
        return _greedy_gain(diff), u, q.argmax(1)


class UCRL2(TabularCounts):
    name = "ucrl2"
    summary = "UCRL2: extended value iteration over L1 confidence sets (Jaksch et al. 2010)"
    Config = UCRL2Config

    def setup(self) -> None:
        super().setup()
        self.N_start = self.array("N_start", (self.n_states, self.n_actions))  # N_k(s, a)
        self.u = self.array("u", (self.n_states,))
        self.scalars["plan_mark"] = 1.0  # 1: the episode ended (plan before the next step)

    def should_plan(self) -> bool:
        return self.scalars["plan_mark"] > 0

    def observe(self, s: int, a: int, r: float, s2: int) -> None:
        super().observe(s, a, r, s2)
        # the episode ends when ν_k(s, a) = N(s, a) − N_k(s, a) reaches max(1, N_k(s, a))
        if self.N[s, a] - self.N_start[s, a] >= max(1.0, self.N_start[s, a]):
            self.scalars["plan_mark"] = 1.0

    def plan(self) -> float:
        cfg = self.cfg
        self.scalars["plan_mark"] = 0.0
        self.N_start[:] = self.N
        r_hat, P_hat, n = self.empirical()
        S, A = self.n_states, self.n_actions
        t = self.step + 1
        n1 = np.maximum(n, 1.0)
        r_tilde = np.minimum(1.0, r_hat + np.sqrt(3.5 * math.log(2.0 * S * A * t / cfg.delta) / n1))
        eps = np.sqrt(14.0 * S * math.log(2.0 * A * t / cfg.delta) / n1)
        gain, u, policy = evi_l1(r_tilde, P_hat, eps, self.tolerance(), cfg.max_plan_iters, self.u)
        self.u[:] = u
        self.policy[:] = policy
        return gain


class RandomPolicy(AverageRewardAlgorithm):
    """Uniform-random play: the regret floor every learner must beat."""

    name = "random-policy"
    summary = "uniform-random play: the regret floor every learner must beat"
    Config = RandomPolicyConfig

    def setup(self) -> None:
        self.scalars["policy_gain"] = policy_gain(
            self.P_true, self.R_true, np.full((self.n_states, self.n_actions), 1.0 / self.n_actions))

    def should_plan(self) -> bool:
        return False

    def act(self, s: int) -> int:
        return int(self.np_rng.integers(self.n_actions))

    def observe(self, s: int, a: int, r: float, s2: int) -> None:
        pass

    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        """Uniform actions (the policy has no deterministic mode); drawn with torch's RNG."""
        return torch.randint(self.n_actions, obs.shape[:-1])
