"""The algorithm contract (`Algorithm`) and the loop every algorithm trains in (`learn`).

An algorithm module is a Config dataclass plus a subclass of a training loop that builds its
networks (`build`) and implements `update`: `ctrlrl.algos.on_policy.OnPolicyAlgorithm` hands it
each full rollout, `ctrlrl.algos.off_policy.OffPolicyAlgorithm` and `OfflineAlgorithm` a sampled
minibatch per gradient step. An update returns its metrics (`Metrics`); the loop keeps them in
`self.metrics`, which the log reads. The rest is machinery: acting and evaluation here; run dirs,
checkpoints, signals, envs, buffers and logging in `ctrlrl.core`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from ctrlrl.core.checkpoint import CHECKPOINT_NAME, misfit, save_checkpoint, stored_numbers
from ctrlrl.core.config import RunConfig, from_dict, resolve_device, resolve_precision, to_dict
from ctrlrl.core.envs import VecEnv, is_continuing
from ctrlrl.core.errors import UserError
from ctrlrl.core.evaluation import Evaluation, evaluate_episodes
from ctrlrl.core.logger import Logger, Metrics
from ctrlrl.core.nets import COMPUTE_DTYPES, set_compute_dtype
from ctrlrl.core.run_dir import RunDirLock, claim_run_dir, default_run_dir, prepare_run_dir
from ctrlrl.core.signals import TrainingInterrupted, deferred_sigint


class Algorithm:
    """Common state and machinery: envs, seeding, logging, evaluation, checkpoints."""

    name: ClassVar[str]
    Config: ClassVar[type]
    kind: ClassVar[str]  # on-policy | off-policy | offline | average-reward (`ctrlrl list`)
    summary: ClassVar[str]  # what the algorithm is, in one line (`ctrlrl list`)
    # what the algorithm can use; `incompatibility` refuses a run that asks for anything else
    action_spaces: ClassVar[tuple[type[gym.Space], ...]] = (
        gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete)
    vectorised: ClassVar[bool] = True  # learns from n_envs > 1 envs stepped together
    compile_modes: ClassVar[tuple[str, ...]] = ("eager",)  # the `compile` settings it runs
    evaluates_continuing: ClassVar[bool] = False  # evaluates tasks whose episodes never end
    # what `precision: auto` runs where the device has fast bf16 (fp32 elsewhere): bf16 only for
    # an algorithm whose learning in bf16 was measured to be no worse than in fp32
    default_precision: ClassVar[str] = "fp32"

    @classmethod
    def incompatibility(cls, env: gym.Env, run: RunConfig, cfg: Any) -> str | None:
        """Why this algorithm cannot train on `env` (made, never stepped) with these settings, as
        one line naming what would fit; None if it can. `ctrlrl.api` asks before anything is
        built. The base checks the spaces; an algorithm with further needs overrides this and
        asks `super()` first."""
        obs_space, act_space = env.observation_space, env.action_space
        if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
            return (f"{run.env} observes {obs_space}; ctrlrl's networks take flat Box observations "
                    "(wrap the env, e.g. gymnasium's FlattenObservation)")
        if not isinstance(act_space, cls.action_spaces):
            kinds = " or ".join(space.__name__ for space in cls.action_spaces)
            return f"{cls.name} needs {kinds} actions, and {run.env} acts in {act_space}"
        # a CUDA-graph run resumed or configured for a machine without CUDA; not only when typed
        if run.compile == "graph" and "graph" in cls.compile_modes:
            device = resolve_device(run.device)
            if device.type != "cuda":
                return (f"compile=graph captures CUDA graphs, and this run computes on {device}; "
                        "use compile=step or eager there, or --device cuda")
        return None

    @classmethod
    def unused_settings(cls, env: gym.Env, run: RunConfig, cfg: Any) -> dict[str, str]:
        """Settings this run would not use (or could not act on), each with the reason.
        `ctrlrl.api` refuses those given explicitly (a default that goes unused is no one's
        choice); the base covers what the class attributes declare, an override adds its own to
        `super()`'s."""
        name, online = cls.name, cls.kind != "offline"
        candidates = {
            "dataset": (online and bool(run.dataset),
                        f"{name} learns online from its env; `ctrlrl list` shows the offline "
                        "algorithms"),
            "keep_timeouts": (online and run.keep_timeouts,
                              f"it reads offline datasets, and {name} learns online"),
            "n_envs": (run.n_envs > 1 and not cls.vectorised,
                       f"{name} learns from one env: n_envs=1"),
            "compile": (run.compile not in cls.compile_modes,
                        f"{name} runs compile={' | '.join(cls.compile_modes)}"),
            "eval_every": (run.eval_every > 0 and not cls.evaluates_continuing
                           and is_continuing(run.env),
                           f"{run.env} is a continuing task: its episodes never end, so {name} "
                           "has no episode return to evaluate"),
            "clip_obs": (not run.normalize_obs,
                         "it clips normalised observations, and normalize_obs is off"),
            "log_std_init": (hasattr(cfg, "log_std_init")
                             and not isinstance(env.action_space, gym.spaces.Box),
                             f"it starts a Gaussian policy's std, and {run.env} acts in "
                             f"{env.action_space}"),
            "ratio": (hasattr(cfg, "ratio")
                      and not isinstance(env.action_space, gym.spaces.MultiDiscrete),
                      f"it chooses how a MultiDiscrete policy's ratio is taken, and {run.env} "
                      f"acts in {env.action_space}"),
        }
        return {key: why for key, (unused, why) in candidates.items() if unused}

    def __init__(self, run: RunConfig, cfg: Any):
        self.device = resolve_device(run.device)
        # config.yaml and checkpoints record the precision that runs, so a resume keeps it
        run = dataclasses.replace(run, precision=resolve_precision(
            run.precision, self.default_precision, self.device))
        self.run, self.cfg = run, cfg
        torch.set_num_threads(run.threads)
        # denormal floats (Adam's second moments of near-zero gradients decay into them) make
        # x86 CPU arithmetic ~10x slower; flushing them to zero changes nothing measurable
        torch.set_flush_denormal(True)
        torch.manual_seed(run.seed)
        self.np_rng = np.random.default_rng(run.seed)
        # normalize_reward divides by the std of the γ-discounted return: a setting of the
        # learners with a discount γ (`incompatibility` refuses it to the others)
        discount = {"gamma": cfg.gamma} if run.normalize_reward else {}
        self.env = VecEnv(run.env, run.n_envs, run.vec_mode, run.normalize_obs,
                          run.normalize_reward, clip_obs=run.clip_obs, **discount)
        self.obs = self.env.reset(run.seed)
        self.obs_dim = int(np.prod(self.env.observation_space.shape))
        self.step = 0  # env steps taken (all envs together)
        self.n_updates = 0  # gradient steps taken
        self.wall_time = 0.0  # seconds spent in `learn`, summed over resumed sessions
        self._session: tuple[float, float] | None = None  # (clock at start, wall_time at start)
        self.episodes: deque[tuple[float, int]] = deque(maxlen=100)  # (return, length)
        self.true_returns: deque[float] = deque(maxlen=100)  # when the env reports a true reward
        self.run_dir: Path | None = None
        self._run_dir_lock: RunDirLock | None = None  # held from setup_run_dir to the end of learn
        self._checkpoint_left: tuple[int, int] | None = None  # the checkpoint learn last left
        self._eval_env: VecEnv | None = None
        self.last_evaluation: Evaluation | None = None  # the latest one `learn` logged
        # the latest value of each train/* metric, from what the training loop's updates return
        self.metrics: Metrics = {}
        try:
            self.build()
        except BaseException as exc:
            self.env.close()  # its async workers would outlive a half-built algorithm
            if isinstance(exc, MemoryError) or (  # NumPy's, or torch's on CPU or CUDA
                    isinstance(exc, RuntimeError) and "allocate" in str(exc)):
                raise UserError(f"{self.name} on {self.device} cannot allocate what this config "
                                f"asks for ({str(exc).splitlines()[0][:120]}); lower its sizes "
                                "(buffer_size, n_steps, n_envs, hidden sizes)") from None
            raise
        self.apply_precision()

    def apply_precision(self) -> None:
        """The run's precision on every network of the checkpoint (`set_compute_dtype`); on CUDA a
        bf16 run also lets float32 matmuls (the output layers) use TF32."""
        for module in self.state_modules().values():
            if isinstance(module, nn.Module):
                set_compute_dtype(module, COMPUTE_DTYPES[self.run.precision])
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.fp32_precision = (
                "tf32" if self.run.precision == "bf16" else "ieee")

    # ---- to implement ------------------------------------------------------------------------
    def build(self) -> None:
        """Create networks, optimisers and buffers."""
        raise NotImplementedError

    def train_iteration(self) -> None:
        """Advance training by one iteration (collect + update); increases `self.step`."""
        raise NotImplementedError

    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        """The policy's action for evaluation, in the policy's own action space."""
        raise NotImplementedError

    def state_modules(self) -> dict[str, nn.Module | torch.optim.Optimizer]:
        """Modules and optimisers that make up the checkpoint."""
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        """Further state for exact resume (e.g. the replay buffer)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def maybe_compile(self, fn):
        """`torch.compile(fn)` under `compile: step`, else `fn` unchanged (an on-policy learner's
        loss; the off-policy loops compile the whole update themselves)."""
        return torch.compile(fn, dynamic=False) if self.run.compile == "step" else fn

    # ---- acting ------------------------------------------------------------------------------
    def to_env_action(self, action: np.ndarray) -> np.ndarray:
        """Map a policy action to what the env accepts (clip Gaussian actions to the box)."""
        space = self.env.action_space
        if isinstance(space, gym.spaces.Box):
            return np.clip(action, space.low, space.high)
        return action

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Env actions for a batch of raw observations (normalised with the run's statistics)."""
        obs = np.asarray(obs, dtype=np.float32)
        single = obs.ndim == len(self.env.observation_space.shape)
        batch = obs[None] if single else obs
        obs_t = torch.as_tensor(self.env.normalize_obs(batch), device=self.device)
        with torch.no_grad():
            action = self.deterministic_action(obs_t) if deterministic else self.sample_action(obs_t)
        out = self.to_env_action(action.cpu().numpy())
        return out[0] if single else out

    def sample_action(self, obs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ---- training loop -----------------------------------------------------------------------
    def setup_run_dir(self, run_dir: str | Path | None = None, resuming: bool = False) -> Path:
        """Create the run dir (default runs/<env>/<algo>/<seed>-<time>), claim it for this
        process until `learn` returns and write config.yaml (`ctrlrl.core.run_dir.prepare_run_dir`
        says which folders a run may use)."""
        if run_dir is None and not self.run.run_dir:
            path = default_run_dir(self.run.env, self.name, self.run.seed)
        else:
            path = Path(run_dir or self.run.run_dir)
        self.release_run_dir()
        self._run_dir_lock = prepare_run_dir(path, self.config_dict(), resuming, self.step)
        self.run_dir = path
        self.run = dataclasses.replace(self.run, run_dir=str(path))
        return path

    def config_dict(self) -> dict[str, Any]:
        return {"algo": self.name, "run": to_dict(self.run), "config": to_dict(self.cfg)}

    @property
    def checkpoint_path(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / "checkpoints" / CHECKPOINT_NAME

    def learn(self, total_steps: int | None = None) -> Algorithm:
        """Train until `total_steps` env steps (default: the run config's), in whole iterations
        (`budget_note` says where that ends past the budget), then evaluate the final policy
        unless the last periodic evaluation fell on the final step or `no_evaluation_reason`
        says why not. Evaluations never change training: they run on RNG state of their own."""
        if total_steps is not None:
            self.run = dataclasses.replace(self.run, total_steps=total_steps)
        if self.run_dir is None:
            self.setup_run_dir()
        elif self._run_dir_lock is None:  # a second learn() on this object
            self._run_dir_lock = claim_run_dir(self.run_dir)
            if file_stamp(self.checkpoint_path) != self._checkpoint_left:
                self.release_run_dir()
                raise UserError(f"run dir {self.run_dir} was trained on elsewhere since this "
                                "object left it; continue from its checkpoint with "
                                f"`ctrlrl train --resume {self.run_dir}` (ctrlrl.api.resume)")
        run = self.run
        try:
            logger = Logger(self.run_dir, run.total_steps, run.tensorboard, run.progress, self.step)
        except BaseException:
            self.release_run_dir()
            raise
        start_step, start_time = self.step, time.perf_counter()
        self._session = (start_time, self.wall_time)
        try:
            with deferred_sigint() as interrupted:
                while self.step < run.total_steps and not interrupted():
                    before = self.step
                    self.train_iteration()
                    if crossed(before, self.step, run.eval_every):
                        self._evaluate(logger)
                    if crossed(before, self.step, run.log_every) or self.step >= run.total_steps:
                        self._log(logger, start_step, start_time)
                    if crossed(before, self.step, run.checkpoint_every):
                        self.save(self.checkpoint_path)
                self.save(self.checkpoint_path)
                if interrupted():
                    raise TrainingInterrupted(self.checkpoint_path, interrupted())
                last = self.last_evaluation
                if (last is None or last.step != self.step) and self.no_evaluation_reason() is None:
                    self._evaluate(logger)
                    # the checkpoint records it: a run resumed now has nothing left to do
                    self.save(self.checkpoint_path)
        finally:
            self.wall_time = self.elapsed()
            self._session = None
            logger.close()
            self._checkpoint_left = file_stamp(self.checkpoint_path)
            self.release_run_dir()  # another process, or api.resume here, may now continue it
        return self

    def release_run_dir(self) -> None:
        if self._run_dir_lock is not None:
            self._run_dir_lock.release()
            self._run_dir_lock = None

    def elapsed(self) -> float:
        """Wall time spent training this run so far, across resumes."""
        if self._session is None:
            return self.wall_time
        start, before = self._session
        return before + time.perf_counter() - start

    def _log(self, logger: Logger, start_step: int, start_time: float) -> None:
        if self.episodes:
            rets, lens = zip(*self.episodes, strict=True)
            logger.record("rollout/ep_rew_mean", np.mean(rets))
            logger.record("rollout/ep_len_mean", np.mean(lens))
        if self.true_returns:
            logger.record("rollout/true_ep_rew_mean", np.mean(self.true_returns))
        session = time.perf_counter() - start_time
        logger.record("time/fps", (self.step - start_step) / max(session, 1e-9))
        logger.record("time/time_elapsed", self.elapsed())  # whole run, unlike the fps
        logger.record("time/total_timesteps", self.step)
        logger.record("train/n_updates", self.n_updates)
        for key, value in self.metrics.items():
            value = value.item() if torch.is_tensor(value) else value
            if not math.isfinite(value):  # stop before a checkpoint of NaN weights replaces a good one
                raise UserError(f"training diverged: train/{key} is {value} at step {self.step}; "
                                f"the last checkpoint is {self.checkpoint_path}; lower the "
                                "learning_rate or check the env's rewards for NaN/inf")
            logger.record(f"train/{key}", value)
        logger.dump(self.step, self.headline(self.last_evaluation))

    def evaluate(self, episodes: int | None = None, seed: int | None = None) -> np.ndarray:
        """Returns of deterministic episodes on a separate, unnormalised env."""
        return self.evaluate_episodes(episodes, seed)[0]

    def evaluate_episodes(self, episodes: int | None = None,
                          seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`evaluate`, with each episode's true return too (NaN unless the env reports one)."""
        n = self.run.eval_episodes if episodes is None else episodes
        if is_continuing(self.run.env):
            raise UserError(f"{self.run.env} is a continuing task: its episodes never end, so there "
                            "is no episode return to evaluate; train with --eval-every 0 (loop, "
                            "ucrl2 and random-policy evaluate a fixed horizon instead)")
        return evaluate_episodes(self.predict, self.eval_env(n), self.evaluation_seed(seed))

    def evaluation_seed(self, seed: int | None = None) -> int:
        """The first evaluation episode's seed: `seed`, else the run's seed + 10000 (never a
        training seed); episode i gets this + i."""
        return self.run.seed + 10_000 if seed is None else seed

    def record_video(self, path: str | Path, episodes: int = 1, seed: int | None = None
                     ) -> list[tuple[float, int]]:
        """The first `episodes` of `evaluate(seed=seed)`, rendered offscreen into the mp4 `path`
        (see `ctrlrl.core.video`); each episode's (return, length)."""
        from ctrlrl.core.video import record_video

        return record_video(self.predict, self.run.env, path, episodes, self.evaluation_seed(seed))

    def eval_env(self, n: int) -> VecEnv:
        """A separate, unnormalised env of `n` copies for evaluation (kept between calls)."""
        if n < 1:
            raise UserError(f"episodes={n}: evaluate at least one episode")
        if self._eval_env is None or self._eval_env.n_envs != n:
            if self._eval_env is not None:
                self._eval_env.close()
            self._eval_env = VecEnv(self.run.env, n)
        return self._eval_env

    def run_evaluation(self, episodes: int | None = None, seed: int | None = None) -> Evaluation:
        """`evaluate_episodes` at the current step, with the run's reference scores; on RNG state of
        its own, so that evaluating (a policy that samples, e.g. random-policy) changes no later
        training draw."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            returns, true_returns = self.evaluate_episodes(episodes, seed)
        return Evaluation(self.step, returns, true_returns, self.reference_scores())

    def reference_scores(self) -> tuple[float, float] | None:
        """(min, max) returns that normalise an evaluation's score; None: no normalised score."""
        return None

    def no_evaluation_reason(self) -> str | None:
        """Why `learn` ends without a final evaluation, in a few words; None: it evaluates."""
        if self.run.eval_every == 0:
            return "evaluation is disabled (eval_every=0)"
        return None

    def headline(self, evaluation: Evaluation | None) -> dict[str, float]:
        """The numbers that say whether the run learns where the training return does not, by
        label: here an evaluation's true return (reward-hacking envs) and normalised score
        (offline runs). The progress bar, `ctrlrl train`'s last line and `ctrlrl eval` show them."""
        if evaluation is None:
            return {}
        scalars = evaluation.scalars()
        return {label: scalars[key] for key, label in (("eval/true_reward", "eval true return"),
                                                      ("eval/normalized_score", "eval normalized score"))
                if key in scalars}

    def budget_note(self) -> str | None:
        """One line saying where `learn` will stop past `total_steps` and why (iterations are
        whole); None where it stops at `total_steps` exactly."""
        return None

    def whole_iterations_note(self, per_iteration: int, what: str) -> str | None:
        """`budget_note` for iterations of `per_iteration` env steps each, made of `what`."""
        left = self.run.total_steps - self.step
        if left <= 0 or left % per_iteration == 0:
            return None
        end = self.step + -(-left // per_iteration) * per_iteration
        return (f"this run ends at step {end}, past total_steps={self.run.total_steps}: {self.name} "
                f"trains in whole iterations of {what} = {per_iteration} steps")

    def _evaluate(self, logger: Logger) -> None:
        self.last_evaluation = self.run_evaluation()
        for key, value in self.last_evaluation.scalars().items():
            logger.record(key, value)
        # now: evaluations may come more often than log dumps
        logger.dump(self.step, self.headline(self.last_evaluation))

    # ---- checkpoints -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        for key, module in self.state_modules().items():
            if isinstance(module, nn.Module) and not all(
                    torch.isfinite(t).all() for t in module.state_dict().values()
                    if t.is_floating_point()):
                raise UserError(f"training diverged: {key} has NaN/inf weights at step {self.step}"
                                f"; not overwriting the last checkpoint {path}; lower the "
                                "learning_rate or check the env's rewards for NaN/inf")
        rng = {"torch": torch.get_rng_state(), "numpy": self.np_rng.bit_generator.state}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        state = {
            **self.config_dict(),
            "step": self.step,
            "n_updates": self.n_updates,
            "wall_time": self.elapsed(),
            "episodes": [list(e) for e in self.episodes],
            "true_returns": list(self.true_returns),
            "modules": {k: m.state_dict() for k, m in self.state_modules().items()},
            "env": self.env.state_dict(),
            "rng": rng,
            "extra": self.extra_state(),
            "obs": self.obs,
            "metrics": {k: float(v) for k, v in self.metrics.items()},
            "last_evaluation": None if self.last_evaluation is None
            else dataclasses.asdict(self.last_evaluation),
        }
        save_checkpoint(Path(path), state)
        return Path(path)

    def load_state(self, ckpt: dict[str, Any], extra: bool = True) -> None:
        """Restore everything a checkpoint holds, for exact continuation.

        `extra=False` skips the algorithm's extra state (the replay buffer): enough to act.
        """
        if ckpt["algo"] != self.name:
            raise UserError(f"checkpoint is for {ckpt['algo']!r}, not {self.name!r}")
        problem = misfit(ckpt["obs"], self.obs, "obs")
        if problem:
            raise UserError(f"checkpoint does not fit this {self.name} run ({problem}); the file "
                            "is damaged or from another env")
        try:
            for key, module in self.state_modules().items():
                module.load_state_dict(ckpt["modules"][key])
            if extra:
                self.load_extra_state(ckpt["extra"])
            self.env.load_state_dict(ckpt["env"])
            torch.set_rng_state(ckpt["rng"]["torch"])
            if "cuda" in ckpt["rng"] and self.device.type == "cuda":
                torch.cuda.set_rng_state(ckpt["rng"]["cuda"], self.device)
            self.np_rng.bit_generator.state = ckpt["rng"]["numpy"]
        except (KeyError, IndexError, TypeError, AttributeError, RuntimeError, ValueError,
                OverflowError) as exc:
            # what the loaders of torch, NumPy and each algorithm raise on a state not their own
            detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise UserError(f"checkpoint does not fit this {self.name} configuration "
                            f"({detail}); load it with its own config") from None
        self.obs = ckpt["obs"]
        self.step, self.n_updates = ckpt["step"], ckpt["n_updates"]
        self.wall_time = float(ckpt.get("wall_time", 0.0))
        self.episodes = deque((tuple(e) for e in ckpt["episodes"]), maxlen=100)
        self.true_returns = deque(ckpt.get("true_returns", []), maxlen=100)
        self.metrics = dict(ckpt["metrics"])
        last = ckpt.get("last_evaluation")  # absent from checkpoints written before it was kept
        self.last_evaluation = None if last is None else Evaluation(**last)

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], device: str | None = None,
                        extra: bool = True) -> Algorithm:
        run, cfg = cls.checkpoint_config(ckpt)
        # a loaded model that trains again writes a new run, never into the original one
        run = dataclasses.replace(run, run_dir="", **({"device": device} if device else {}))
        algo = cls(run, cfg)
        try:
            algo.load_state(ckpt, extra)
        except UserError:
            algo.close()
            raise
        return algo

    @classmethod
    def checkpoint_config(cls, ckpt: dict[str, Any]) -> tuple[RunConfig, Any]:
        """The run and algorithm config a checkpoint (`read_checkpoint`'s) was written with,
        checked before anything is built from them: types and ranges (the configs' own checks),
        and sizes against what the file holds, so a damaged or crafted config cannot make this
        process allocate what no checkpoint of that size could need."""
        run = from_dict(RunConfig, ckpt["run"], "checkpoint run config")
        cfg = from_dict(cls.Config, ckpt["config"], f"checkpoint {cls.name} config")
        if run.n_envs != len(ckpt["env"]["envs"]):
            raise UserError(f"checkpoint config says n_envs={run.n_envs} but the file holds "
                            f"{len(ckpt['env']['envs'])} env states; it is damaged or was edited")
        # a layer of width w stores at least w numbers (its bias or its weights)
        stored = stored_numbers(ckpt["modules"])
        for key, value in to_dict(cfg).items():
            if key.endswith("hidden_sizes") and max(value, default=0) > stored:
                raise UserError(f"checkpoint config says {key}={value} but the file stores "
                                f"{stored} numbers in all; it is damaged or was edited")
        return run, cfg

    def close(self) -> None:
        self.release_run_dir()
        self.env.close()
        if self._eval_env is not None:
            self._eval_env.close()


def file_stamp(path: Path) -> tuple[int, int] | None:
    """(modification time in ns, size) of a file, None when it is missing: has it changed?"""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_mtime_ns, stat.st_size


def crossed(before: int, after: int, every: int) -> bool:
    return every > 0 and before // every != after // every


