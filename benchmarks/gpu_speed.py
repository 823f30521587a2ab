"""Update speed on CUDA beside the CPU, and whether an update waits on the host.

    python benchmarks/gpu_speed.py --out docs/speed-gpu.md
    python benchmarks/gpu_speed.py --algos sac,td3 --steps 500

For each algorithm with its default networks on Hopper-v5: gradient steps/s of its update on a
filled buffer (SAC, TD3: 5000 random transitions; TD3+BC, A2PR, O-DICE: a generated 20k-transition
random Hopper dataset), and env steps/s of PPO's train iterations (collection + update). The CPU
column uses one torch thread. "Host syncs" runs one update under
`torch.cuda.set_sync_debug_mode("error")` and names the first operation that made the host wait on
the GPU (a `.item()`, a data-dependent shape, a CPU-side RNG draw...), or "none".
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from speed import cpu_name  # benchmarks/ is on sys.path when a script here runs

import ctrlrl
from ctrlrl.data.collect import collect

OFFLINE = ("td3bc", "a2pr", "odice")
QUIET = {"progress": False, "tensorboard": False, "eval_every": 0, "checkpoint_every": 0}


def build(algo: str, device: str, dataset: Path, run_dir: str):
    overrides = {**QUIET, "device": device, "threads": 1}
    if algo in OFFLINE:
        overrides["dataset"] = str(dataset)
    elif algo in ("sac", "td3"):
        overrides["learning_starts"] = 5000
    learner = ctrlrl.make(algo, env="Hopper-v5", overrides=overrides, seed=0,
                          total_steps=10**7, run_dir=run_dir)
    if algo in OFFLINE:
        learner.load_dataset()
    elif algo in ("sac", "td3"):
        while learner.step < 5000:  # random warm-up: fills the buffer, no update yet
            learner.train_iteration()
    return learner


def one_update(learner, algo: str):
    if algo in OFFLINE or algo == "ppo":
        return learner.train_iteration
    return lambda: learner.update(learner.replay.sample(learner.cfg.batch_size))


def rate(learner, algo: str, steps: int, device: str) -> float:
    step = one_update(learner, algo)
    per_call = learner.run.n_envs * learner.cfg.n_steps if algo == "ppo" else 1
    calls = max(1, steps // per_call)
    step()  # warm-up: lazy initialisation, cuBLAS handles
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return calls * per_call / (time.perf_counter() - start)


def first_sync(learner, algo: str) -> str:
    if algo == "ppo":
        return "n/a (collection acts on the host)"
    step = one_update(learner, algo)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        return "none"
    except RuntimeError as e:
        return str(e).splitlines()[0][:90]
    finally:
        torch.cuda.set_sync_debug_mode("default")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algos", default="ppo,sac,td3,td3bc,a2pr,odice")
    p.add_argument("--steps", type=int, default=300, help="timed gradient steps (PPO: ×100 env steps)")
    p.add_argument("--out")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_speed.py: no CUDA device here")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ctrlrl-gpu-speed-") as tmp:
        dataset = Path(tmp) / "hopper-random.hdf5"
        collect("Hopper-v5", "random", dataset, size=20000, seed=0, progress=False)
        for algo in args.algos.split(","):
            steps = args.steps * 100 if algo == "ppo" else args.steps
            result = {}
            for device in ("cpu", "cuda"):
                learner = build(algo, device, dataset, f"{tmp}/{algo}-{device}")
                result[device] = rate(learner, algo, steps, device)
                if device == "cuda":
                    result["sync"] = first_sync(learner, algo)
                learner.close()
            unit = "env steps/s" if algo == "ppo" else "gradient steps/s"
            rows.append(f"| {algo} | {unit} | {result['cpu']:.0f} | {result['cuda']:.0f} | "
                        f"{result['cuda'] / result['cpu']:.2f}x | {result['sync']} |")
            print(rows[-1], flush=True)
    lines = [f"GPU: {torch.cuda.get_device_name()}; CPU: {cpu_name()} (1 torch thread); torch "
             f"{torch.__version__}; Python {platform.python_version()}; fp32, eager; Hopper-v5, "
             "default networks and batch sizes", "",
             "| Algorithm | Unit | CPU | CUDA | CUDA / CPU | Host syncs in one update |",
             "|---|---|---|---|---|---|", *rows]
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
