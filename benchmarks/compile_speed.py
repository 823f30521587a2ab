"""Whole-update `torch.compile` (`compile: step`) against the eager update, alternating, on one device.

    python benchmarks/compile_speed.py --algos td3,sac,odice --rounds 6
    python benchmarks/compile_speed.py --algos td3 --device cuda --updates 500

One learner per algorithm (Hopper-v5, default networks; SAC, TD3: a buffer of 2000 random
transitions; offline learners: a generated 20k-transition random Hopper dataset). Its eager
`update` and the compiled one are timed in turns on the same learner, `--updates` minibatches each
per round, one torch thread; the table gives the medians and their ratio. The compiled update
draws eager's random numbers, so both arms do the same work.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from speed import cpu_name  # benchmarks/ is on sys.path when a script here runs

import ctrlrl
from ctrlrl.core.compiled_step import training_step
from ctrlrl.data.collect import collect

OFFLINE = ("td3bc", "a2pr", "odice")
QUIET = {"progress": False, "tensorboard": False, "eval_every": 0, "checkpoint_every": 0}


def learner_for(algo: str, device: str, dataset: Path, run_dir: str):
    overrides = {**QUIET, "device": device, "threads": 1}
    if algo in OFFLINE:
        overrides["dataset"] = str(dataset)
    else:
        overrides["learning_starts"] = 2000
    learner = ctrlrl.make(algo, env="Hopper-v5", overrides=overrides, seed=0,
                          total_steps=10**8, run_dir=run_dir)
    if algo in OFFLINE:
        learner.load_dataset()
    else:
        while learner.step < 1999:  # random warm-up: fills the buffer, no update yet
            learner.train_iteration()
    return learner


def seconds_per_update(learner, step, updates: int) -> float:
    sync = torch.cuda.synchronize if learner.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(updates):
        step(learner.replay.sample(learner.cfg.batch_size))
        learner.n_updates += 1
    sync()
    return (time.perf_counter() - start) / updates


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algos", default="td3,sac,odice")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--updates", type=int, default=100, help="updates per arm and round")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ctrlrl-compile-speed-") as tmp:
        dataset = Path(tmp) / "hopper-random.hdf5"
        if set(args.algos.split(",")) & set(OFFLINE):
            collect("Hopper-v5", "random", dataset, size=20000, seed=0, progress=False)
        for algo in args.algos.split(","):
            learner = learner_for(algo, args.device, dataset, f"{tmp}/{algo}")
            compiled = training_step(learner, "step")
            start = time.perf_counter()
            seconds_per_update(learner, compiled, 4)  # the build, both of TD3's branches
            build = time.perf_counter() - start
            eager, step = [], []
            for _ in range(args.rounds):
                eager.append(seconds_per_update(learner, learner.update, args.updates))
                step.append(seconds_per_update(learner, compiled, args.updates))
            e, s = statistics.median(eager), statistics.median(step)
            ratios = ", ".join(f"{a / b:.2f}" for a, b in zip(eager, step, strict=True))
            rows.append(f"| {algo} | {e * 1e3:.2f} | {s * 1e3:.2f} | {e / s:.2f}x | {ratios} | "
                        f"{build:.0f} |")
            print(rows[-1], flush=True)
            learner.close()
            torch._dynamo.reset()  # compiled code is guarded on its learner
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_name()
    print(f"\n{device}, 1 torch thread, torch {torch.__version__}; Hopper-v5, default networks; "
          f"{args.rounds} alternating rounds of {args.updates} updates per arm\n")
    print("| algo | eager ms/update | step ms/update | speed-up (medians) | per round | build s |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
