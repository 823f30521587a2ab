"""Vectorised gymnasium environments with the plumbing every algorithm needs.

`VecEnv` steps `n_envs` copies of one env, in this process (`SerialEnvs`) or one subprocess each
(gymnasium's `AsyncVectorEnv`), and owns:
- same-step autoreset: gymnasium ≥ 1.1 defaults to resetting a finished sub-env on the *next* step,
  whose transition is then not real; we use `AutoresetMode.SAME_STEP`, so every step is a real
  transition and the true last observation of a finished episode is kept as `next_obs`;
- observation / reward normalisation (running statistics that are part of the checkpoint);
- episode statistics on the raw (unnormalised) reward;
- exact snapshots of every sub-env (simulator state, RNG, wrapper counters) so a resumed run
  continues bit for bit.
"""

from __future__ import annotations

import atexit
import multiprocessing
import signal
import weakref
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import load_env_creator
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, VectorEnv

from ctrlrl.core.checkpoint import misfit
from ctrlrl.core.errors import UserError

_SIMPLE = (np.ndarray, np.generic, int, float, bool, str, type(None))


def check_env_id(env_id: str) -> None:
    """Fail early, with the fix, on an env id gymnasium does not know or cannot make here."""
    import ctrlrl.envs  # noqa: F401  (registers ctrlrl's own environments)

    try:
        gym.spec(env_id)
    except gym.error.Error as exc:
        raise UserError(
            f"unknown env id {env_id!r} ({exc}); run `ctrlrl list` for registered ids"
        ) from None
    reason = env_unavailable(env_id)
    if reason is not None:
        raise UserError(f"{env_id} cannot be made here: {reason}")


def env_unavailable(env_id: str) -> str | None:
    """Why a registered env id cannot be made in this installation (a missing dependency, or
    gymnasium's placeholder for the retired mujoco-py `-v2/-v3` ids), with the fix; None if it can.

    Imports the env's module but builds no env, so listing every id stays cheap.
    """
    spec = gym.spec(env_id)
    if callable(spec.entry_point):
        if getattr(spec.entry_point, "__name__", "") != "_raise_mujoco_py_error":
            return None
        newest = _newest_version(spec)
        use = f"; use {newest}" if newest else ""
        return f"its entry point needs mujoco-py, which gymnasium no longer supports{use}"
    try:
        load_env_creator(spec.entry_point)
    except (ImportError, gym.error.DependencyNotInstalled) as exc:
        return f"a dependency is missing ({str(exc).splitlines()[0]})"
    return None


def _newest_version(spec: gym.envs.registration.EnvSpec) -> str | None:
    """The highest-versioned id of the same env family that gymnasium can make natively."""
    family = [s for s in gym.registry.values()
              if (s.namespace, s.name) == (spec.namespace, spec.name) and s.version is not None
              and not callable(s.entry_point)]
    return max(family, key=lambda s: s.version).id if family else None


class SnapshotWrapper(gym.Wrapper):
    """Outermost wrapper of each sub-env: captures and restores its exact state.

    Captured: the env's RNG, the simple attributes (arrays, numbers) of the env and of every wrapper
    (time-limit counters, classic-control `state`), and for MuJoCo envs the full integration state.
    Restoring through `VectorEnv.call` passes the list of all sub-env states; each picks its own.
    A restored state comes from a file, so it may set only what a snapshot of this env could hold
    (`ctrlrl_misfit`): never a new attribute, a method or another type.
    """

    def __init__(self, env: gym.Env, index: int):
        super().__init__(env)
        self.index = index

    def _chain(self) -> list[Any]:
        chain, env = [], self.env
        while isinstance(env, gym.Wrapper):
            chain.append(env)
            env = env.env
        return [*chain, env]

    def ctrlrl_snapshot(self) -> dict[str, Any]:
        layers = [
            {k: np.array(v) if isinstance(v, np.ndarray) else v
             for k, v in vars(obj).items() if _is_state_value(k, v)}
            for obj in self._chain()
        ]
        state: dict[str, Any] = {"layers": layers, "rng": self.unwrapped.np_random.bit_generator.state}
        mj = _mujoco_state(self.unwrapped)
        if mj is not None:
            state["mujoco"] = mj
        return state

    def ctrlrl_misfit(self, states: list[dict[str, Any]]) -> str | None:
        """Why `states[self.index]` cannot be restored here, or None when it can."""
        state, live = states[self.index], self.ctrlrl_snapshot()
        where = f"env {self.index}"
        if not isinstance(state, dict) or set(state) != set(live):
            return f"{where}: expected the keys {sorted(live)}"
        if not isinstance(state["layers"], list) or len(state["layers"]) != len(live["layers"]):
            return f"{where}: expected {len(live['layers'])} wrapper layers"
        for obj, layer, live_layer in zip(self._chain(), state["layers"], live["layers"], strict=True):
            name = f"{where} {type(obj).__name__}"
            if not isinstance(layer, dict):
                return f"{name}: expected a mapping of attributes"
            for key, value in layer.items():
                if key not in live_layer:
                    # an attribute holding what a snapshot cannot store (e.g. a tuple) may be
                    # reset to None; anything else names no state of this env
                    if not (value is None and key in vars(obj)
                            and not _is_state_value(key, vars(obj)[key])):
                        return f"{name}: unknown attribute {key!r}"
                elif not _is_state_value(key, value):
                    return f"{name}.{key}: expected a number or a numeric array"
                else:
                    problem = misfit(value, live_layer[key], f"{name}.{key}")
                    if problem:
                        return problem
        for key in set(live) - {"layers"}:  # the RNG, MuJoCo's integration state
            problem = misfit(state[key], live[key], f"{where} {key}")
            if problem:
                return problem
        try:  # NumPy checks an RNG state itself: on a scratch generator of this env's kind
            type(self.unwrapped.np_random.bit_generator)().state = state["rng"]
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            return f"{where} rng: {exc}"
        return None

    def ctrlrl_restore(self, states: list[dict[str, Any]]) -> None:
        problem = self.ctrlrl_misfit(states)
        if problem:  # VecEnv.load_state_dict checks first; this guards any other caller
            raise UserError(f"env state does not fit {self.spec.id if self.spec else 'this env'}: "
                            f"{problem}")
        state = states[self.index]
        for obj, layer in zip(self._chain(), state["layers"], strict=True):
            for key, value in layer.items():
                current = getattr(obj, key, None)
                setattr(obj, key, value.copy() if isinstance(value, np.ndarray) else value)
                if isinstance(current, np.generic) and not isinstance(value, np.generic):
                    setattr(obj, key, type(current)(value))
        self.unwrapped.np_random.bit_generator.state = state["rng"]
        if "mujoco" in state:
            _set_mujoco_state(self.unwrapped, state["mujoco"])


def _is_state_value(name: str, value: Any) -> bool:
    """Numbers and numeric arrays: what a snapshot can store in a weights-only checkpoint.

    Envs whose state lives elsewhere (lists, Box2D worlds) are restored only in these parts,
    so their resume is not bit-exact; MuJoCo and classic-control envs are.
    """
    if name in ("render_mode", "metadata", "spec") or not isinstance(value, _SIMPLE):
        return False
    return not isinstance(value, np.ndarray) or value.dtype.kind in "biufc"


def _mujoco_state(env: gym.Env) -> np.ndarray | None:
    if not (hasattr(env, "model") and hasattr(env, "data")):
        return None
    import mujoco

    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    out = np.empty(mujoco.mj_stateSize(env.model, spec))
    mujoco.mj_getState(env.model, env.data, out, spec)
    return out


def _set_mujoco_state(env: gym.Env, state: np.ndarray) -> None:
    import mujoco

    mujoco.mj_setState(env.model, env.data, np.asarray(state, dtype=np.float64),
                       mujoco.mjtState.mjSTATE_INTEGRATION)
    mujoco.mj_forward(env.model, env.data)


def _make_one(env_id: str, index: int, env_kwargs: dict[str, Any]) -> gym.Env:
    import ctrlrl.envs  # noqa: F401  (subprocesses need the registrations too)

    if multiprocessing.parent_process() is not None:
        # an async worker: a terminal's Ctrl-C reaches the whole process group, as does the
        # SIGTERM of Slurm, systemd or `kill -- -PGID`; the main process handles both (finish the
        # iteration, checkpoint), so workers must not die first. They leave when it closes them,
        # or when it is gone (their pipe closes).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    return SnapshotWrapper(gym.make(env_id, **env_kwargs), index)


class RunningMeanStd:
    """Streaming mean/variance (parallel algorithm of Chan et al.), float64."""

    def __init__(self, shape: tuple[int, ...] = ()):
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = 1e-4

    def update(self, x: np.ndarray) -> None:
        batch_mean, batch_var, n = x.mean(0), x.var(0), x.shape[0]
        delta, total = batch_mean - self.mean, self.count + n
        self.mean = self.mean + delta * n / total
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.var, self.count = m2 / total, total

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.var = np.array(state["mean"]), np.array(state["var"])
        self.count = float(state["count"])


@dataclass
class Step:
    """One vector step. `next_obs` is the true successor (final obs where an episode ended)."""

    obs: np.ndarray  # observation to act on next (reset obs where an episode ended)
    next_obs: np.ndarray
    reward: np.ndarray  # normalised when reward normalisation is on
    raw_reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    episodes: list[tuple[float, int]] = field(default_factory=list)  # (return, length) finished
    # the same episodes' true returns, when the env reports `info["true_reward"]` (reward-hacking
    # envs, whose reward is a proxy); empty otherwise
    true_returns: list[float] = field(default_factory=list)
    raw_next_obs: np.ndarray | None = None  # `next_obs` as the env gave it (no normalisation)

    @property
    def done(self) -> np.ndarray:
        return self.terminated | self.truncated


def is_continuing(env_id: str) -> bool:
    """An env registered without a time limit whose class declares `continuing = True` (the
    average-reward tasks): its episodes never end."""
    spec = gym.spec(env_id)
    return spec.max_episode_steps is None and bool(getattr(spec.entry_point, "continuing", False))


class EnvStep(NamedTuple):
    """The raw result of stepping every sub-env once, before normalisation and statistics."""

    obs: np.ndarray  # to act on next: the reset observation where an episode ended
    reward: np.ndarray  # float64
    terminated: np.ndarray
    truncated: np.ndarray
    next_obs: np.ndarray  # the true successor: `obs` with the final observations put back
    true_reward: np.ndarray | None  # `info["true_reward"]` where some env reports it


class SerialEnvs:
    """`n` gymnasium envs stepped one after another in this process, with same-step autoreset.

    It computes what `SyncVectorEnv(autoreset_mode=SAME_STEP)` does (the same calls on each
    sub-env in the same order: `step`, then `reset()` where it ended), without its per-step
    merging of every sub-env's info into one dict, which on a small env costs as much as a
    fifth of the physics. tests/test_fast_path.py checks the two step by step, time limits included.
    """

    def __init__(self, env_fns: list[Any]):
        self.envs = [fn() for fn in env_fns]
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        self._closed = False

    def reset(self, seeds: list[int]) -> np.ndarray:
        obs = np.empty((len(self.envs), *self.single_observation_space.shape),
                       self.single_observation_space.dtype)
        for i, (env, seed) in enumerate(zip(self.envs, seeds, strict=True)):
            obs[i] = env.reset(seed=seed)[0]
        return obs

    def step(self, actions: np.ndarray) -> EnvStep:
        n, space = len(self.envs), self.single_observation_space
        obs = np.empty((n, *space.shape), space.dtype)
        reward = np.empty(n)
        terminated, truncated = np.empty(n, np.bool_), np.empty(n, np.bool_)
        true_reward, finals = None, {}
        for i, (env, action) in enumerate(zip(self.envs, actions, strict=True)):
            o, reward[i], terminated[i], truncated[i], info = env.step(action)
            if "true_reward" in info:
                if true_reward is None:
                    true_reward = np.zeros(n)
                true_reward[i] = info["true_reward"]
            if terminated[i] or truncated[i]:
                finals[i] = o
                o = env.reset()[0]
            obs[i] = o
        next_obs = obs
        if finals:
            next_obs = obs.copy()
            for i, o in finals.items():
                next_obs[i] = o
        return EnvStep(obs, reward, terminated, truncated, next_obs, true_reward)

    def call(self, name: str, *args: Any) -> tuple[Any, ...]:
        return tuple(getattr(env, name)(*args) for env in self.envs)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for env in self.envs:
                env.close()


class GymnasiumEnvs:
    """A gymnasium vector env (async: one subprocess per sub-env) behind `SerialEnvs`'s methods."""

    def __init__(self, vector_cls: type[VectorEnv], env_fns: list[Any]):
        self.vector = vector_cls(env_fns, autoreset_mode=AutoresetMode.SAME_STEP)
        self.single_observation_space = self.vector.single_observation_space
        self.single_action_space = self.vector.single_action_space

    def reset(self, seeds: list[int]) -> np.ndarray:
        return self.vector.reset(seed=seeds)[0]

    def step(self, actions: np.ndarray) -> EnvStep:
        obs, reward, terminated, truncated, info = self.vector.step(actions)
        terminated, truncated = np.asarray(terminated), np.asarray(truncated)
        done = terminated | truncated
        next_obs = obs
        if done.any():
            next_obs = obs.copy()
            idx = np.flatnonzero(info["_final_obs"])
            next_obs[idx] = np.stack(info["final_obs"][idx])
        return EnvStep(obs, np.asarray(reward, np.float64), terminated, truncated, next_obs,
                       _info_values(info, "true_reward", done))

    def call(self, name: str, *args: Any) -> tuple[Any, ...]:
        return self.vector.call(name, *args)

    def close(self) -> None:
        self.vector.close()


def _info_values(info: dict[str, Any], key: str, done: np.ndarray) -> np.ndarray | None:
    """Per-env values of `info[key]` from a vector step; a finished env's come from its final
    info (with same-step autoreset its own entry holds the reset info). None if no env has it."""
    final = info.get("final_info", {})
    if key not in info and key not in final:
        return None
    out = np.zeros(len(done))
    if key in info:
        out = np.where(info[f"_{key}"], info[key], 0.0)
    if key in final:
        out = np.where(done & final[f"_{key}"], final[key], out)
    return out


class VecEnv:
    """A batch of `n_envs` copies of one gymnasium env, stepped together."""

    def __init__(
        self,
        env_id: str,
        n_envs: int = 1,
        mode: str = "sync",
        normalize_obs: bool = False,
        normalize_reward: bool = False,
        gamma: float = 0.99,
        clip_obs: float = 10.0,
        env_kwargs: dict[str, Any] | None = None,
    ):
        check_env_id(env_id)
        if mode not in ("sync", "async"):
            raise UserError(f"vec_mode {mode!r} is not known; use sync or async")
        if n_envs < 1:
            raise UserError(f"n_envs={n_envs}: need at least one environment")
        fns = [partial(_make_one, env_id, i, env_kwargs or {}) for i in range(n_envs)]
        self.envs = SerialEnvs(fns) if mode == "sync" else GymnasiumEnvs(AsyncVectorEnv, fns)
        # async workers ignore SIGTERM (see `_make_one`), so the terminate() with which gymnasium
        # (on garbage collection) and multiprocessing (at exit) end them would not: an env that
        # is never closed is closed the orderly way instead, when collected or at exit
        self._closer = weakref.finalize(self, self.envs.close)
        self._closer.atexit = False
        atexit.register(self._closer)  # after multiprocessing's exit hook, so it runs before it
        self.env_id, self.n_envs = env_id, n_envs
        self.observation_space = self.envs.single_observation_space
        self.action_space = self.envs.single_action_space
        space = self.observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            self.close()
            raise UserError(f"{env_id} observes {space}; ctrlrl's networks take flat Box "
                            "observations (wrap the env, e.g. gymnasium's FlattenObservation)")
        self.gamma, self.clip_obs = gamma, clip_obs
        self.obs_rms = RunningMeanStd(self.observation_space.shape) if normalize_obs else None
        self.ret_rms = RunningMeanStd(()) if normalize_reward else None
        self.training = True  # update normalisation statistics while stepping
        self._disc_return = np.zeros(n_envs)
        self._ep_return = np.zeros(n_envs)
        self._ep_length = np.zeros(n_envs, np.int64)
        self._ep_true_return = np.zeros(n_envs)
        self.obs: np.ndarray | None = None  # normalised current observation
        self.raw_obs: np.ndarray | None = None  # the same, as the env gave it

    def reset(self, seed: int) -> np.ndarray:
        raw = self.envs.reset([seed + i for i in range(self.n_envs)])
        self.raw_obs = raw
        if self.obs_rms is not None and self.training:
            self.obs_rms.update(raw)
        self.obs = self.normalize_obs(raw)
        self._disc_return[:] = 0
        self._ep_return[:] = 0
        self._ep_length[:] = 0
        self._ep_true_return[:] = 0
        return self.obs

    def normalize_obs(self, raw: np.ndarray) -> np.ndarray:
        if self.obs_rms is None:
            return raw.astype(np.float32, copy=False)
        out = (raw - self.obs_rms.mean) / np.sqrt(self.obs_rms.var + 1e-8)
        return np.clip(out, -self.clip_obs, self.clip_obs).astype(np.float32)

    def step(self, actions: np.ndarray) -> Step:
        raw_obs, reward, terminated, truncated, raw_next, true_reward = self.envs.step(actions)
        done = terminated | truncated
        if self.obs_rms is not None and self.training:
            self.obs_rms.update(raw_obs)
        norm_reward = reward
        if self.ret_rms is not None:
            self._disc_return = self._disc_return * self.gamma + reward
            if self.training:
                self.ret_rms.update(self._disc_return)
            norm_reward = np.clip(reward / np.sqrt(self.ret_rms.var + 1e-8), -10.0, 10.0)
            self._disc_return[done] = 0.0
        self._ep_return += reward
        self._ep_length += 1
        has_true = true_reward is not None
        if has_true:
            self._ep_true_return += true_reward
        episodes, true_returns = [], []
        for i in np.flatnonzero(done):
            episodes.append((float(self._ep_return[i]), int(self._ep_length[i])))
            if has_true:
                true_returns.append(float(self._ep_true_return[i]))
            self._ep_return[i], self._ep_length[i], self._ep_true_return[i] = 0.0, 0, 0.0
        self.obs, self.raw_obs = self.normalize_obs(raw_obs), raw_obs
        next_obs = self.obs if raw_next is raw_obs else self.normalize_obs(raw_next)
        return Step(self.obs, next_obs, norm_reward.astype(np.float32), reward, terminated,
                    truncated, episodes, true_returns, raw_next)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue stepping exactly where this env stands."""
        return {
            "envs": list(self.envs.call("ctrlrl_snapshot")),
            "obs": None if self.obs is None else self.obs.copy(),
            "raw_obs": None if self.raw_obs is None else self.raw_obs.copy(),
            "obs_rms": None if self.obs_rms is None else self.obs_rms.state_dict(),
            "ret_rms": None if self.ret_rms is None else self.ret_rms.state_dict(),
            "disc_return": self._disc_return.copy(),
            "ep_return": self._ep_return.copy(),
            "ep_length": self._ep_length.copy(),
            "ep_true_return": self._ep_true_return.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()` output. It comes from a file: a state that does not fit
        this env (another env id, n_envs or normalisation, or a damaged file) is refused with
        what does not fit, before anything is changed."""
        if not isinstance(state, dict) or not isinstance(state.get("envs"), list):
            raise UserError("checkpoint env state is damaged (no list of env states); use "
                            "another checkpoint")
        if len(state["envs"]) != self.n_envs:
            raise UserError(
                f"checkpoint holds {len(state['envs'])} envs but this run has n_envs={self.n_envs}; "
                "resume with the n_envs the run was started with"
            )
        live = {k: v for k, v in self.state_dict().items() if k != "envs"}
        problem = misfit({k: v for k, v in state.items() if k != "envs"}, live, "env state")
        problem = problem or next(filter(None, self.envs.call("ctrlrl_misfit", state["envs"])), None)
        if problem:
            raise UserError(f"checkpoint env state does not fit {self.env_id} ({problem}); load "
                            "it with the env and settings it was saved with")
        self.envs.call("ctrlrl_restore", state["envs"])
        self.obs = state["obs"]
        self.raw_obs = state.get("raw_obs", state["obs"])  # checkpoints before raw_obs was kept
        for rms, key in ((self.obs_rms, "obs_rms"), (self.ret_rms, "ret_rms")):
            if rms is not None and state[key] is not None:
                rms.load_state_dict(state[key])
        self._disc_return = np.array(state["disc_return"])
        self._ep_return = np.array(state["ep_return"])
        self._ep_length = np.array(state["ep_length"])
        self._ep_true_return = np.array(state.get("ep_true_return", np.zeros(self.n_envs)))

    def close(self) -> None:
        self._closer()
        atexit.unregister(self._closer)
