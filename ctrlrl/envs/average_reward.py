"""Finite average-reward MDPs with exact models: LOOP's and UCRL2's testbeds.

Every env here is a continuing task (never terminates, never truncates: register it without a
time limit) over `n_states` states and `n_actions` actions, observed as a one-hot float32 vector
of the state (ctrlrl's VecEnv takes flat Box observations; `obs.argmax()` is the state). Each env
exposes its exact model, so the optimal gain J* is computed exactly (relative value iteration in
`ctrlrl.algos.loop`):
- `model()` → (P[S, A, S'], R[S, A]): transition probabilities and expected rewards;
- `features()` → φ[S, A, d]: the linear-MDP features (one-hot (s, a) for tabular envs, d = S·A).

An env is a table of outcomes: (s, a) leads to `next_state[s, a, k]` with reward
`reward[s, a, k]` with probability `prob[s, a, k]`; a step draws k with one uniform number, so a
step is cheap and the RNG state is the env's own (checkpoints restore it exactly).

- `ctrlrl/RiverSwim-v0` (`n_states=6`): action 0 swims left (deterministic, reward 0.005 when
  taken in the leftmost state), action 1 swims right: left/stay/right with [0, 0.4, 0.6] at the
  left end, [0.05, 0.6, 0.35] in the middle, [0.4, 0.6, 0] at the right end, reward 1 when taken
  in the rightmost state. Rewards are deterministic given (s, a); the start state is 0.
- `ctrlrl/RandomMDP-v0` (`n_states=10, n_actions=3, seed=0, alpha=0.3`): P[s, a] ~ Dirichlet(α)
  over all states (every transition has positive probability: the MDP is ergodic, so J* is
  state-independent), mean rewards R[s, a] ~ U(0, 1); the reward of a step is its mean (no reward
  noise). `seed` fixes the instance, the reset seed only the trajectory. Start state 0.
- `ctrlrl/LinearMDP-v0` (`n_states=20, n_actions=4, dim=5, seed=0, alpha=0.3`): the simplex
  construction of a linear MDP: φ(s, a) ~ Dirichlet(α) ∈ Δ_d, μ_i ~ Dirichlet(α) ∈ Δ_S,
  P(·|s, a) = Σ_i φ_i(s, a) μ_i, r(s, a) = φ(s, a)·θ with θ ~ U(0, 1)^d; `features()` gives φ.
- `ctrlrl/Inventory-v0`: single-item average-reward inventory control with the lot-sizing
  dynamics (`LotSizingEnv.decision` of ctrlrl/envs/lot_sizing.py on a 1-item, 1-machine instance: a setup
  costs `setup_cost` and loses `setup_loss` units when the machine switches from idle to the item,
  production `capacity` per period, inventory capped at `max_inv`), then demand
  d ~ Binomial(`demand_n`, `demand_p`), lost sales and holding costs as in lot-sizing. State =
  (inventory 0..max_inv, setup 0/1) → index setup·(max_inv+1) + inventory; action 0 idles,
  1 produces. The reward is the cost mapped affinely into [0, 1]: r = 1 − cost / cost_max with
  cost_max = setup_cost + lost_sales·demand_n + holding·max_inv (an affine map keeps the optimal
  policy; regret in cost units is cost_max × the regret logged). Start: empty, idle.
  Defaults (holding 0.1, lost sales 1, setup 3, loss 1, capacity 6, demand Binomial(8, 0.5),
  max_inv 12) are ours, chosen so the optimal policy is a non-trivial (s, S) rule: the lot-sizing
  instances' costs (holding 0.01 vs setup 15–30) make "always produce" optimal for one item.
"""

from __future__ import annotations

from math import comb
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from ctrlrl.core.errors import UserError


class FiniteMDPEnv(gym.Env):
    """A continuing finite MDP given by outcome tables (see the module docstring)."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}
    continuing: ClassVar[bool] = True  # never ends: ctrlrl.core.envs.is_continuing

    def __init__(self, next_state: np.ndarray, prob: np.ndarray, reward: np.ndarray,
                 start_state: int = 0, phi: np.ndarray | None = None):
        n_states, n_actions, _ = next_state.shape
        if not np.allclose(prob.sum(-1), 1.0) or (prob < 0).any():
            raise ValueError("outcome probabilities must be distributions")
        self.n_states, self.n_actions = n_states, n_actions
        self._next = np.asarray(next_state, np.int64)
        self._prob = np.asarray(prob, np.float64)
        self._reward = np.asarray(reward, np.float64)
        self._cum = np.cumsum(self._prob, -1)
        self._cum[..., -1] = 1.0 + 1e-12  # rounding never lets u fall past the last outcome
        self._phi = phi
        self.start_state = int(start_state)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (n_states,), np.float32)
        self.action_space = gym.spaces.Discrete(n_actions)
        self._eye = np.eye(n_states, dtype=np.float32)
        self.state = self.start_state

    def model(self) -> tuple[np.ndarray, np.ndarray]:
        """(P[S, A, S'], R[S, A]): exact transition probabilities and expected rewards."""
        S, A, _ = self._next.shape
        P = np.zeros((S, A, S))
        s_idx, a_idx = np.meshgrid(np.arange(S), np.arange(A), indexing="ij")
        np.add.at(P, (s_idx[..., None], a_idx[..., None], self._next), self._prob)
        return P, (self._prob * self._reward).sum(-1)

    def features(self) -> np.ndarray:
        """φ[S, A, d]; one-hot (s, a) (d = S·A) unless the env is a linear MDP."""
        if self._phi is not None:
            return self._phi.copy()
        S, A = self.n_states, self.n_actions
        return np.eye(S * A).reshape(S, A, S * A)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.state = self.start_state
        return self._eye[self.state].copy(), {}

    def step(self, action):
        s, a = self.state, int(action)
        k = int(np.searchsorted(self._cum[s, a], self.np_random.random(), side="right"))
        self.state = int(self._next[s, a, k])
        return self._eye[self.state].copy(), float(self._reward[s, a, k]), False, False, {}


def _dense(P: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outcome tables of a model with deterministic rewards: one outcome per next state."""
    S, A, _ = P.shape
    return (np.broadcast_to(np.arange(S), (S, A, S)).copy(), P,
            np.broadcast_to(R[..., None], (S, A, S)).copy())


class RiverSwim(FiniteMDPEnv):
    def __init__(self, n_states: int = 6):
        if n_states < 2:
            raise UserError(f"RiverSwim n_states={n_states}: need at least 2 states")
        S = n_states
        P, R = np.zeros((S, 2, S)), np.zeros((S, 2))
        for s in range(S):
            P[s, 0, max(s - 1, 0)] = 1.0
            left, stay, right = (0.0, 0.4, 0.6) if s == 0 else (0.4, 0.6, 0.0) if s == S - 1 \
                else (0.05, 0.6, 0.35)
            P[s, 1, max(s - 1, 0)] += left
            P[s, 1, s] += stay
            P[s, 1, min(s + 1, S - 1)] += right
        R[0, 0], R[S - 1, 1] = 0.005, 1.0
        super().__init__(*_dense(P, R))


class RandomMDP(FiniteMDPEnv):
    def __init__(self, n_states: int = 10, n_actions: int = 3, seed: int = 0, alpha: float = 0.3):
        if n_states < 1 or n_actions < 1 or alpha <= 0:
            raise UserError(f"RandomMDP n_states={n_states}, n_actions={n_actions}, "
                            f"alpha={alpha}: need positive sizes and alpha > 0")
        rng = np.random.default_rng(seed)
        P = rng.dirichlet(np.full(n_states, alpha), (n_states, n_actions))
        P = np.maximum(P, 1e-12)  # Dirichlet draws can underflow to 0: keep the MDP ergodic
        P /= P.sum(-1, keepdims=True)
        R = rng.uniform(0.0, 1.0, (n_states, n_actions))
        super().__init__(*_dense(P, R))


class LinearMDP(FiniteMDPEnv):
    def __init__(self, n_states: int = 20, n_actions: int = 4, dim: int = 5, seed: int = 0,
                 alpha: float = 0.3):
        if min(n_states, n_actions, dim) < 1 or alpha <= 0:
            raise UserError(f"LinearMDP n_states={n_states}, n_actions={n_actions}, dim={dim}, "
                            f"alpha={alpha}: need positive sizes and alpha > 0")
        rng = np.random.default_rng(seed)
        phi = rng.dirichlet(np.full(dim, alpha), (n_states, n_actions))
        mu = np.maximum(rng.dirichlet(np.full(n_states, alpha), dim), 1e-12)
        mu /= mu.sum(-1, keepdims=True)
        theta = rng.uniform(0.0, 1.0, dim)
        P, R = phi @ mu, phi @ theta
        P /= P.sum(-1, keepdims=True)
        super().__init__(*_dense(P, R), phi=phi)


class Inventory(FiniteMDPEnv):
    def __init__(self, max_inv: int = 12, capacity: float = 6.0, holding: float = 0.1,
                 lost_sales: float = 1.0, setup_cost: float = 3.0, setup_loss: float = 1.0,
                 demand_n: int = 8, demand_p: float = 0.5):
        from ctrlrl.envs.lot_sizing import Instance, LotSizingEnv

        if max_inv < 1 or demand_n < 0 or not 0 <= demand_p <= 1 or capacity < 0:
            raise UserError("Inventory: need max_inv >= 1, capacity >= 0, demand_n >= 0 and "
                            "demand_p in [0, 1]")
        inst = Instance(name="inventory-1x1", seed=0, holding=np.array([holding]),
                        lost_sales=np.array([lost_sales]), setup_cost=np.array([[setup_cost]]),
                        setup_loss=np.array([[setup_loss]]), capacity=np.array([[capacity]]),
                        max_inv=max_inv)
        lot = LotSizingEnv(inst, inventory_cap="before_demand")  # its decision step: s^x capped
        n_inv = max_inv + 1
        S = 2 * n_inv
        inventory, setup = np.arange(S) % n_inv, np.arange(S) // n_inv
        obs = np.stack([inventory, setup], -1).astype(np.float32)  # lot-sizing observations
        obs = np.repeat(obs[:, None], 2, 1)  # (S, A, 2)
        actions = np.broadcast_to(np.arange(2), (S, 2))[..., None]  # (S, A, 1)
        post, cost_setup = lot.decision(obs, actions)
        stock = post[..., 0].astype(np.float64)  # (S, A) post-decision inventory
        demand = np.arange(demand_n + 1)
        pmf = np.array([comb(demand_n, d) * demand_p**d * (1 - demand_p) ** (demand_n - d)
                        for d in demand])
        sold = np.minimum(stock[..., None], demand)  # (S, A, K): the lot-sizing demand step
        left = stock[..., None] - sold
        cost = cost_setup[..., None] + lost_sales * (demand - sold) + holding * left
        self.cost_max = setup_cost + lost_sales * demand_n + holding * max_inv
        next_state = post[..., 1:2].astype(np.int64) * n_inv + left.astype(np.int64)
        super().__init__(next_state, np.broadcast_to(pmf, cost.shape).copy(),
                         1.0 - cost / self.cost_max)


def register() -> None:
    for name, cls in (("RiverSwim", RiverSwim), ("RandomMDP", RandomMDP),
                      ("LinearMDP", LinearMDP), ("Inventory", Inventory)):
        gym.register(f"ctrlrl/{name}-v0", entry_point=cls)  # continuing: no time limit
