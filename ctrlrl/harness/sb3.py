"""stable-baselines3's PPO / SAC / TD3 as sweep runs (`sb3-ppo`, `sb3-sac`, `sb3-td3`).

A twin takes the configuration ctrlrl's own algorithm would have for that env (preset, `--set`,
flags), translated to stable-baselines3's arguments (`_PPO_KEYS` and friends below), and writes
an ordinary ctrlrl run dir: `config.yaml`, `metrics.jsonl` and TensorBoard with the same scalar
names, evaluated at the same steps by ctrlrl's own `evaluate` (deterministic policy, one episode
per eval env, seeds offset by 10000 from the training seed). So a report's SB3 row and ctrlrl
row differ only in the library.

A twin checkpoints as ctrlrl's learners do (every `checkpoint_every` steps, and on Ctrl-C or
SIGTERM, always between two rollouts) to `checkpoints/sb3.pt`, a ctrlrl checkpoint (tensors and
plain values, no pickle): stable-baselines3's weights and optimiser states, the filled part of its
replay buffer, its counters and last observation, the envs' exact state and every RNG it draws
from. A sweep resumes a cut twin from it, exactly: the resumed run matches an uncut one step for
step.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ctrlrl.core.errors import UserError
from ctrlrl.core.run_dir import clear_run_dir

TWINS = {"sb3-ppo": "ppo", "sb3-sac": "sac", "sb3-td3": "td3"}
CHECKPOINT = "sb3.pt"  # <run dir>/checkpoints/sb3.pt, what a cut twin resumes from
# a replay buffer's arrays, of which a checkpoint keeps the rows filled so far
_BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def sb3_base(name: str) -> str:
    if name not in TWINS:
        raise UserError(f"unknown stable-baselines3 twin {name!r}; valid: {', '.join(TWINS)}")
    return TWINS[name]


def _import_sb3():
    try:
        import stable_baselines3
    except ImportError:
        raise UserError("the stable-baselines3 rows need it installed: pip install 'ctrlrl[bench]'") \
            from None
    return stable_baselines3


def _build(name: str, venv, run, cfg, device: str):
    from stable_baselines3 import PPO, SAC, TD3
    from stable_baselines3.common.noise import NormalActionNoise
    from torch import nn

    hidden = list(cfg.hidden_sizes)
    common = {"learning_rate": cfg.learning_rate, "gamma": cfg.gamma, "seed": run.seed,
              "device": device, "verbose": 0}
    if name == "sb3-ppo":
        lr = cfg.learning_rate
        activation = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU}
        return PPO("MlpPolicy", venv, n_steps=cfg.n_steps, batch_size=cfg.batch_size,
                   n_epochs=cfg.n_epochs, gae_lambda=cfg.gae_lambda, clip_range=cfg.clip_range,
                   clip_range_vf=cfg.clip_range_vf, normalize_advantage=cfg.normalize_advantage,
                   ent_coef=cfg.ent_coef, vf_coef=cfg.vf_coef, max_grad_norm=cfg.max_grad_norm,
                   target_kl=cfg.target_kl,
                   policy_kwargs={"net_arch": {"pi": hidden, "vf": hidden},
                                  "activation_fn": activation[cfg.activation],
                                  "ortho_init": cfg.ortho_init, "log_std_init": cfg.log_std_init,
                                  "optimizer_kwargs": {"eps": cfg.adam_eps}},
                   **{**common, "learning_rate": (lambda left: left * lr) if cfg.anneal_lr else lr})
    off = {"buffer_size": cfg.buffer_size, "learning_starts": cfg.learning_starts,
           "batch_size": cfg.batch_size, "tau": cfg.tau, "train_freq": 1,
           "gradient_steps": cfg.gradient_steps, **common}
    if name == "sb3-sac":
        return SAC("MlpPolicy", venv,
                   ent_coef=f"auto_{cfg.ent_coef}" if cfg.autotune else cfg.ent_coef,
                   target_entropy="auto" if cfg.target_entropy is None else cfg.target_entropy,
                   policy_kwargs={"net_arch": hidden, "n_critics": cfg.n_critics}, **off)
    dim = venv.action_space.shape[0]  # noise in the [-1, 1] policy space, as ctrlrl's
    return TD3("MlpPolicy", venv, policy_delay=cfg.policy_delay,
               target_policy_noise=cfg.target_policy_noise, target_noise_clip=cfg.target_noise_clip,
               action_noise=NormalActionNoise(np.zeros(dim), cfg.exploration_noise * np.ones(dim)),
               policy_kwargs={"net_arch": hidden}, **off)


def _monitors(envs) -> list:
    from stable_baselines3.common.monitor import Monitor

    out = []
    for env in envs.envs:  # each: SnapshotWrapper(Monitor(...))
        while not isinstance(env, Monitor):
            env = env.env
        out.append(env)
    return out


def _buffer_state(buffer, rows: int) -> dict[str, Any]:
    arrays = {k: getattr(buffer, k)[:rows] for k in _BUFFER_ARRAYS
              if getattr(buffer, k, None) is not None}
    return {"pos": buffer.pos, "full": buffer.full, "arrays": arrays}


def _normalizer_state(norm) -> dict[str, Any] | None:
    if norm is None:
        return None
    rms = {name: None if r is None else {"mean": r.mean, "var": r.var, "count": r.count}
           for name, r in (("obs_rms", getattr(norm, "obs_rms", None)), ("ret_rms", norm.ret_rms))}
    return {**rms, "returns": norm.returns, "old_obs": getattr(norm, "old_obs", None),
            "old_reward": norm.old_reward}


def _twin_state(model, envs, norm) -> dict[str, Any]:
    """Everything a twin needs to continue exactly where it stands, between two rollouts: what
    stable-baselines3's own `save` keeps (weights, optimisers, counters, last observation) and what
    it leaves out (the replay buffer, the envs, the RNGs)."""
    import torch
    from stable_baselines3.common.save_util import recursive_getattr

    _, variables = model._get_torch_save_params()
    buffer = getattr(model, "replay_buffer", None)
    rows = 0 if buffer is None else (buffer.buffer_size if buffer.full else buffer.pos)
    return {
        "step": model.num_timesteps,
        "n_updates": model._n_updates,
        "params": model.get_parameters(),
        "variables": {name: recursive_getattr(model, name).detach().cpu() for name in variables},
        "last_obs": model._last_obs,
        "last_episode_starts": model._last_episode_starts,
        "episodes": [[e["r"], e["l"], e["t"]] for e in model.ep_info_buffer or []],
        "buffer": None if buffer is None else _buffer_state(buffer, rows),
        "normalizer": _normalizer_state(norm),
        "envs": list(envs.env_method("ctrlrl_snapshot")),
        "monitor_rewards": [np.array(m.rewards, dtype=np.float64) for m in _monitors(envs)],
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(legacy=False),
                "action_space": model.action_space.np_random.bit_generator.state},
    }


def _restore(model, envs, norm, state: dict[str, Any], path: Path) -> None:
    """Continue `model` (built afresh from the run's config) from `state`, `_twin_state` read
    back from `path`. The file is checked against the live twin first: one that does not fit
    (damaged, or written by another configuration) is refused in one line."""
    import torch
    from stable_baselines3.common.save_util import recursive_getattr

    from ctrlrl.core.checkpoint import misfit

    def refuse(problem: str):
        return UserError(f"{path} does not fit this run ({problem}); it is damaged or was "
                         "written by another configuration: delete it to start the run afresh")

    envs.reset()  # a live env holds all its state only once reset; restoring replaces it all
    buffer = getattr(model, "replay_buffer", None)
    saved = state.get("buffer")
    rows = 0
    if buffer is not None and isinstance(saved, dict):
        rows = saved.get("pos")
        if not isinstance(rows, int) or not 0 <= rows <= buffer.buffer_size:
            raise refuse(f"buffer position {rows!r} outside 0..{buffer.buffer_size}")
        rows = buffer.buffer_size if saved.get("full") else rows
    live = _twin_state(model, envs, norm)
    live["buffer"] = None if buffer is None else _buffer_state(buffer, rows)
    if norm is not None:  # the last raw observation and reward: none yet on a fresh twin
        live["normalizer"].update(old_obs=None, old_reward=None)
    checked = ("step", "n_updates", "variables", "last_obs", "last_episode_starts", "buffer",
               "normalizer", "rng")
    problem = (next(filter(None, envs.env_method("ctrlrl_misfit", state.get("envs"))), None)
               if isinstance(state.get("envs"), list) and len(state["envs"]) == envs.num_envs
               else f"expected {envs.num_envs} env states")
    problem = problem or misfit({k: state.get(k) for k in checked}, {k: live[k] for k in checked},
                                "twin")
    rewards, episodes = state.get("monitor_rewards"), state.get("episodes")
    if not (isinstance(rewards, list) and len(rewards) == envs.num_envs
            and all(isinstance(r, np.ndarray) and r.ndim == 1 and r.dtype.kind in "biuf"
                    for r in rewards)):
        problem = problem or f"monitor_rewards: expected {envs.num_envs} arrays of rewards"
    if not (isinstance(episodes, list)
            and all(isinstance(e, list) and len(e) == 3 and not any(isinstance(x, bool) for x in e)
                    and all(isinstance(x, (int, float)) for x in e) for e in episodes)):
        problem = problem or "episodes: expected [return, length, time] of each episode"
    params = state.get("params")
    policy = params.get("policy") if isinstance(params, dict) else None
    if isinstance(policy, dict) and set(policy) != set(live["params"]["policy"]):
        problem = problem or "twin.params.policy: not this network's weights"
    problem = problem or misfit(policy, live["params"]["policy"], "twin.params.policy")
    if problem:
        raise refuse(problem)
    try:
        model.set_parameters(state["params"], exact_match=True, device=model.device)
    except (KeyError, ValueError, RuntimeError) as exc:  # an optimiser state of another shape
        raise refuse(str(exc).splitlines()[0]) from None
    with torch.no_grad():
        for name, value in state["variables"].items():
            recursive_getattr(model, name).copy_(value)
    model.num_timesteps, model._n_updates = state["step"], state["n_updates"]
    model._last_obs, model._last_episode_starts = state["last_obs"], state["last_episode_starts"]
    model.ep_info_buffer = deque(({"r": r, "l": int(n), "t": t} for r, n, t in state["episodes"]),
                                 maxlen=model._stats_window_size)
    model.ep_success_buffer = deque(maxlen=model._stats_window_size)
    if buffer is not None:
        for key, value in saved["arrays"].items():
            getattr(buffer, key)[:rows] = value
        buffer.pos, buffer.full = saved["pos"], saved["full"]
    if norm is not None:
        for name in ("obs_rms", "ret_rms"):
            rms, values = getattr(norm, name, None), state["normalizer"][name]
            if rms is not None:
                rms.mean, rms.var, rms.count = values["mean"], values["var"], values["count"]
        for name in ("returns", "old_obs", "old_reward"):
            setattr(norm, name, state["normalizer"][name])
    envs.env_method("ctrlrl_restore", state["envs"])
    for monitor, rewards in zip(_monitors(envs), state["monitor_rewards"], strict=True):
        monitor.rewards = [float(r) for r in rewards]
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    model.action_space.np_random.bit_generator.state = state["rng"]["action_space"]


class _Stopped(Exception):
    """Raised between two rollouts once a stop was asked for and the checkpoint is on disk."""


def train_sb3(spec) -> tuple[int, float]:
    """Train the twin of `spec` (a sweep RunSpec) into its run dir, from its checkpoint when it
    has one, else from scratch; (steps, wall s across sessions)."""
    sb3 = _import_sb3()
    import torch
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    from ctrlrl.algos.base import crossed
    from ctrlrl.core.checkpoint import load_checkpoint, save_checkpoint
    from ctrlrl.core.config import resolve_device, to_dict
    from ctrlrl.core.envs import SnapshotWrapper, VecEnv
    from ctrlrl.core.evaluation import evaluate
    from ctrlrl.core.logger import Logger, truncate_metrics
    from ctrlrl.core.signals import TrainingInterrupted, deferred_sigint
    from ctrlrl.harness.sweep import resolve_spec, write_spec

    _, run, cfg = resolve_spec(spec)
    torch.set_num_threads(run.threads)
    run_dir = spec.run_dir
    path = run_dir / "checkpoints" / CHECKPOINT
    saved = load_checkpoint(path) if path.is_file() else None
    if saved is None:
        clear_run_dir(run_dir)  # a twin without a checkpoint starts afresh (the sweep holds the folder)
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        config = {"algo": spec.algo, "run": {**to_dict(run), "run_dir": str(run_dir)},
                  "config": to_dict(cfg), "library": f"stable-baselines3 {sb3.__version__}"}
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    write_spec(spec)

    envs = make_vec_env(run.env, n_envs=run.n_envs, seed=run.seed, wrapper_class=SnapshotWrapper,
                        wrapper_kwargs={"index": 0})
    for index, env in enumerate(envs.envs):
        env.index = index
    norm = None
    if run.normalize_obs or run.normalize_reward:
        norm = VecNormalize(envs, norm_obs=run.normalize_obs, norm_reward=run.normalize_reward,
                            clip_obs=run.clip_obs, gamma=cfg.gamma)
    venv = norm or envs
    model = _build(spec.algo, venv, run, cfg, str(resolve_device(run.device)))
    wall_before = 0.0
    if saved is not None:
        _restore(model, envs, norm, saved, path)
        wall_before = float(saved.get("wall_time", 0.0))
        truncate_metrics(run_dir / "metrics.jsonl", model.num_timesteps)
    start_step = model.num_timesteps
    eval_env = VecEnv(run.env, run.eval_episodes)
    logger = Logger(run_dir, run.total_steps, run.tensorboard, progress=False, start_step=start_step)
    start = time.perf_counter()

    def act(obs: np.ndarray) -> np.ndarray:
        return model.predict(norm.normalize_obs(obs) if norm else obs, deterministic=True)[0]

    def log_eval(step: int) -> None:
        returns = evaluate(act, eval_env, run.seed + 10_000)
        logger.record("eval/mean_reward", returns.mean())
        logger.record("eval/std_reward", returns.std())
        logger.dump(step)

    def save() -> None:
        wall = wall_before + time.perf_counter() - start
        save_checkpoint(path, {"algo": spec.algo, "wall_time": wall,
                               **_twin_state(model, envs, norm)})

    class Harness(BaseCallback):
        """ctrlrl's evaluation, logging and checkpoint cadence inside stable-baselines3's loop.

        stable-baselines3 trains after each rollout, ctrlrl before it evaluates: an evaluation due
        at a step waits for the next rollout's start (or the end), so both evaluate trained weights.
        Checkpoints and stops wait for it too: between two rollouts nothing is half done.
        """

        due: int | None = None
        saved_at = start_step

        def _on_step(self) -> bool:
            step = self.num_timesteps
            before = step - run.n_envs
            if crossed(before, step, run.eval_every):
                self.due = step
            if crossed(before, step, run.log_every) or step >= run.total_steps:
                infos = list(model.ep_info_buffer or [])
                if infos:
                    logger.record("rollout/ep_rew_mean", np.mean([e["r"] for e in infos]))
                    logger.record("rollout/ep_len_mean", np.mean([e["l"] for e in infos]))
                session = time.perf_counter() - start
                logger.record("time/fps", (step - start_step) / max(session, 1e-9))
                logger.record("time/time_elapsed", wall_before + session)  # whole run
                logger.record("time/total_timesteps", step)
                logger.dump(step)
            return True

        def _on_rollout_start(self) -> None:
            if self.due is not None:
                log_eval(self.due)
                self.due = None
            step = self.num_timesteps
            if interrupted() or crossed(self.saved_at, step, run.checkpoint_every):
                save()
                self.saved_at = step
            if interrupted():
                raise _Stopped

    harness = Harness()
    try:
        with deferred_sigint() as interrupted:
            try:
                model.learn(max(run.total_steps - start_step, 0), callback=harness,
                            reset_num_timesteps=saved is None)
            except _Stopped:
                raise TrainingInterrupted(path, interrupted()) from None
            if harness.due is not None:  # the last evaluation, after the last update
                log_eval(harness.due)
            save()
        model.save(run_dir / "checkpoints" / "sb3_model.zip")
    finally:
        logger.close()
        eval_env.close()
        venv.close()
    return int(model.num_timesteps), wall_before + time.perf_counter() - start
