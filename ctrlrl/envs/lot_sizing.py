"""Multi-item, multi-machine lot-sizing with stochastic demand: PDPPO's benchmark
(Felizardo et al., IJCNN 2025).

Each period every machine m either idles (a_m = 0) or produces item a_m. A transition splits into
a deterministic decision step, `post_decision(obs, action)` (setups, setup losses, production: the
post-decision state s^x), and a stochastic step (demand d_i, lost sales, holding). Observation:
inventories I_i (n values in [0, max_inv]) then machine setups σ_m (M values in {0..n}, 0 = idle),
as one float32 vector; demand is not observed. Reward = −(setup + lost-sales + holding cost); the
three parts are in `info` with the post-decision observation and the decision's deterministic
reward r^x = −setup cost (`info["post_decision_reward"]`; pure and batched:
`post_decision_reward(obs, action)`).

Instances are JSON files in `instances/` made by `generate_instance(n_items, n_machines, seed)`;
`ctrlrl/LotSizing-<n>x<M>-v0` registers each, `ctrlrl/LotSizing-v0` takes `instance=` (a name or a
path to a JSON file), `demand=` ("binomial:20:0.4" default, "poisson:8", "zero"), `inventory_cap=`
and `horizon_end=` (below); `ctrlrl/LotSizingCappedTruncated-<n>x<M>-v0` is each instance with the
earlier dynamics (`inventory_cap="before_demand"`, `horizon_end="truncated"`).

As the authors' environment (`envs/simplePlant.py` of the reference code, `_post_decision` then
`_satisfy_demand`), inventory is floored and capped only after demand
(`inventory_cap="after_demand"`): the post-decision inventory I + production − setup loss is
neither floored nor capped, demand is served from all of it, unmet demand (including a deficit a
setup loss left) costs lost sales, and what remains is capped at `max_inv` before holding is
charged. `inventory_cap="before_demand"` is the earlier form: s^x floored at 0 and capped at
`max_inv` (excess production discarded at once, so with zero demand s' = s^x exactly).

The horizon's end is a termination (`horizon_end="terminal"`), as the reference's
`done = current_step == T` that resets the discounted return, and the paper's finite sums
R_t = Σ_{k=t}^{T} γ^(k−t) r_k; `horizon_end="truncated"` reports it as a time-limit truncation
(learners bootstrap through it), the earlier form.

A choice the paper leaves open: reset draws each inventory uniformly from 0..`initial_inventory_max`
and each machine's setup uniformly from the items it can make, or idle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from ctrlrl.core.errors import UserError

INSTANCE_DIR = Path(__file__).parent / "instances"
REFERENCE_SIZES = ((15, 5), (20, 10), (25, 10), (25, 15), (30, 10), (30, 15))
INVENTORY_CAPS = ("after_demand", "before_demand")
HORIZON_ENDS = ("terminal", "truncated")


@dataclass(frozen=True)
class Instance:
    name: str
    seed: int
    holding: np.ndarray  # (n,) cost per unit held at the end of a period
    lost_sales: np.ndarray  # (n,) cost per unit of unmet demand
    setup_cost: np.ndarray  # (M, n) cost of switching machine m to item i
    setup_loss: np.ndarray  # (M, n) units of item i lost when machine m switches to it
    capacity: np.ndarray  # (M, n) units of item i machine m makes per period (0: cannot)
    initial_inventory_max: int = 50
    max_inv: int = 100
    horizon: int = 100

    @property
    def n_items(self) -> int:
        return len(self.holding)

    @property
    def n_machines(self) -> int:
        return len(self.capacity)

    def to_json(self) -> dict[str, Any]:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Instance:
        arrays = {"holding", "lost_sales", "setup_cost", "setup_loss", "capacity"}
        return cls(**{k: np.asarray(v, dtype=float) if k in arrays else v for k, v in data.items()})


def generate_instance(n_items: int, n_machines: int, seed: int) -> Instance:
    """A random instance in the reference generator's ranges: holding 0.01, lost sales 0.1–0.3,
    setup cost 15–30, setup loss 1–3, capacity 0–40 with ~40% zeros (every item makable)."""
    rng = np.random.default_rng(seed)
    capacity = rng.integers(1, 41, (n_machines, n_items)) * (rng.random((n_machines, n_items)) >= 0.4)
    for i in np.flatnonzero(capacity.sum(0) == 0):  # no item without a machine that makes it
        capacity[rng.integers(n_machines), i] = rng.integers(1, 41)
    return Instance(
        name=f"{n_items}x{n_machines}", seed=seed,
        holding=np.full(n_items, 0.01),
        lost_sales=np.round(rng.uniform(0.1, 0.3, n_items), 4),
        setup_cost=rng.integers(15, 31, (n_machines, n_items)).astype(float),
        setup_loss=rng.integers(1, 4, (n_machines, n_items)).astype(float),
        capacity=capacity.astype(float))


def load_instance(instance: str | Instance) -> Instance:
    if isinstance(instance, Instance):
        return instance
    path = Path(instance) if str(instance).endswith(".json") else INSTANCE_DIR / f"{instance}.json"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in INSTANCE_DIR.glob("*.json")))
        raise UserError(f"lot-sizing instance {instance!r} not found; use one of {names} or a "
                        "path to a JSON file written by ctrlrl.envs.lot_sizing.generate_instance")
    return Instance.from_json(json.loads(path.read_text()))


def _demand_sampler(spec: str):
    kind, *args = spec.split(":")
    try:
        if kind == "binomial":
            n, p = int(args[0]), float(args[1])
            return lambda rng, size: rng.binomial(n, p, size)
        if kind == "poisson":
            lam = float(args[0])
            return lambda rng, size: rng.poisson(lam, size)
        if kind == "zero" and not args:
            return lambda rng, size: np.zeros(size, dtype=np.int64)
    except (IndexError, ValueError):
        pass
    raise UserError(f"demand={spec!r}: use binomial:N:P, poisson:LAMBDA or zero")


class LotSizingEnv(gym.Env):
    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, instance: str | Instance = "20x10", demand: str = "binomial:20:0.4",
                 inventory_cap: str = "after_demand", horizon_end: str = "terminal"):
        for key, value, allowed in (("inventory_cap", inventory_cap, INVENTORY_CAPS),
                                    ("horizon_end", horizon_end, HORIZON_ENDS)):
            if value not in allowed:
                raise UserError(f"{key}={value!r} is not known; use one of {', '.join(allowed)}")
        self.inventory_cap, self.horizon_end = inventory_cap, horizon_end
        self.instance = inst = load_instance(instance)
        self.demand_spec = demand
        self._demand = _demand_sampler(demand)
        n, m = inst.n_items, inst.n_machines
        self.observation_space = gym.spaces.Box(
            0.0, np.concatenate([np.full(n, inst.max_inv), np.full(m, n)]).astype(np.float32),
            dtype=np.float32)
        self.action_space = gym.spaces.MultiDiscrete(np.full(m, n + 1))
        # (M, n+1) tables with a zero "idle" column: indexing by the action needs no branches
        pad = np.zeros((m, 1))
        self._capacity = np.hstack([pad, inst.capacity])
        self._setup_cost = np.hstack([pad, inst.setup_cost])
        self._setup_loss = np.hstack([pad, inst.setup_loss])
        self._rows = np.arange(m)
        self._item_of_action = np.eye(n + 1)[:, 1:]  # one-hot item per action value (idle: zeros)
        self.obs = np.zeros(n + m, dtype=np.float32)
        self.t = 0

    def decision(self, obs: np.ndarray, action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(post-decision observations, setup costs) for a batch (or one) of obs and actions."""
        n = self.instance.n_items
        obs, action = np.asarray(obs), np.asarray(action, dtype=np.int64)
        setups = obs[..., n:].astype(np.int64)
        switch = (action != 0) & (action != setups)  # (..., M)
        capacity = self._capacity[self._rows, action]  # (..., M): what each machine makes
        loss = np.where(switch, self._setup_loss[self._rows, action], 0.0)
        setup_cost = np.where(switch, self._setup_cost[self._rows, action], 0.0).sum(-1)
        items = self._item_of_action[action]  # (..., M, n): which item each machine works on
        delta = ((capacity - loss)[..., None] * items).sum(-2)
        inventory = obs[..., :n] + delta
        if self.inventory_cap == "before_demand":
            inventory = np.clip(inventory, 0.0, self.instance.max_inv)
        post = np.concatenate([inventory, action.astype(np.float64)], -1).astype(np.float32)
        return post, setup_cost

    def post_decision(self, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        """The post-decision state s^x = f(s, a): pure, batched over leading dimensions."""
        return self.decision(obs, action)[0]

    def post_decision_reward(self, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        """The decision's deterministic reward r^x = −setup cost: pure, batched."""
        return -self.decision(obs, action)[1]

    def mean_demand(self) -> float:
        kind, *args = self.demand_spec.split(":")
        return {"binomial": lambda: int(args[0]) * float(args[1]),
                "poisson": lambda: float(args[0]), "zero": lambda: 0.0}[kind]()

    def heuristic_action(self, obs: np.ndarray, reorder_cover: float = 0.5,
                         stocked_cover: float = 12.0) -> np.ndarray:
        """An (s, S)-style base-stock policy, the sanity baseline beside RL.

        A setup is the expensive part (15–30 against 0.1–0.3 per lost unit and 0.01 per unit held),
        so a machine keeps making its current item — output above `max_inv` is simply discarded —
        and switches only when its item is stocked (≥ S = `stocked_cover` periods of mean demand)
        while an item it can make has run low (< s = `reorder_cover` periods) and no other machine
        makes it; then it takes the lowest such item. An idle machine takes the lowest item it can make.
        """
        inst = self.instance
        n = inst.n_items
        obs = np.asarray(obs)
        if obs.ndim > 1:
            return np.stack([self.heuristic_action(o, reorder_cover, stocked_cover) for o in obs])
        mu = self.mean_demand()
        inventory, action = obs[:n], obs[n:].astype(np.int64).copy()
        taken = np.zeros(n + 1, dtype=bool)
        taken[action] = True
        for m in range(inst.n_machines):  # greedy, machines in index order
            item = action[m]
            makable = (inst.capacity[m] > 0) & ~taken[1:]
            if item and inst.capacity[m, item - 1] > 0:
                makable &= inventory < reorder_cover * mu
                if inventory[item - 1] < stocked_cover * mu or not makable.any():
                    continue
            elif not makable.any():
                action[m] = 0
                continue
            taken[item] = False
            action[m] = 1 + np.flatnonzero(makable)[np.argmin(inventory[makable])]
            taken[action[m]] = True
        return action

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        inst, rng = self.instance, self.np_random
        inventory = rng.integers(0, inst.initial_inventory_max + 1, inst.n_items)
        setups = np.array([rng.choice(np.concatenate([[0], np.flatnonzero(row) + 1]))
                           for row in inst.capacity])
        self.obs = np.concatenate([inventory, setups]).astype(np.float32)
        self.t = 0
        return self.obs.copy(), {}

    def step(self, action):
        inst = self.instance
        post, setup_cost = self.decision(self.obs, action)
        demand = self._demand(self.np_random, inst.n_items)
        left = post[: inst.n_items].astype(np.float64) - demand
        # unmet demand (and a setup loss's deficit below zero) is lost; the rest is capped
        lost_cost = float(inst.lost_sales @ np.maximum(-left, 0.0))
        inventory = np.clip(left, 0.0, inst.max_inv)
        holding_cost = float(inst.holding @ inventory)
        self.obs = np.concatenate([inventory, post[inst.n_items:]]).astype(np.float32)
        self.t += 1
        info = {"post_decision_obs": post, "post_decision_reward": -float(setup_cost),
                "cost_setup": float(setup_cost), "cost_lost_sales": lost_cost,
                "cost_holding": holding_cost}
        reward = -(float(setup_cost) + lost_cost + holding_cost)
        end = self.t >= inst.horizon
        terminal = self.horizon_end == "terminal"
        return self.obs.copy(), reward, end and terminal, end and not terminal, info


def register() -> None:
    gym.register("ctrlrl/LotSizing-v0", entry_point=LotSizingEnv)
    for n, m in REFERENCE_SIZES:
        gym.register(f"ctrlrl/LotSizing-{n}x{m}-v0", entry_point=LotSizingEnv,
                     kwargs={"instance": f"{n}x{m}"})
        # the earlier dynamics: s^x capped before demand, the horizon a time-limit truncation
        gym.register(f"ctrlrl/LotSizingCappedTruncated-{n}x{m}-v0", entry_point=LotSizingEnv,
                     kwargs={"instance": f"{n}x{m}", "inventory_cap": "before_demand",
                             "horizon_end": "truncated"})
