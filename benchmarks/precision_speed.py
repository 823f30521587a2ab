"""One gradient step in fp32 and in bf16 (and stable-baselines3's, for SAC and TD3), alternating.

    python benchmarks/precision_speed.py                          # sac,td3,td3bc,a2pr,odice
    python benchmarks/precision_speed.py --algos sac,td3 --updates 15 --rounds 7
    python benchmarks/precision_speed.py --algos td3bc --dataset data.hdf5

Each learner is built once, with its default networks on Hopper-v5 (TD3 with stable-baselines3's
400-300 and learning rate 1e-3, as in benchmarks/speed.py), batch 256, one torch thread. Online
learners get a replay buffer of random rows (the update's cost does not depend on the values);
offline ones load --dataset (default: a 20,000-row random-action Hopper file written once).
Each round times --updates calls of `update(replay.sample(256))` per precision — the same learner,
its networks switched with `set_compute_dtype` — and, for SAC and TD3, stable-baselines3's
`train(gradient_steps=--updates)` on a buffer of 600 real transitions. Figures are ms per gradient
step, medians over rounds. Writes a markdown table to stdout (and to --out if given).

The floor columns say what the matrix multiplies alone cost: an update's FLOPs (counted by
`torch.utils.flop_counter`, averaged over two updates for TD3's delayed actor) at the rate this
core runs a 256×256×256 matmul in that precision. No update of the same networks and batch can be
faster than its floor, whatever else is removed.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from speed import cpu_name  # benchmarks/ is on sys.path when a script here runs

ONLINE = {"sac": {}, "td3": {"hidden_sizes": [400, 300], "learning_rate": 1e-3}}
DEFAULT_DATA = Path(tempfile.gettempdir()) / "ctrlrl-precision-speed" / "hopper-random.hdf5"


def learner(algo: str, dataset: str):
    import ctrlrl
    from ctrlrl.data.collect import collect

    quiet = {"eval_every": 0, "checkpoint_every": 0, "progress": False, "tensorboard": False}
    if algo in ONLINE:
        model = ctrlrl.make(algo, "Hopper-v5", {**quiet, **ONLINE[algo], "learning_starts": 10,
                                                "buffer_size": 10_000},
                            run_dir=tempfile.mkdtemp(), total_steps=10**6)
        model.replay.storage.normal_()
        model.replay.size = model.replay.capacity
        return model
    if not Path(dataset).exists():
        collect("Hopper-v5", "random", Path(dataset), size=20_000, seed=0, progress=False)
    model = ctrlrl.make(algo, "Hopper-v5", {**quiet, "dataset": dataset},
                        run_dir=tempfile.mkdtemp(), total_steps=10**6)
    model.load_dataset()
    return model


def sb3_learner(algo: str):
    import gymnasium as gym
    from stable_baselines3 import SAC, TD3

    model = {"sac": SAC, "td3": TD3}[algo]("MlpPolicy", gym.make("Hopper-v5"), seed=0,
                                           device="cpu", verbose=0, learning_starts=100)
    model.learn(600)
    torch.set_num_threads(1)
    return model


def ms_per_step(model, precision: str, n: int) -> float:
    """Milliseconds per gradient step of `n` updates with the networks in `precision`."""
    from ctrlrl.core.nets import COMPUTE_DTYPES, set_compute_dtype

    for module in model.state_modules().values():
        if isinstance(module, torch.nn.Module):
            set_compute_dtype(module, COMPUTE_DTYPES[precision])
    start = time.perf_counter()
    for _ in range(n):
        model.metrics |= model.update(model.replay.sample(256))
        model.n_updates += 1
    return (time.perf_counter() - start) / n * 1e3


def mflop_per_update(model) -> float:
    """Mean MFLOP of two consecutive updates (TD3 updates its actor every other one)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        for _ in range(2):
            model.update(model.replay.sample(256))
            model.n_updates += 1
    return counter.get_total_flops() / 2 / 1e6


def matmul_gflops(dtype: torch.dtype, n: int = 256, repeats: int = 400) -> float:
    """This core's rate on an n×n×n matmul in `dtype` (best of three timings)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(20):
        a @ b
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * n**3 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", default="sac,td3,td3bc,a2pr,odice")
    parser.add_argument("--updates", type=int, default=20, help="timed gradient steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dataset", default=str(DEFAULT_DATA), help="offline learners' data")
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [f"machine: {cpu_name()}, 1 torch thread, batch 256, Hopper-v5",
             f"command: python benchmarks/precision_speed.py --algos {args.algos} "
             f"--updates {args.updates} --rounds {args.rounds}", "",
             "| learner | fp32 ms | bf16 ms | bf16 speed-up | sb3 ms | fp32 / sb3 | bf16 / sb3 "
             "| MFLOP | fp32 floor ms | bf16 floor ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    rates = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    lines[0] += (f"; a 256³ matmul runs at {rates['fp32']:.0f} GFLOP/s in fp32, "
                 f"{rates['bf16']:.0f} in bf16")
    for algo in args.algos.split(","):
        model = learner(algo, args.dataset)
        reference = sb3_learner(algo) if algo in ONLINE else None
        ms: dict[str, list[float]] = {"fp32": [], "bf16": [], "sb3": []}
        for precision in ("fp32", "bf16"):  # untimed: first calls allocate
            ms_per_step(model, precision, 2)
        mflop = mflop_per_update(model)
        for _ in range(args.rounds):
            for precision in ("fp32", "bf16"):
                ms[precision].append(ms_per_step(model, precision, args.updates))
            if reference is not None:
                start = time.perf_counter()
                reference.train(gradient_steps=args.updates, batch_size=256)
                ms["sb3"].append((time.perf_counter() - start) / args.updates * 1e3)
        med = {k: statistics.median(v) for k, v in ms.items() if v}
        sb3 = (f"{med['sb3']:.2f} | {med['sb3'] / med['fp32']:.2f}x | {med['sb3'] / med['bf16']:.2f}x"
               if "sb3" in med else "| |")
        lines.append(f"| {algo} | {med['fp32']:.2f} | {med['bf16']:.2f} | "
                     f"{med['fp32'] / med['bf16']:.2f}x | {sb3} | {mflop:.0f} | "
                     f"{mflop / rates['fp32']:.2f} | {mflop / rates['bf16']:.2f} |")
        print(lines[-1], file=sys.stderr, flush=True)  # progress; the table goes to stdout
        model.close()
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
