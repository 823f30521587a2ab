"""Env-steps per second of ctrlrl vs stable-baselines3, measured alternately in the same run.

    python benchmarks/speed.py                       # ppo, sac, td3 on Hopper-v5, 3 rounds
    python benchmarks/speed.py --algos ppo --rounds 5 --env Hopper-v5
    python benchmarks/speed.py --memory              # peak RSS of SAC with a full 1M buffer
    python benchmarks/speed.py --algos ppo --compile --warmup 8192 --steps 32768
                                                     # steady state, incl. ctrlrl --compile
    python benchmarks/speed.py --pairs mdpo,mdpo-off # ctrlrl algorithm vs its ctrlrl baseline
    python benchmarks/speed.py --algos sac,td3 --precision fp32,bf16
                                                     # ctrlrl in both precisions vs sb3

Each measurement is a fresh subprocess with one torch thread, so neither library warms the other's
caches; rounds alternate sb3, ctrlrl, sb3, ctrlrl, ... so drift in machine load hits both alike.
Hyperparameters are stable-baselines3's defaults on both sides (listed in `SETTINGS`); evaluation
and checkpointing are off. The figure is steps / wall time of `learn()`, after construction;
with `--warmup W` both libraries first learn W steps untimed (e.g. to exclude torch.compile's
build time) and the figure is the steady-state rate of the steps after that.
Writes a markdown table to stdout (and to --out if given).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

# stable-baselines3 defaults, and the ctrlrl overrides that reproduce them
SETTINGS = {
    # n_steps 2048, batch 64, 10 epochs, 64-64 tanh, no normalisation (ctrlrl's Hopper preset adds it)
    "ppo": {"steps": 16_384, "ctrlrl": {"normalize_obs": False, "normalize_reward": False}},
    "sac": {"steps": 4_000, "ctrlrl": {"learning_starts": 100}},  # 256-256, batch 256, lr 3e-4
    "td3": {"steps": 4_000, "ctrlrl": {"learning_starts": 100, "hidden_sizes": [400, 300],
                                       "learning_rate": 1e-3, "exploration_noise": 0.0}},
}


# --pairs: algorithm → (its ctrlrl baseline, the baseline's overrides, the algorithm's overrides),
# set so both take the same gradient steps per iteration: MDPO's 10 full-batch policy steps and
# 10 full-batch value steps against PPO's 10 full-batch epochs of its joint loss; MDPO-off and SAC
# one step per env step each. Normalisation off on both sides (as in SETTINGS).
_PLAIN = {"normalize_obs": False, "normalize_reward": False}
PAIRS = {
    "mdpo": ("ppo", {**_PLAIN, "batch_size": 2048, "n_epochs": 10},
             {**_PLAIN, "sgd_steps": 10, "vf_epochs": 10, "vf_batch_size": 2048}),
    "mdpo-off": ("sac", {"learning_starts": 100}, {"learning_starts": 100}),
}


def worker(lib: str, algo: str, env_id: str, steps: int, compile_: bool, warmup: int,
           settings: dict | None = None) -> float:
    import torch

    torch.set_num_threads(1)
    if lib == "sb3":
        import gymnasium as gym
        from stable_baselines3 import PPO, SAC, TD3

        cls = {"ppo": PPO, "sac": SAC, "td3": TD3}[algo]
        model = cls("MlpPolicy", gym.make(env_id), seed=0, device="cpu", verbose=0)
        if warmup:
            model.learn(warmup)
        start = time.perf_counter()
        model.learn(steps, reset_num_timesteps=not warmup)
    else:
        import tempfile

        import ctrlrl

        overrides = {**(SETTINGS[algo]["ctrlrl"] if settings is None else settings),
                     "eval_every": 0, "checkpoint_every": 0,
                     "progress": False, "tensorboard": False,
                     "compile": "step" if compile_ else "eager"}
        model = ctrlrl.make(algo, env_id, overrides, seed=0, device="cpu", total_steps=warmup,
                            run_dir=tempfile.mkdtemp(prefix="ctrlrl-speed-"))
        model.learn()
        start = time.perf_counter()
        model.learn(warmup + steps)
    return steps / (time.perf_counter() - start)


def memory_worker(env_id: str) -> dict:
    """Peak RSS of SAC with a 1M buffer whose every row has been written (pages touched)."""
    import resource
    import tempfile

    import torch

    import ctrlrl

    torch.set_num_threads(1)
    model = ctrlrl.make("sac", env_id, {"buffer_size": 1_000_000, "learning_starts": 100,
                                        "eval_every": 0, "progress": False, "tensorboard": False,
                                        "save_replay": False},
                        device="cpu", total_steps=2_000, run_dir=tempfile.mkdtemp())
    model.replay.storage.fill_(0.5)
    model.replay.size = model.replay.capacity
    model.learn()
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "buffer_mib": model.replay.storage.numel() * 4 / 2**20}


def run_worker(args: list[str]) -> dict | float:
    out = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algos", default="ppo,sac,td3")
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time ctrlrl --compile")
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps first (both libs)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default per algo)")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--pairs", help="e.g. mdpo,mdpo-off: each against its ctrlrl baseline")
    parser.add_argument("--precision", default="auto",
                        help="ctrlrl's precision, or a list timed side by side: fp32,bf16")
    parser.add_argument("--out")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        if args.worker[0] == "memory":
            print(json.dumps(memory_worker(args.worker[1])))
        else:
            lib, algo, env_id, steps, comp, warmup, *settings = args.worker
            print(json.dumps(worker(lib, algo, env_id, int(steps), comp == "1", int(warmup),
                                    json.loads(settings[0]) if settings else None)))
        return

    lines = [f"machine: {platform.processor() or platform.machine()}, "
             f"{cpu_name()}, python {platform.python_version()}, 1 torch thread per process",
             "command: python benchmarks/speed.py "
             + (f"--pairs {args.pairs}" if args.pairs else f"--algos {args.algos}")
             + f" --env {args.env} "
             f"--rounds {args.rounds}{' --compile' if args.compile else ''}"
             + (f" --warmup {args.warmup}" if args.warmup else "")
             + (f" --steps {args.steps}" if args.steps else "")
             + (f" --precision {args.precision}" if args.precision != "auto" else ""), ""]
    if args.pairs:
        lines += ["| algo | baseline | timed steps | baseline fps (median) | algo fps (median) "
                  "| algo / baseline | per-round fps |", "|---|---|---|---|---|---|---|"]
        for algo in args.pairs.split(","):
            base, base_settings, algo_settings = PAIRS[algo]
            steps = args.steps or SETTINGS[base]["steps"]
            fps: dict[str, list[float]] = {base: [], algo: []}
            for _ in range(args.rounds):
                for name, settings in ((base, base_settings), (algo, algo_settings)):
                    fps[name].append(run_worker(["ctrlrl", name, args.env, str(steps), "0",
                                                 str(args.warmup), json.dumps(settings)]))
            med = {k: statistics.median(v) for k, v in fps.items()}
            rounds = "; ".join(f"{k}: " + ", ".join(f"{x:.0f}" for x in v) for k, v in fps.items())
            lines.append(f"| {algo} | {base} | {steps} | {med[base]:.0f} | {med[algo]:.0f} | "
                         f"{med[algo] / med[base]:.2f}x | {rounds} |")
    elif args.memory:
        mem = run_worker(["memory", args.env])
        lines.append(f"SAC on {args.env}, 1M-transition buffer fully written: buffer "
                     f"{mem['buffer_mib']:.0f} MiB, process peak RSS {mem['peak_rss_mib']:.0f} MiB")
    else:
        precisions = args.precision.split(",")
        # one ctrlrl variant per precision: ctrlrl-fp32, ctrlrl-bf16 (plain `ctrlrl` for auto)
        precision_of = {"ctrlrl" if p == "auto" else f"ctrlrl-{p}": p for p in precisions}
        own = list(precision_of)
        variants = ["sb3", *own] + [f"{v}-compile" for v in own if args.compile]
        ratios = " | ".join(f"{v} / sb3" for v in variants[1:])
        lines += ["| algo | timed steps | " + " | ".join(f"{v} fps (median)" for v in variants)
                  + f" | {ratios} | per-round fps |",
                  "|---|---|" + "---|" * (2 * len(variants) - 1) + "---|"]
        for algo in args.algos.split(","):
            steps = args.steps or SETTINGS[algo]["steps"]
            fps: dict[str, list[float]] = {v: [] for v in variants}
            for _ in range(args.rounds):
                for v in variants:
                    lib = "sb3" if v == "sb3" else "ctrlrl"
                    settings = {**SETTINGS[algo]["ctrlrl"],
                                "precision": precision_of.get(v.removesuffix("-compile"), "auto")}
                    fps[v].append(run_worker([lib, algo, args.env, str(steps),
                                              "1" if v.endswith("-compile") else "0",
                                              str(args.warmup), json.dumps(settings)]))
            med = {v: statistics.median(x) for v, x in fps.items()}
            rounds = "; ".join(f"{v}: " + ", ".join(f"{x:.0f}" for x in xs) for v, xs in fps.items())
            ratio = " | ".join(f"{med[v] / med['sb3']:.2f}x" for v in variants[1:])
            lines.append(f"| {algo} | {steps} | " + " | ".join(f"{med[v]:.0f}" for v in variants)
                         + f" | {ratio} | {rounds} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
