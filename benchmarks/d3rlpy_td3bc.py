"""Gradient steps per second of d3rlpy 2.8.1's TD3+BC on a D4RL-format file (the offline reference).

Runs only with the separate d3rlpy venv (d3rlpy 2.8.1 pins gymnasium 1.0.0, so it never goes into
the project's .venv):

    python3 -m venv .venv-d3rlpy
    .venv-d3rlpy/bin/pip install torch==2.13.0 d3rlpy==2.8.1 gymnasium==1.0.0 h5py
    .venv-d3rlpy/bin/python benchmarks/d3rlpy_td3bc.py --dataset hopper.hdf5 --steps 2000

The file holds observations, actions, rewards, terminals, timeouts (next_observations is ignored,
as d3rlpy's own `get_d4rl` does: an episode ends where terminals or timeouts is set, and the last
row of an episode cut by a timeout has no next observation so it is not sampled).
Settings are the TD3+BC paper's (Fujimoto & Gu 2021): actor and critic lr 3e-4 (Adam), batch 256,
alpha 2.5, 256-256 ReLU nets, two critics, gamma 0.99, tau 0.005, target smoothing sigma 0.2 clip
0.5, actor updated every 2nd step, observations standardised (d3rlpy's StandardObservationScaler).

Timed loop: `dataset.sample_transition_batch(batch_size)` then `algo.update(batch)`, exactly the
body of d3rlpy's `fit` loop minus its logger, progress bar and evaluators. `update` is public
API (`QLearningAlgoBase.update`); the models are built first with `algo.build_with_dataset`.
Warmup steps run the same loop untimed. Prints one JSON line to stdout; `seconds` covers sampling
and update (what a step costs in `fit`), `update_seconds` the update calls alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings


def load_dataset(path: str):
    import h5py
    import numpy as np
    from d3rlpy.dataset import MDPDataset

    with h5py.File(path, "r") as f:
        obs = np.asarray(f["observations"], dtype=np.float32)
        actions = np.asarray(f["actions"], dtype=np.float32)
        rewards = np.asarray(f["rewards"], dtype=np.float32).reshape(-1)
        terminals = np.asarray(f["terminals"]).reshape(-1).astype(bool)
        timeouts = (np.asarray(f["timeouts"]).reshape(-1).astype(bool) if "timeouts" in f
                    else np.zeros_like(terminals))
    # d3rlpy asserts the two flags never coincide: a true terminal wins (D4RL semantics)
    timeouts &= ~terminals
    # rows after the last end would be dropped silently: close them as a timeout
    if not (terminals[-1] or timeouts[-1]):
        timeouts[-1] = True
    dataset = MDPDataset(observations=obs, actions=actions, rewards=rewards,
                         terminals=terminals.astype(np.float32),
                         timeouts=timeouts.astype(np.float32))
    # the rows d3rlpy samples as transitions: all but the last row of each timeout-ended episode
    sampled = np.ones(len(obs), bool)
    sampled[timeouts] = False
    return dataset, obs[sampled]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="D4RL-format .hdf5 file")
    parser.add_argument("--steps", type=int, default=2000, help="timed gradient steps")
    parser.add_argument("--warmup", type=int, default=200, help="untimed gradient steps first")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    import d3rlpy
    import structlog
    from d3rlpy.algos import TD3PlusBCConfig
    from d3rlpy.models.encoders import VectorEncoderFactory
    from d3rlpy.optimizers import AdamFactory
    from d3rlpy.preprocessing import StandardObservationScaler

    # d3rlpy logs its info lines to stdout: send them to stderr, stdout is the JSON line alone
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    d3rlpy.seed(args.seed)
    dataset, sampled_obs = load_dataset(args.dataset)
    # the same mean/std as StandardObservationScaler.fit_with_transition_picker (the mean over the
    # sampled transitions' observations), computed vectorised rather than in its per-row Python loop
    mean = sampled_obs.mean(axis=0, dtype=np.float64)
    std = np.sqrt(((sampled_obs - mean) ** 2).mean(axis=0))
    device = "cuda:0" if args.device == "cuda" else args.device
    config = TD3PlusBCConfig(
        actor_learning_rate=3e-4, critic_learning_rate=3e-4,
        actor_optim_factory=AdamFactory(), critic_optim_factory=AdamFactory(),
        actor_encoder_factory=VectorEncoderFactory(hidden_units=[256, 256], activation="relu"),
        critic_encoder_factory=VectorEncoderFactory(hidden_units=[256, 256], activation="relu"),
        batch_size=args.batch_size, gamma=0.99, tau=0.005, n_critics=2,
        target_smoothing_sigma=0.2, target_smoothing_clip=0.5, alpha=2.5,
        update_actor_interval=2,
        observation_scaler=StandardObservationScaler(mean=mean, std=std),
        compile_graph=False,
    )
    algo = config.create(device=device)
    algo.build_with_dataset(dataset)
    cuda = device.startswith("cuda")

    for _ in range(args.warmup):
        algo.update(dataset.sample_transition_batch(args.batch_size))
    if cuda:
        torch.cuda.synchronize()

    update_s = 0.0
    clock = time.perf_counter
    start = clock()
    for _ in range(args.steps):
        batch = dataset.sample_transition_batch(args.batch_size)
        t = clock()
        algo.update(batch)  # returns the losses as floats (.item()): synchronises every step
        update_s += clock() - t
    if cuda:
        torch.cuda.synchronize()
    seconds = clock() - start

    print(json.dumps({
        "library": "d3rlpy", "version": d3rlpy.__version__, "algo": "td3_plus_bc",
        "api": "build_with_dataset + sample_transition_batch + update",
        "steps": args.steps, "warmup": args.warmup, "seconds": round(seconds, 4),
        "steps_per_s": round(args.steps / seconds, 2),
        "update_seconds": round(update_s, 4),
        "update_steps_per_s": round(args.steps / update_s, 2),
        "batch_size": args.batch_size, "threads": args.threads, "device": args.device,
        "transitions": dataset.transition_count, "torch": torch.__version__,
    }), flush=True)


if __name__ == "__main__":
    main()
