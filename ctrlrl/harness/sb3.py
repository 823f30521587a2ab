"""stable-baselines3's PPO / SAC / TD3 as sweep runs (`sb3-ppo`, `sb3-sac`, `sb3-td3`).

A twin takes the configuration ctrlrl's own algorithm would have for that env (preset, `--set`,
flags), translated to stable-baselines3's arguments (`_PPO_KEYS` and friends below), and writes
an ordinary ctrlrl run dir: `config.yaml`, `metrics.jsonl` and TensorBoard with the same scalar
names, evaluated at the same steps by ctrlrl's own `evaluate` (deterministic policy, one episode
per eval env, seeds offset by 10000 from the training seed). So a report's SB3 row and ctrlrl
row differ only in the library.

stable-baselines3 has no exact resume: a twin cut short starts again from scratch.
"""

from __future__ import annotations

import time

import numpy as np
import yaml

from ctrlrl.core.errors import UserError
from ctrlrl.core.run_dir import clear_run_dir

TWINS = {"sb3-ppo": "ppo", "sb3-sac": "sac", "sb3-td3": "td3"}


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


def train_sb3(spec) -> tuple[int, float]:
    """Train the twin of `spec` (a sweep RunSpec) from scratch into its run dir; (steps, wall s)."""
    sb3 = _import_sb3()
    import torch
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    from ctrlrl.algos.base import crossed
    from ctrlrl.core.config import resolve_device, to_dict
    from ctrlrl.core.envs import VecEnv
    from ctrlrl.core.evaluation import evaluate
    from ctrlrl.core.logger import Logger
    from ctrlrl.core.signals import stop_requested
    from ctrlrl.harness.sweep import resolve_spec, write_spec

    _, run, cfg = resolve_spec(spec)
    torch.set_num_threads(run.threads)
    run_dir = spec.run_dir
    clear_run_dir(run_dir)  # SB3 runs start afresh (the sweep holds the folder meanwhile)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    config = {"algo": spec.algo, "run": {**to_dict(run), "run_dir": str(run_dir)},
              "config": to_dict(cfg), "library": f"stable-baselines3 {sb3.__version__}"}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    write_spec(spec)

    venv = make_vec_env(run.env, n_envs=run.n_envs, seed=run.seed)
    normalize = run.normalize_obs or run.normalize_reward
    if normalize:
        venv = VecNormalize(venv, norm_obs=run.normalize_obs, norm_reward=run.normalize_reward,
                            clip_obs=run.clip_obs, gamma=cfg.gamma)
    model = _build(spec.algo, venv, run, cfg, str(resolve_device(run.device)))
    eval_env = VecEnv(run.env, run.eval_episodes)
    logger = Logger(run_dir, run.total_steps, run.tensorboard, progress=False)
    start = time.perf_counter()

    def act(obs: np.ndarray) -> np.ndarray:
        return model.predict(venv.normalize_obs(obs) if normalize else obs, deterministic=True)[0]

    def log_eval(step: int) -> None:
        returns = evaluate(act, eval_env, run.seed + 10_000)
        logger.record("eval/mean_reward", returns.mean())
        logger.record("eval/std_reward", returns.std())
        logger.dump(step)

    class Harness(BaseCallback):
        """ctrlrl's evaluation and logging cadence inside stable-baselines3's loop.

        stable-baselines3 trains after each rollout, ctrlrl before it evaluates: an evaluation due
        at a step waits for the next rollout's start (or the end), so both evaluate trained weights.
        """

        due: int | None = None

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
                elapsed = time.perf_counter() - start
                logger.record("time/fps", step / max(elapsed, 1e-9))
                logger.record("time/time_elapsed", elapsed)
                logger.record("time/total_timesteps", step)
                logger.dump(step)
            return not stop_requested()  # a stopping sweep: end now, restart later

        def _on_rollout_start(self) -> None:
            if self.due is not None:
                log_eval(self.due)
                self.due = None

    harness = Harness()
    try:
        model.learn(run.total_steps, callback=harness)
        harness.on_rollout_start()  # the last evaluation, after the last update
        model.save(run_dir / "checkpoints" / "sb3_model.zip")
    finally:
        logger.close()
        eval_env.close()
        venv.close()
    return int(model.num_timesteps), time.perf_counter() - start

