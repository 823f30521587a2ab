"""`ctrlrl collect`: D4RL-format datasets made with the suite's own SAC.

Levels, after D4RL's recipe:
- `random`: uniformly random actions;
- `medium`: a SAC policy trained until its evaluation return reaches a third of the expert
  return (D4RL's reference expert score for the env, or `--expert-return`), then rolled out with
  its stochastic actions;
- `medium-replay`: everything that SAC run's replay buffer held when it reached that level;
- `expert`: the SAC policy after `--expert-steps` of training, rolled out likewise;
- `medium-expert`: the medium and expert datasets concatenated (both halves).

Policies are ordinary ctrlrl SAC runs under `<data dir>/policies/<env>-sac-seed<k>-<level>/`, reused
when present, so medium and medium-replay come from one training run. Each level rolled out from a
policy goes through its behaviour file (`behaviour.npz` in the run dir, see `ctrlrl.data.behaviour`):
`--policy FILE` rolls out a kept file instead of training: the rows the run's own rollout made.
Every dataset records the behaviour file and its SHA-256, the policy's training steps and
evaluation return, the collection settings and the library versions under `metadata/`, and the
env id under `metadata/env_id`, which `--dataset FILE` reads to pick the env.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctrlrl.core.errors import UserError
from ctrlrl.core.logger import Progress, format_value
from ctrlrl.data import behaviour

LEVELS = ("random", "medium", "medium-replay", "expert", "medium-expert")
# steps between a policy run's evaluations; the finer one from its first evaluation at half its
# target on, as Hopper's return can jump from a third of expert to most of it within 5000 SAC steps
COARSE_CHECK, FINE_CHECK = 5000, 1000


def _policy_run(env_id: str, seed: int, level: str, target: float | None, max_steps: int,
                progress: bool):
    """A SAC run trained to `target` evaluation return or to `max_steps`, whichever comes first;
    resumed or reused from the data dir. Checks fall on multiples of 5000 steps, of 1000 from the
    first evaluation at half the target on, so a run stopped and resumed checks where an
    uninterrupted one does. `progress`: one bar (or a line every 10 s) over the whole training,
    with each check's evaluation return."""
    from ctrlrl import api
    from ctrlrl.data import data_dir

    run_dir = data_dir() / "policies" / f"{env_id}-sac-seed{seed}-{level}"
    if (run_dir / "checkpoints" / "latest.pt").exists():
        algo = api.resume(run_dir, progress=False)
        if (run_dir / "reached.txt").exists():
            return algo, float((run_dir / "reached.txt").read_text())
    else:  # each chunk's own bar would restart at every chunk: one bar here instead
        algo = api.make("sac", env_id, seed=seed, total_steps=max_steps, eval_every=0,
                        progress=False, run_dir=str(run_dir))
    checks = run_dir / "checks.json"  # a resumed run keeps its check interval and grid
    done = json.loads(checks.read_text()) if checks.exists() else {"step": 0, "best": -np.inf}
    best, mean_return = done["best"], -np.inf
    goal = {} if target is None else {"target": format_value(target)}
    with Progress(max_steps, f"sac {level}", start=algo.step, show=progress) as bar:
        while algo.step < max_steps or algo.step != done["step"]:  # the last check included
            every = FINE_CHECK if target is not None and best >= target / 2 else COARSE_CHECK
            # a run stopped on a check's step before that check evaluates at once
            if algo.step < max_steps and (algo.step % every or algo.step == done["step"]):
                algo.learn(min((algo.step // every + 1) * every, max_steps))
            mean_return = float(algo.evaluate().mean())
            best = max(best, mean_return)
            done = {"step": algo.step, "best": best}
            checks.write_text(json.dumps(done))
            bar.update(algo.step, {"eval": format_value(mean_return), **goal})
            if target is not None and mean_return >= target:
                break
    if target is not None and mean_return < target:
        raise UserError(f"SAC on {env_id} reached {mean_return:.1f} < {target:.1f} in "
                        f"{max_steps} steps; raise --train-steps or lower --expert-return")
    (run_dir / "reached.txt").write_text(f"{mean_return}")
    return algo, mean_return


def _rollout(env_id: str, size: int, seed: int, act, progress: Progress) -> dict[str, np.ndarray]:
    """`size` transitions of one env stepped in order (episodes back to back), D4RL keys;
    `progress` is told every 1000 transitions."""
    import gymnasium as gym

    env = gym.make(env_id)
    obs_space = env.observation_space
    keys = {"observations": np.zeros((size, *obs_space.shape), np.float32),
            "next_observations": np.zeros((size, *obs_space.shape), np.float32),
            "actions": np.zeros((size, *env.action_space.shape), np.float32),
            "rewards": np.zeros(size, np.float32),
            "terminals": np.zeros(size, bool), "timeouts": np.zeros(size, bool)}
    obs, _ = env.reset(seed=seed)
    episode = 0
    for i in range(size):
        action = act(obs)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        keys["observations"][i], keys["actions"][i], keys["rewards"][i] = obs, action, reward
        keys["next_observations"][i] = next_obs
        keys["terminals"][i] = terminated
        keys["timeouts"][i] = truncated and not terminated
        obs = next_obs
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=seed + episode)
        if (i + 1) % 1000 == 0 or i + 1 == size:
            progress.update(i + 1, {"episodes": str(episode)})
    keys["timeouts"][-1] |= not keys["terminals"][-1]  # the cut-off last episode ends here
    env.close()
    return keys


def _rollout_file(env_id: str, path: str | Path, name: str, size: int, seed: int,
                  progress: bool) -> dict[str, np.ndarray]:
    """`size` transitions of a behaviour file, its noise seeded by `seed`, in a process of its own:
    a fresh one, whose BLAS can still be held to the kernels that round alike on the AMD and Intel
    CPUs tried (`behaviour.portable_blas`). It ends with the collect (Ctrl-C, SIGTERM)."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_rollout_process, daemon=True,
                          args=(send, os.getpid(), env_id, path, name, size, seed, progress))
    process.start()
    send.close()
    try:
        ok, out = receive.recv()
    except EOFError:  # it ended without a word: killed (out of memory, say)
        process.join()
        raise UserError(f"the rollout of {path} ended (exit code {process.exitcode}) before sending "
                        "its rows; if the machine ran out of memory, collect fewer (--size)") from None
    finally:
        process.kill()
        process.join()
    if not ok:
        raise out
    return out


def _rollout_process(send, parent_pid: int, env_id: str, path: str | Path, name: str, size: int,
                     seed: int, progress: bool) -> None:
    """`_rollout_file`'s process: one torch thread (as the SAC run acted: the rows must not depend
    on the core count); sends (True, rows) or (False, the exception)."""
    from ctrlrl.core.signals import wait_while_parent

    behaviour.portable_blas()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the collect's to handle: it ends this

    def orphaned() -> None:  # the collect was killed: do not roll out for no one
        wait_while_parent(parent_pid)
        os._exit(1)

    threading.Thread(target=orphaned, daemon=True).start()
    torch.set_num_threads(1)
    try:
        policy = behaviour.load(path)  # building the actor draws from torch's generator: seed after
        torch.manual_seed(seed)
        with Progress(size, f"record {name}", "transitions", show=progress) as bar:
            out = True, _rollout(env_id, size, seed + 1_000_000, policy.act, bar)
    except Exception as exc:  # the collect reports it
        out = False, exc
    send.send(out)


def replay_dataset(algo) -> dict[str, np.ndarray]:
    """A SAC run's replay buffer as D4RL keys; episode ends are where a row's next observation is
    not the following row's observation (one env, stepped in order)."""
    from ctrlrl.data import episode_ends

    rows = algo.replay.storage[: algo.replay.size].cpu().numpy()
    o, a = algo.obs_dim, algo.act_dim
    obs, actions, rewards = rows[:, :o], rows[:, o:o + a], rows[:, o + a]
    next_obs, terminals = rows[:, o + a + 1:2 * o + a + 1], rows[:, -1] > 0.5
    ends = episode_ends(obs, next_obs, terminals)
    return {"observations": obs, "next_observations": next_obs,
            "actions": algo.to_env_action(actions).astype(np.float32),
            "rewards": rewards, "terminals": terminals, "timeouts": ends & ~terminals}


def behaviour_file(algo, level: str, reached: float) -> Path:
    """The behaviour file of a policy run, written beside its checkpoints."""
    import gymnasium
    import mujoco

    space = algo.env.action_space
    return behaviour.export(algo.actor, space.low, space.high, Path(algo.run_dir) / "behaviour.npz",
                            {"env_id": algo.run.env, "level": level, "steps": algo.step,
                             "eval_return": reached, "mujoco": mujoco.__version__,
                             "gymnasium": gymnasium.__version__})


def collect(env_id: str, level: str, output: str | Path, size: int = 1_000_000, seed: int = 0,
            train_steps: int = 1_000_000, expert_steps: int = 1_000_000,
            expert_return: float | None = None, progress: bool = True,
            policy: str | Path | None = None) -> dict[str, Any]:
    """Write one D4RL-format dataset; returns its metadata. `policy`: a behaviour file to roll out
    (medium or expert) instead of training SAC."""
    import gymnasium
    import mujoco

    from ctrlrl.core.envs import check_env_id
    from ctrlrl.data import episode_returns, reference_scores, write_d4rl

    check_env_id(env_id)
    if level not in LEVELS:
        raise UserError(f"--level {level!r} is not known; use one of {', '.join(LEVELS)}")
    if size < 1:
        raise UserError(f"--size {size}: collect at least one transition")
    if policy is not None and level not in ("medium", "expert"):
        raise UserError(f"--policy rolls out one policy: it makes the medium or expert level, not "
                        f"{level}; drop --policy or use --level medium or expert")
    refs = reference_scores(env_id)
    expert = expert_return if expert_return is not None else (refs[1] if refs else None)
    meta: dict[str, Any] = {"env_id": env_id, "level": level, "seed": seed, "generator": "ctrlrl collect",
                            "mujoco": mujoco.__version__, "gymnasium": gymnasium.__version__}

    def medium_run():
        if expert is None:
            raise UserError(f"{env_id} has no D4RL reference score; pass --expert-return R "
                            "(medium = a policy at a third of R)")
        return _policy_run(env_id, seed, "medium", expert / 3, train_steps, progress)

    def from_file(path: str | Path, name: str) -> dict[str, np.ndarray]:
        """`size` transitions of a behaviour file (`_rollout_file`)."""
        policy = behaviour.load(path)
        if policy.meta.get("env_id") != env_id:
            raise UserError(f"--policy {path} is a policy for {policy.meta.get('env_id')}, not "
                            f"{env_id}; pass --env {policy.meta.get('env_id')} or another file")
        keys = _rollout_file(env_id, path, name, size, seed, progress)
        meta.update({f"{name}_policy": str(path), f"{name}_policy_sha256": behaviour.file_digest(path),
                     f"{name}_policy_steps": policy.meta["steps"],
                     f"{name}_policy_eval_return": policy.meta["eval_return"]})
        return keys

    def from_policy(algo, reached: float, name: str) -> dict[str, np.ndarray]:
        return from_file(behaviour_file(algo, name, reached), name)

    if level == "random":
        rng = np.random.default_rng(seed)
        import gymnasium as gym

        space = gym.make(env_id).action_space
        with Progress(size, "record random", "transitions", show=progress) as bar:
            data = _rollout(env_id, size, seed, lambda _: rng.uniform(space.low, space.high)
                            .astype(np.float32), bar)
    elif policy is not None:
        data = from_file(policy, level)
    elif level == "medium":
        data = from_policy(*medium_run(), "medium")
    elif level == "medium-replay":
        algo, reached = medium_run()
        data = replay_dataset(algo)
        meta.update({"medium_policy": str(algo.run_dir), "medium_policy_steps": algo.step,
                     "medium_policy_eval_return": reached})
    elif level == "expert":
        data = from_policy(*_policy_run(env_id, seed, "expert", None, expert_steps, progress),
                           "expert")
    else:  # medium-expert
        medium = from_policy(*medium_run(), "medium")
        expert_data = from_policy(*_policy_run(env_id, seed, "expert", None, expert_steps, progress),
                                  "expert")
        data = {k: np.concatenate([medium[k], expert_data[k]]) for k in medium}
    returns = episode_returns(data)
    meta.update({"transitions": len(data["rewards"]), "episodes": len(returns),
                 "episode_return_mean": float(returns.mean()) if len(returns) else float("nan"),
                 "episode_return_std": float(returns.std()) if len(returns) else float("nan")})
    write_d4rl(output, {**data, **{f"metadata/{k}": v for k, v in meta.items()}})
    return meta
