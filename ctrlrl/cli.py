"""`ctrlrl` command line: parses arguments, then calls the library. Nothing else lives here."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

from ctrlrl.core.errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + message
        self.exit(2, f"ctrlrl: error: {message} (see `{self.prog} --help`)\n")


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", help="gymnasium env id, e.g. Hopper-v5")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--total-steps", type=int, dest="total_steps")
    p.add_argument("--n-envs", type=int, dest="n_envs")
    p.add_argument("--eval-every", type=int, dest="eval_every", help="env steps; 0 disables")
    p.add_argument("--eval-episodes", type=int, dest="eval_episodes")
    p.add_argument("--run-dir", dest="run_dir", help="default runs/<env>/<algo>/<seed>-<time>")
    p.add_argument("--dataset", help="offline algorithms: PATH.hdf5, d4rl:<task> or minari:<id> "
                   "(the env defaults to the dataset's)")
    p.add_argument("--compile", action="store_const", const=True, default=None,
                   help="torch.compile the update")
    p.add_argument("--base-policy", dest="base_policy", metavar="PATH",
                   help="orpo, ppo-adreg: the safe policy, a ctrlrl run dir or checkpoint "
                        "(default: the env's scripted one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any run or algorithm setting, e.g. --set learning_rate=1e-3")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ctrlrl", description="Train, evaluate and compare RL algorithms.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("list", help="algorithms and registered environments")

    train = sub.add_parser("train", help="train an algorithm")
    train.add_argument("algo")
    _add_run_flags(train)
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its checkpoint")

    ev = sub.add_parser("eval", help="evaluate a run dir or checkpoint, or an env's heuristic")
    ev.add_argument("path", metavar="RUN_DIR|CHECKPOINT", nargs="?")
    ev.add_argument("--policy", choices=["heuristic"],
                    help="evaluate the env's scripted heuristic instead of a trained policy")
    ev.add_argument("--env", help="with --policy heuristic: the env id")
    ev.add_argument("--episodes", type=int, default=10)
    ev.add_argument("--seed", type=int, default=None, help="default: the run's seed + 10000")
    ev.add_argument("--device", default=None)

    plot = sub.add_parser("plot", help="learning curves with mean and spread across seeds")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR")
    plot.add_argument("-o", "--output", default="curves.png")
    plot.add_argument("--metric", default=None,
                      help="default: eval/mean_reward when logged, else rollout/ep_rew_mean")

    collect = sub.add_parser("collect", help="generate a D4RL-format offline dataset with SAC")
    collect.add_argument("--env", required=True, help="gymnasium env id, e.g. Hopper-v5")
    collect.add_argument("--level", required=True,
                         help="random, medium, medium-replay, expert or medium-expert")
    collect.add_argument("-o", "--output", default=None,
                         help="default <data dir>/generated/<env>-<level>.hdf5 ($CTRLRL_DATA)")
    collect.add_argument("--size", type=int, default=1_000_000,
                         help="transitions to record (not medium-replay: the whole buffer)")
    collect.add_argument("--seed", type=int, default=0)
    collect.add_argument("--train-steps", type=int, default=1_000_000, dest="train_steps",
                         help="most SAC steps to reach the medium level")
    collect.add_argument("--expert-steps", type=int, default=1_000_000, dest="expert_steps",
                         help="SAC steps for the expert policy")
    collect.add_argument("--expert-return", type=float, default=None, dest="expert_return",
                         help="default: D4RL's reference expert score for the env")

    sweep = sub.add_parser("sweep", help="run an algorithms × envs × seeds grid")
    sweep.add_argument("--algos", required=True, help="comma-separated, e.g. ppo,sac")
    _add_grid_flags(sweep)
    bench = sub.add_parser("bench", help="a sweep with stable-baselines3's twin of each algorithm")
    bench.add_argument("--vs", required=True, choices=["sb3"], help="the reference library")
    bench.add_argument("--algos", required=True, help="ctrlrl baselines with an SB3 twin: ppo,sac,td3")
    _add_grid_flags(bench)

    report = sub.add_parser("report", help="result table and learning curves of runs")
    report.add_argument("runs", nargs="+", metavar="RUN_GLOB",
                        help="run dirs, globs of them, or folders holding runs (a sweep's --out)")
    report.add_argument("-o", "--output", required=True,
                        help="output stem: writes STEM.md, STEM.png, STEM.json")
    report.add_argument("--metric", default=None,
                        help="default: eval/normalized_score when logged, else eval/mean_reward")
    report.add_argument("--welch", metavar="A,B", help="add Welch's t-test of label A vs label B")
    report.add_argument("--aggregate", action="store_true",
                        help="add a row and panel per algorithm over all envs (normalised scores only)")
    report.add_argument("--title", default=None)
    report.add_argument("--notes", default=None, metavar="FILE",
                        help="markdown appended under the table (the discussion of the results)")
    return parser


def _add_grid_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--envs", required=True, help="comma-separated gymnasium ids")
    p.add_argument("--seeds", default="0", help="e.g. 0-4 or 0,3,7 (default 0)")
    p.add_argument("--total-steps", type=int, dest="total_steps",
                   help="env steps per run (default: each preset's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting for every run of the grid")
    p.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                   help="add a grid axis over a setting; the values become part of the label")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="runs at a time (default: the number of cores; one torch thread each)")
    p.add_argument("--out", default="runs/sweep", help="where the runs go (default runs/sweep)")
    p.add_argument("--backend", default="local", choices=["local", "ray"])
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local instance)")
    p.add_argument("--ray-storage", default="shared", choices=["shared", "copy"], dest="storage",
                   help="shared: Ray tasks write --out directly (a path all nodes see); copy: each "
                        "task works locally and sends its run dir back")


def _cmd_list(_: argparse.Namespace) -> None:
    import gymnasium as gym

    import ctrlrl.envs  # noqa: F401
    from ctrlrl.api import list_algos

    print("algorithms: " + ", ".join(list_algos()))
    print("environments:")
    for env_id in sorted(gym.registry):
        print(f"  {env_id}")


def _cmd_train(args: argparse.Namespace) -> None:
    from ctrlrl import api
    from ctrlrl.core.config import parse_set

    flags: dict[str, Any] = {k: getattr(args, k) for k in
                             ("seed", "device", "total_steps", "n_envs", "eval_every",
                              "eval_episodes", "run_dir", "compile", "dataset")
                             if getattr(args, k) is not None}
    overrides = parse_set(args.set)
    if args.base_policy:  # a path made absolute, so a resumed run finds it from any folder
        overrides["base_policy"] = (args.base_policy if args.base_policy == "scripted"
                                    else str(Path(args.base_policy).resolve()))
    if args.resume:
        algo = api.resume(args.resume, args.algo, args.env, overrides, **flags)
        print(f"resuming {algo.name} on {algo.run.env} at step {algo.step} in {algo.run_dir}")
    else:
        env = args.env
        if env is None and args.dataset:
            from ctrlrl.data import dataset_env

            env = dataset_env(args.dataset)
        if env is None:
            api.algo_class(args.algo)
            raise UserError("--env is required, e.g. --env Hopper-v5 (`ctrlrl list` shows ids)")
        algo = api.make(args.algo, env, overrides, **flags)
        algo.setup_run_dir()
        print(f"training {algo.name} on {algo.run.env} (seed {algo.run.seed}, "
              f"{algo.device}) in {algo.run_dir}")
    try:
        algo.learn()
    finally:
        algo.close()
    print(f"done: {algo.step} steps; checkpoint {algo.checkpoint_path}")
    print(f"watch: tensorboard --logdir {algo.run_dir}")


def _cmd_eval(args: argparse.Namespace) -> None:
    from ctrlrl import api

    if args.policy == "heuristic":
        if args.env is None or args.path is not None:
            raise UserError("--policy heuristic takes --env ENV_ID and no run dir, e.g. "
                            "ctrlrl eval --policy heuristic --env ctrlrl/LotSizing-20x10-v0")
        returns = api.evaluate_heuristic(args.env, args.episodes, args.seed or 0)
        print(f"heuristic on {args.env}: mean return {returns.mean():.2f} ± {returns.std():.2f} "
              f"over {len(returns)} episodes (seeds {args.seed or 0}…)")
        return
    if args.path is None:
        raise UserError("eval needs a RUN_DIR or checkpoint (or --policy heuristic --env ENV_ID)")
    algo = api.load(args.path, device=args.device, replay=False)
    returns = algo.evaluate(args.episodes, args.seed)
    print(f"{algo.name} on {algo.run.env}: mean return {returns.mean():.2f} ± {returns.std():.2f} "
          f"over {len(returns)} deterministic episodes")
    algo.close()


def _cmd_collect(args: argparse.Namespace) -> None:
    from ctrlrl.data import data_dir
    from ctrlrl.data.collect import collect

    name = f"{args.env.replace('/', '_')}-{args.level}.hdf5"
    output = args.output or data_dir() / "generated" / name
    meta = collect(args.env, args.level, output, args.size, args.seed, args.train_steps,
                   args.expert_steps, args.expert_return, progress=sys.stderr.isatty())
    print(f"wrote {output}: {meta['transitions']} transitions, {meta['episodes']} episodes, "
          f"mean episode return {meta['episode_return_mean']:.1f}")


def _cmd_plot(args: argparse.Namespace) -> None:
    from ctrlrl.harness.report import plot_runs

    out = plot_runs(args.runs, args.output, args.metric)
    print(f"wrote {out}")


def _cmd_sweep(args: argparse.Namespace) -> None:
    from ctrlrl.core.config import parse_set
    from ctrlrl.harness import sweep

    algos = sweep.parse_names(args.algos, "algos")
    if args.command == "bench":
        from ctrlrl.harness.sb3 import TWINS

        bases = {base: twin for twin, base in TWINS.items()}
        missing = [a for a in algos if a not in bases]
        if missing:
            raise UserError(f"--algos {','.join(missing)}: stable-baselines3 has a twin only for "
                            f"{', '.join(bases)}")
        algos = [name for a in algos for name in (a, bases[a])]
    specs = sweep.expand_grid(algos, sweep.parse_names(args.envs, "envs"),
                              sweep.parse_seeds(args.seeds), args.total_steps, args.out,
                              parse_set(args.set), sweep.parse_vary(args.vary))
    outcome = sweep.sweep(specs, args.workers, args.backend, args.address, args.storage)
    print(f"sweep done: {outcome['done']} trained, {outcome['skipped']} already complete; "
          f"table: ctrlrl report {args.out} -o docs/results/NAME")


def _cmd_report(args: argparse.Namespace) -> None:
    from ctrlrl.harness.report import write_report

    welch = None
    if args.welch:
        welch = tuple(n.strip() for n in args.welch.split(","))
        if len(welch) != 2:
            raise UserError(f"--welch {args.welch!r}: name two labels, e.g. --welch pdppo,ppo")
    paths = write_report(args.runs, args.output, args.metric, welch, args.title,
                         "ctrlrl " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["report"] else None,
                         args.aggregate, args.notes)
    print("wrote " + ", ".join(map(str, paths)))


def _ignore_further_interrupts() -> None:
    """The checkpoint is on disk and the process is leaving: another Ctrl-C (a held key, a
    terminal's repeated signal) must not raise inside interpreter shutdown and print a traceback."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ctrlrl.algos.base import TrainingInterrupted

    commands = {"list": _cmd_list, "train": _cmd_train, "eval": _cmd_eval, "plot": _cmd_plot,
                "collect": _cmd_collect, "sweep": _cmd_sweep, "bench": _cmd_sweep,
                "report": _cmd_report}
    try:
        commands[args.command](args)
    except UserError as exc:
        print(f"ctrlrl: error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        _ignore_further_interrupts()
        how = (f"`ctrlrl train {args.algo} --resume {exc.checkpoint.parent.parent}`"
               if args.command == "train" else "the same command again")  # collect resumes its SAC run
        print(f"ctrlrl: {exc}; continue with {how}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        _ignore_further_interrupts()
        print("ctrlrl: aborted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
