"""Offline gradient steps per second of ctrlrl's td3bc vs d3rlpy 2.8.1's TD3+BC, alternately in one run.

    python benchmarks/offline_speed.py --dataset hopper-medium-v2.hdf5
    python benchmarks/offline_speed.py --dataset data.hdf5 --steps 5000 --warmup 500 --repeats 5
    python benchmarks/offline_speed.py --dataset data.hdf5 --device cuda
    python benchmarks/offline_speed.py --dataset data.hdf5 --precision fp32,bf16 --also a2pr,odice

d3rlpy 2.8.1 pins gymnasium 1.0.0, so it lives in its own venv (see benchmarks/d3rlpy_td3bc.py for
the install line) and is timed in a subprocess of that venv's python; ctrlrl is timed in this
process. Repeats alternate ctrlrl, d3rlpy, ctrlrl, d3rlpy, ... so drift in machine load hits both
alike; each repeat builds a fresh learner. Both read the same D4RL-format file, use the same batch
size, seed, torch thread count and device, and the TD3+BC paper's settings (d3rlpy's are set in
d3rlpy_td3bc.py; ctrlrl's are its td3bc defaults). Each side first takes --warmup gradient steps
untimed, then the figure is --steps / wall time of the next --steps gradient steps, batch sampling
included (on CUDA, synchronised at the end). Evaluation, checkpoints, logging and progress bars are
off on both sides. `--precision` sets ctrlrl's (d3rlpy runs float32); a list times each
algorithm in each precision, alternating with the rest. Writes a markdown table to stdout (and to
--out if given).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from speed import cpu_name  # benchmarks/ is on sys.path when a script here runs

ROOT = Path(__file__).resolve().parents[1]
D3RLPY_SCRIPT = Path(__file__).resolve().with_name("d3rlpy_td3bc.py")


def ctrlrl_steps_per_s(dataset: str, steps: int, warmup: int, batch_size: int, threads: int,
                       device: str, seed: int, algo_name: str = "td3bc",
                       precision: str = "auto") -> tuple[float, str]:
    """A ctrlrl offline algorithm's gradient steps/s, in this process (its default networks),
    and the precision it ran in (`auto` resolved); one gradient step per train_iteration."""
    import torch

    import ctrlrl
    from ctrlrl.data import dataset_env

    with tempfile.TemporaryDirectory(prefix="ctrlrl-offline-speed-") as run_dir:
        algo = ctrlrl.make(algo_name, env=dataset_env(dataset) or "Hopper-v5",
                           overrides={"dataset": dataset, "batch_size": batch_size,
                                      "eval_every": 0, "checkpoint_every": 0, "progress": False,
                                      "tensorboard": False, "threads": threads, "device": device,
                                      "precision": precision},
                           seed=seed, total_steps=warmup + steps, run_dir=run_dir)
        algo.load_dataset()  # what learn() does first
        cuda = str(device).startswith("cuda")
        for _ in range(warmup):
            algo.train_iteration()
        if cuda:
            torch.cuda.synchronize()
        first = algo.step
        start = time.perf_counter()
        for _ in range(steps):
            algo.train_iteration()
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        if algo.step - first != steps:
            raise SystemExit(f"ctrlrl {algo_name} advanced {algo.step - first} steps in {steps} "
                             "train_iteration calls: expected one gradient step per call")
    return steps / seconds, algo.run.precision


def d3rlpy_run(python: str, dataset: str, steps: int, warmup: int, batch_size: int, threads: int,
               device: str, seed: int) -> dict:
    """d3rlpy's JSON line from a fresh subprocess of the d3rlpy venv."""
    cmd = [python, str(D3RLPY_SCRIPT), "--dataset", dataset, "--steps", str(steps),
           "--warmup", str(warmup), "--batch-size", str(batch_size), "--threads", str(threads),
           "--device", device, "--seed", str(seed)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _d3rlpy_python(arg: str) -> str:
    path = Path(arg)
    if not path.is_absolute() and not path.exists():
        path = ROOT / path  # the default is relative to the repo root
    if not path.exists():
        raise SystemExit(f"--d3rlpy-python {arg}: not found; create the venv as described in "
                         f"{D3RLPY_SCRIPT.relative_to(ROOT)}")
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="D4RL-format .hdf5 file")
    parser.add_argument("--steps", type=int, default=2000, help="timed gradient steps")
    parser.add_argument("--warmup", type=int, default=200, help="untimed gradient steps first")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (both sides)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--d3rlpy-python", default=".venv-d3rlpy/bin/python",
                        help="python of the d3rlpy 2.8.1 venv (relative: to the repo root)")
    parser.add_argument("--also", default="",
                        help="more ctrlrl offline algorithms to time alongside, e.g. a2pr,odice")
    parser.add_argument("--precision", default="auto",
                        help="ctrlrl's precision: auto | fp32 | bf16, or a list: fp32,bf16")
    parser.add_argument("--out")
    args = parser.parse_args()
    also = [a for a in args.also.split(",") if a]
    precisions = args.precision.split(",")
    # each timed ctrlrl learner: (row label, algorithm, precision)
    learners = [(f"{name}" + (f" {p}" if p != "auto" else ""), name, p)
                for name in ["td3bc", *also] for p in precisions]
    td3bc_rows = [label for label, name, _ in learners if name == "td3bc"]

    python = _d3rlpy_python(args.d3rlpy_python)
    dataset = str(Path(args.dataset).resolve())
    common = (dataset, args.steps, args.warmup, args.batch_size, args.threads, args.device,
              args.seed)
    load = os.getloadavg()[0]
    fps: dict[str, list[float]] = {"d3rlpy": [], **{label: [] for label, _, _ in learners}}
    d3rlpy_update: list[float] = []
    ran: dict[str, str] = {}  # the precision each ctrlrl learner ran in
    d3rlpy_info: dict = {}
    for _ in range(args.repeats):
        for label, name, precision in learners:
            rate, ran[label] = ctrlrl_steps_per_s(*common, algo_name=name, precision=precision)
            fps[label].append(rate)
            if label == td3bc_rows[-1]:  # d3rlpy right after ctrlrl's td3bc
                d3rlpy_info = d3rlpy_run(python, *common)
                fps["d3rlpy"].append(d3rlpy_info["steps_per_s"])
                d3rlpy_update.append(d3rlpy_info["update_steps_per_s"])

    import torch

    import ctrlrl

    med = {k: statistics.median(v) for k, v in fps.items()}
    versions = {"ctrlrl": getattr(ctrlrl, "__version__", "dev"),
                "d3rlpy": d3rlpy_info.get("version", "?")}
    torches = {"ctrlrl": torch.__version__, "d3rlpy": d3rlpy_info.get("torch", "?")}
    threads = f"{args.threads} torch thread{'s' if args.threads > 1 else ''} per process"
    lines = [f"machine: {platform.processor() or platform.machine()}, {cpu_name()}, "
             f"{os.cpu_count()} logical CPUs, load average {load:.2f} at start, "
             f"python {platform.python_version()}, {threads}, device {args.device}",
             f"command: python benchmarks/offline_speed.py --dataset {args.dataset} "
             f"--steps {args.steps} --warmup {args.warmup} --batch-size {args.batch_size} "
             f"--threads {args.threads} --device {args.device} --seed {args.seed} "
             f"--repeats {args.repeats}" + (f" --also {args.also}" if also else "")
             + (f" --precision {args.precision}" if args.precision != "auto" else ""),
             f"dataset: {dataset} ({d3rlpy_info.get('transitions', '?')} transitions as d3rlpy "
             "samples them)", "",
             "| learner | precision | version | torch | batch | timed steps | steps/s (median) "
             "| vs d3rlpy td3bc | per-repeat steps/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    # (library, fps key, precision); d3rlpy's row after ctrlrl's td3bc rows
    rows = [("ctrlrl", label, ran[label]) for label, _, _ in learners]
    rows.insert(len(td3bc_rows), ("d3rlpy", "d3rlpy", "fp32"))
    for lib, key, precision in rows:
        rate = fps[key]
        title = "d3rlpy td3bc" if lib == "d3rlpy" else f"ctrlrl {key}"
        digits = 0 if min(rate) >= 100 else 1
        lines.append(f"| {title} | {precision} | {versions[lib]} | {torches[lib]} | "
                     f"{args.batch_size} | {args.steps} | {statistics.median(rate):.{digits}f} | "
                     f"{statistics.median(rate) / med['d3rlpy']:.2f}x | "
                     + ", ".join(f"{x:.{digits}f}" for x in rate) + " |")
    update_rate = statistics.median(d3rlpy_update)
    lines += ["", f"d3rlpy's update calls alone (without its per-transition batch sampling): "
              f"median {update_rate:.0f} steps/s (ctrlrl / that: "
              + ", ".join(f"{label} {med[label] / update_rate:.2f}x" for label in td3bc_rows) + ")"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
