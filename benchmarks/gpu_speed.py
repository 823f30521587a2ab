"""Update speed on one CUDA device: fp32 / bf16 × eager / compiled / graphed, beside one CPU core.

    python benchmarks/gpu_speed.py --out docs/speed-gpu.md
    python benchmarks/gpu_speed.py --algos sac,td3 --modes eager,graph --steps 500
    python benchmarks/gpu_speed.py --device cpu --modes eager --steps 20 --out /tmp/t.md   (no GPU)

For each algorithm with its default networks on Hopper-v5: gradient steps/s of its training step
on a filled buffer (SAC, TD3: 5000 random transitions; TD3+BC, A2PR, O-DICE: a generated
20k-transition random Hopper dataset), timed as the training loop takes it (sample a minibatch,
`train_step`); PPO: env steps/s of whole train iterations (collection + update). Modes are the
run setting `compile` (eager | step | graph), precisions the run setting `precision`. A cell a mode
cannot run (graph for on-policy PPO) reads "n/a". The CPU column is eager fp32 on one
torch thread. "Host syncs" runs eager fp32 updates under `torch.cuda.set_sync_debug_mode("error")`
and names the first operation that made the host wait for the GPU, or "none".
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
from ctrlrl.core.errors import UserError
from ctrlrl.data.collect import collect

ALGOS = ("ppo", "sac", "td3", "td3bc", "a2pr", "odice")
OFFLINE = ("td3bc", "a2pr", "odice")
TABLE_MARKS = ("<!-- table: benchmarks/gpu_speed.py -->", "<!-- end of table -->")
REPLAY_FILL = 5000  # random transitions in SAC's and TD3's buffer before timing
QUIET = {"progress": False, "tensorboard": False, "eval_every": 0, "checkpoint_every": 0}


def build(algo: str, device: str, mode: str, precision: str, dataset: Path, run_dir: str):
    """The learner ready to time, or a UserError when the run settings refuse this cell."""
    # compiled code is cached per function and guarded on the learner: many learners of one class
    # in a process would reach torch.compile's recompile limit and fall back to eager
    torch._dynamo.reset()
    overrides = {**QUIET, "device": device, "threads": 1, "compile": mode, "precision": precision}
    if algo in OFFLINE:
        overrides["dataset"] = str(dataset)
    elif algo != "ppo":
        overrides["learning_starts"] = REPLAY_FILL
    learner = ctrlrl.make(algo, env="Hopper-v5", overrides=overrides, seed=0,
                          total_steps=10**8, run_dir=run_dir)
    if algo in OFFLINE:
        learner.load_dataset()
    elif algo != "ppo":
        while learner.step < REPLAY_FILL:  # random warm-up: fills the buffer, no update yet
            learner.train_iteration()
    return learner


def training_step(learner, algo: str):
    """One call of what is timed: a train iteration (PPO, offline) or the loop's gradient step."""
    if algo == "ppo" or algo in OFFLINE:
        return learner.train_iteration

    def gradient_step():
        learner.metrics |= learner.train_step(learner.replay.sample(learner.cfg.batch_size))
        learner.n_updates += 1

    return gradient_step


def rate(learner, algo: str, calls: int, warmup: int) -> float:
    """Steps per second (PPO: env steps) over `calls` timed calls after `warmup` untimed ones
    (torch.compile's build, the eager updates before a graph capture, cuBLAS handles)."""
    step = training_step(learner, algo)
    per_call = learner.run.n_envs * learner.cfg.n_steps if algo == "ppo" else 1
    for _ in range(warmup):
        step()
    cuda = learner.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        step()
    if cuda:
        torch.cuda.synchronize()
    return calls * per_call / (time.perf_counter() - start)


def first_sync(learner, algo: str) -> str:
    """The first host synchronisation in a few eager updates, or "none"."""
    if algo == "ppo":
        return "n/a (collection acts on the host)"
    step = training_step(learner, algo)
    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(4):  # TD3's both branches
            step()
        return "none"
    except RuntimeError as e:
        return str(e).splitlines()[0][:90]
    finally:
        torch.cuda.set_sync_debug_mode("default")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algos", default=",".join(ALGOS))
    p.add_argument("--modes", default="eager,step,graph", help="compile settings to time")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--steps", type=int, default=300, help="timed gradient steps per cell")
    p.add_argument("--cpu-steps", type=int, default=60, help="timed steps of the CPU column; 0: none")
    p.add_argument("--ppo-iterations", type=int, default=2,
                   help="timed PPO iterations (n_steps env steps and an update each) per cell")
    p.add_argument("--device", default="cuda", help="cuda, or cpu for a run without a GPU")
    p.add_argument("--out")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_speed.py: no CUDA device here (--device cpu times the CPU cells)")
    modes, precisions = args.modes.split(","), args.precisions.split(",")
    cuda = args.device.startswith("cuda")
    rows: list[str] = []
    device_name = torch.cuda.get_device_name() if cuda else "none (CPU cells only)"
    header = [f"GPU: {device_name}; CPU: {cpu_name()} (1 torch thread); torch {torch.__version__}; "
              f"Python {platform.python_version()}; Hopper-v5, default networks and batch sizes; "
              f"{args.steps} timed gradient steps per cell (PPO: whole iterations, "
              f"{args.ppo_iterations} per cell)", "",
              f"| Algorithm | Precision | Unit | CPU eager fp32 | {' | '.join(modes)} | "
              "best / eager | Host syncs (eager fp32) |",
              "|---" * (6 + len(modes)) + "|"]
    n_rows = len(args.algos.split(",")) * len(precisions)
    with tempfile.TemporaryDirectory(prefix="ctrlrl-gpu-speed-") as tmp:
        dataset = Path(tmp) / "hopper-random.hdf5"
        collect("Hopper-v5", "random", dataset, size=20000, seed=0, progress=False)
        for algo in args.algos.split(","):
            calls, cpu_calls = ((args.ppo_iterations, 1) if algo == "ppo"
                                else (args.steps, args.cpu_steps))
            unit = "env steps/s" if algo == "ppo" else "gradient steps/s"
            cpu_rate = sync = "—"
            if cuda and args.cpu_steps:
                learner = build(algo, "cpu", "eager", "fp32", dataset, f"{tmp}/{algo}-cpu")
                cpu_rate = f"{rate(learner, algo, cpu_calls, 1):.0f}"
                learner.close()
            for precision in precisions:
                cells = {}
                for mode in modes:
                    run_dir = f"{tmp}/{algo}-{precision}-{mode}"
                    try:
                        learner = build(algo, args.device, mode, precision, dataset, run_dir)
                    except UserError as refusal:  # e.g. graph for PPO
                        print(f"{algo} {precision} {mode}: n/a ({refusal})", flush=True)
                        cells[mode] = None
                        continue
                    warmup = 1 if mode == "eager" else (2 if algo == "ppo" else 12)
                    cells[mode] = rate(learner, algo, calls, warmup)
                    if cuda and mode == "eager" and precision == "fp32":
                        sync = first_sync(learner, algo)
                    learner.close()
                shown = {m: "n/a" if r is None else f"{r:.0f}" for m, r in cells.items()}
                best = max((r for r in cells.values() if r is not None), default=None)
                gain = (f"{best / cells['eager']:.2f}x"
                        if best is not None and cells.get("eager") else "—")
                rows.append(f"| {algo} | {precision} | {unit} | {cpu_rate} | "
                            + " | ".join(shown[m] for m in modes) + f" | {gain} | {sync} |")
                print(rows[-1], flush=True)
                if args.out:  # row by row: a run cut short still leaves what it measured
                    partial = [] if len(rows) == n_rows else [
                        "", f"(partial: {len(rows)} of {n_rows} rows; the run stopped early)"]
                    write_table(Path(args.out), [*header, *rows, *partial])
    print("\n".join([*header, *rows]))


def write_table(path: Path, lines: list[str]) -> None:
    """The table into `path` between its TABLE_MARKS (the prose around it stays), or as the whole
    file where it has none."""
    start, end = TABLE_MARKS
    table = "\n".join([start, *lines, end])
    text = path.read_text() if path.exists() else ""
    if start in text and end in text:
        before, rest = text.split(start, 1)
        table = before + table + rest.split(end, 1)[1]
    path.write_text(table if table.endswith("\n") else table + "\n")


if __name__ == "__main__":
    main()
