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


class _AlgoHelp(argparse.Action):
    """-h/--help after an algorithm's name asks for its settings, shown once every option is
    parsed (so --env and --set resolve them); before a name, the command's own help."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, default=False,
                         help="with ALGO: its settings (as `ctrlrl describe ALGO`); "
                              "without: this help")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if getattr(namespace, "algo", None) is None:
            parser.print_help()
            parser.exit()
        setattr(namespace, self.dest, True)


# run settings that have their own option (the others are set with --set KEY=VALUE)
RUN_FLAGS = ("seed", "device", "total_steps", "n_envs", "eval_every", "eval_episodes", "run_dir",
             "compile", "dataset")


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
    p.add_argument("--compile", nargs="?", const="step", default=None, metavar="MODE",
                   help="eager (default) | step: torch.compile the update (the flag alone) | "
                        "graph: replay off-policy and offline updates from CUDA graphs")
    p.add_argument("--base-policy", dest="base_policy", metavar="PATH",
                   help="orpo, ppo-adreg: the safe policy, a ctrlrl run dir or checkpoint "
                        "(default: the env's scripted one)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any run or algorithm setting, e.g. --set learning_rate=1e-3")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ctrlrl", description="Train, evaluate and compare RL algorithms.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("list", help="algorithms with their kind, and the env ids that can be made here")

    train = sub.add_parser(
        "train", help="train an algorithm", add_help=False,
        description="Train ALGO on an env. `ctrlrl train ALGO --help` (or `ctrlrl describe ALGO`) "
                    "lists ALGO's settings with their types, defaults and meanings; "
                    "`ctrlrl list` lists the algorithms and env ids.")
    train.add_argument("algo", help="an algorithm name (`ctrlrl list` shows them)")
    train.add_argument("-h", "--help", action=_AlgoHelp)
    _add_run_flags(train)
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its checkpoint")

    describe = sub.add_parser(
        "describe", help="an algorithm's settings: type, default, meaning; its preset envs",
        description="List ALGO's settings and the run settings, with types, defaults and "
                    "meanings, and the envs ALGO has presets for. With --env (and --set, "
                    "options), the values that env gets.")
    describe.add_argument("algo", help="an algorithm name (`ctrlrl list` shows them)")
    _add_run_flags(describe)

    ev = sub.add_parser("eval", help="evaluate a run dir or checkpoint, or an env's heuristic")
    ev.add_argument("path", metavar="RUN_DIR|CHECKPOINT", nargs="?")
    ev.add_argument("--policy", choices=["heuristic"],
                    help="evaluate the env's scripted heuristic instead of a trained policy")
    ev.add_argument("--env", help="with --policy heuristic: the env id")
    ev.add_argument("--episodes", type=int, default=None, help="default 10; with --video 1")
    ev.add_argument("--video", metavar="OUT.mp4",
                    help="render the deterministic episodes offscreen into an mp4 "
                         "(pip install 'ctrlrl[video]')")
    ev.add_argument("--seed", type=int, default=None, help="default: the run's seed + 10000")
    ev.add_argument("--device", default=None)

    plot = sub.add_parser("plot", help="learning curves with mean and spread across seeds")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR")
    plot.add_argument("-o", "--output", default="curves.png")
    plot.add_argument("--metric", default=None,
                      help="one metric for all runs (default: each algorithm's own, one panel per "
                           "metric: regret, true reward, normalised score, evaluation return, else "
                           "training return)")

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
    collect.add_argument("--policy", default=None, metavar="FILE.npz",
                         help="roll out this behaviour file (medium or expert) instead of training "
                              "SAC, for the same rows without the run (collect writes one beside each "
                              "SAC run)")

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
                        help="one metric for all runs (default: each algorithm's own: regret, true "
                             "reward, normalised score, else evaluation return)")
    report.add_argument("--welch", metavar="A,B", action="append", default=[],
                        help="add A − B per env: the difference of mean final (and best) values "
                             "with its 95%% bootstrap CI, and Welch's t-test; repeat for more pairs")
    report.add_argument("--aggregate", action="store_true",
                        help="add a row and panel per algorithm over all envs (normalised scores only)")
    report.add_argument("--finished", action="store_true",
                        help="only the runs a sweep finished (done.json): leaves out the runs "
                             "still training or stopped, so kept sweeps report the same anywhere")
    report.add_argument("--at-step", type=int, default=None, dest="at_step", metavar="STEP",
                        help="compare the cells at one budget: only the runs that have reached "
                             "STEP (finished or not), each cut there")
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

    from ctrlrl.api import algo_class, list_algos
    from ctrlrl.core.envs import env_unavailable

    print("algorithms (`ctrlrl train ALGO --help` lists one's settings):")
    width = max(map(len, list_algos()))
    for name in list_algos():
        cls = algo_class(name)
        print(f"  {name:<{width}}  {cls.kind:<14}  {cls.summary}")
    ids = sorted(gym.registry, key=lambda i: (not i.startswith("ctrlrl/"), i))  # ours first
    usable = [env_id for env_id in ids if env_unavailable(env_id) is None]
    print(f"environments that can be made here ({len(ids) - len(usable)} registered ids that "
          "cannot, such as the mujoco-py -v2/-v3 ones, are left out):")
    for env_id in usable:
        print(f"  {env_id}")


def _train_options(args: argparse.Namespace) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    """(env, run flags, --set overrides) of `train` and `describe`; the env defaults to the
    dataset's."""
    from ctrlrl.core.config import parse_set

    flags = {k: getattr(args, k) for k in RUN_FLAGS if getattr(args, k) is not None}
    overrides = parse_set(args.set)
    if args.base_policy:  # a path made absolute, so a resumed run finds it from any folder
        overrides["base_policy"] = (args.base_policy if args.base_policy == "scripted"
                                    else str(Path(args.base_policy).resolve()))
    env = args.env
    if env is None and args.dataset and not getattr(args, "resume", None):
        from ctrlrl.data import dataset_env

        env = dataset_env(args.dataset)
    return env, flags, overrides


def _cmd_describe(args: argparse.Namespace) -> None:
    if getattr(args, "resume", None):
        raise UserError(f"--help describes an algorithm's settings, not a run; {args.resume}'s "
                        "settings are in its config.yaml")
    print(describe_algo(args.algo, *_train_options(args)))


def _cmd_train(args: argparse.Namespace) -> None:
    from ctrlrl import api

    if args.help:
        _cmd_describe(args)
        return
    env, flags, overrides = _train_options(args)
    if args.resume:
        algo = api.resume(args.resume, args.algo, args.env, overrides, **flags)
        print(f"resuming {algo.name} on {algo.run.env} at step {algo.step} in {algo.run_dir}")
    else:
        if env is None:
            api.algo_class(args.algo)
            raise UserError("--env is required, e.g. --env Hopper-v5 (`ctrlrl list` shows ids)")
        algo = api.make(args.algo, env, overrides, **flags)
        algo.setup_run_dir()
        print(f"training {algo.name} on {algo.run.env} (seed {algo.run.seed}, "
              f"{algo.device}) in {algo.run_dir}")
    note = algo.budget_note()
    if note:
        print(f"note: {note}")
    before = (algo.step, algo.last_evaluation)
    try:
        algo.learn()
    finally:
        algo.close()
    print(f"done: {algo.step} steps; checkpoint {algo.checkpoint_path}")
    print(_outcome(algo, worked=algo.step > before[0] or algo.last_evaluation is not before[1]))
    print(f"watch: tensorboard --logdir {algo.run_dir}")


def _outcome(algo: Any, worked: bool) -> str:
    """A finished run's verdict: its final evaluation (or why there is none) and its headline;
    `worked`: this `learn` trained or evaluated (a finished run resumed does neither)."""
    last = algo.last_evaluation
    parts = [] if worked else [f"nothing to train: the run is at step {algo.step} of total_steps="
                               f"{algo.run.total_steps}; pass a larger --total-steps to continue it"]
    if last is not None and last.step == algo.step:
        parts.append(f"final evaluation at step {last.step}: return {_mean_std(last.returns)} "
                     f"over {len(last.returns)} deterministic episodes")
    elif worked:
        parts.append(f"no final evaluation: {algo.no_evaluation_reason()}")
    return _with_headline("; ".join(parts), algo.headline(last))


def _mean_std(returns: Any) -> str:
    return f"{returns.mean():.2f} ± {returns.std():.2f}"


def _with_headline(text: str, headline: dict[str, float]) -> str:
    """`text; label value, label value` (the numbers an algorithm says its learning shows in)."""
    from ctrlrl.core.logger import format_value

    if not headline:
        return text
    return text + "; " + ", ".join(f"{label} {format_value(v)}" for label, v in headline.items())


def describe_algo(name: str, env: str | None = None, flags: dict[str, Any] | None = None,
                  overrides: dict[str, Any] | None = None) -> str:
    """ALGO's settings, then the run settings, each as name, type, value and meaning (the config's
    own field comments), then the envs ALGO has presets for. The values are resolved in
    `api.resolve`'s order (defaults → preset entries → overrides → flags) for `env`, or without
    one for an env no preset entry names, but not checked against an env: help describes even a
    run that would be refused (e.g. an offline algorithm without its dataset)."""
    import shutil
    import textwrap

    from ctrlrl import api
    from ctrlrl.core.config import RunConfig, apply_overrides, load_preset
    from ctrlrl.core.envs import check_env_id

    cls = api.algo_class(name)
    if env is not None:
        check_env_id(env)
    # env "" matches only the entries that apply to every env (`default`, a bare `*`)
    preset = load_preset(api.PRESET_DIR / f"{name}.yaml", env or "")
    run, cfg = RunConfig(**({"env": env} if env else {})), cls.Config()
    for origin, changes in ((f"preset {name}.yaml", preset), ("--set", overrides or {}),
                            ("option", flags or {})):
        run, cfg = apply_overrides(run, cfg, changes, origin)
    source = (f"values for {env}" if env else "values for an env without a preset entry")
    source += (": the defaults" + (f", then preset {name}.yaml" if preset else "")
               + (", then the options given" if flags or overrides else ""))
    width = shutil.get_terminal_size((100, 24)).columns
    options = ", ".join("--" + k.replace("_", "-") for k in RUN_FLAGS)
    presets = ", ".join(api.preset_envs(name)) or "no env (the defaults apply everywhere)"
    data = ("--dataset PATH.hdf5|d4rl:<task>|minari:<id> [--env ENV_ID]" if cls.kind == "offline"
            else "--env ENV_ID")

    def prose(text: str) -> list[str]:
        return textwrap.wrap(text, width, subsequent_indent="  ", break_on_hyphens=False)

    return "\n".join([
        *prose(f"{name} ({cls.kind}): {cls.summary}"),
        f"usage: ctrlrl train {name} {data} [--set KEY=VALUE ...] [options]", "",
        *prose(f"{name} settings, set with --set KEY=VALUE ({source}; [default X] where a "
               "value differs from its default X):"),
        *_settings_table(cfg, width), "",
        *prose(f"run settings, set with --set KEY=VALUE or the options {options}:"),
        *_settings_table(run, width), "",
        *prose(f"presets: per-env values in ctrlrl/algos/presets/{name}.yaml for {presets} "
               f"(`ctrlrl describe {name} --env ENV_ID` shows the values an env gets)")])


def _settings_table(cfg: Any, width: int) -> list[str]:
    """One row per field: name, type, value (as --set takes it), meaning wrapped to `width`;
    a value other than the field's default names the default."""
    import dataclasses
    import textwrap

    from ctrlrl.core.config import config_fields, field_docs

    types, docs = config_fields(type(cfg)), field_docs(type(cfg))
    defaults = type(cfg)()
    rows = []
    for f in dataclasses.fields(cfg):
        value, default = getattr(cfg, f.name), getattr(defaults, f.name)
        meaning = docs[f.name] + ("" if value == default else f" [default {_as_yaml(default)}]")
        rows.append((f.name, _type_name(types[f.name]), _as_yaml(value), meaning))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    indent = 2 + sum(widths) + 6
    out = []
    for *cells, meaning in rows:
        head = "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + "  "
        wrapped = textwrap.wrap(meaning, max(width - indent, 40), break_on_hyphens=False) or [""]
        out += [head + wrapped[0], *(" " * indent + more for more in wrapped[1:])]
    return out


def _type_name(typ: Any) -> str:
    """`int`, `float | null`, `[int, ...]`: a field's type as a --set value is written."""
    import types
    import typing

    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin in (tuple, list):
        return f"[{_type_name(args[0])}, ...]"
    return getattr(typ, "__name__", str(typ))


def _as_yaml(value: Any) -> str:
    """A value as `--set KEY=VALUE` takes it: true, null, [256,256], 0.0003."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(map(_as_yaml, value)) + "]"
    if value == "":
        return '""'
    return str(value)


def _cmd_eval(args: argparse.Namespace) -> None:
    from ctrlrl import api

    if args.video and args.policy == "heuristic":
        raise UserError("--video records a trained run's policy; drop --policy heuristic")
    if args.episodes is None:  # a video shows one episode unless asked for more
        args.episodes = 1 if args.video else 10
    if args.policy == "heuristic":
        if args.env is None or args.path is not None:
            raise UserError("--policy heuristic takes --env ENV_ID and no run dir, e.g. "
                            "ctrlrl eval --policy heuristic --env ctrlrl/LotSizing-20x10-v0")
        if args.device is not None:
            raise UserError("--device applies to a trained policy; a scripted heuristic runs on "
                            "the CPU: drop --device")
        returns = api.evaluate_heuristic(args.env, args.episodes, args.seed or 0)
        print(f"heuristic on {args.env}: mean return {returns.mean():.2f} ± {returns.std():.2f} "
              f"over {len(returns)} episodes (seeds {args.seed or 0}…)")
        return
    if args.path is None:
        raise UserError("eval needs a RUN_DIR or checkpoint (or --policy heuristic --env ENV_ID)")
    if args.env is not None:
        raise UserError("--env applies to --policy heuristic; a trained run is evaluated on the "
                        "env it was trained on: drop --env")
    algo = api.load(args.path, device=args.device, replay=False)
    if args.video:
        _record_video(algo, args)
        return
    try:
        evaluation = algo.run_evaluation(args.episodes, args.seed)
    finally:
        algo.close()
    returns = evaluation.returns
    print(_with_headline(f"{algo.name} on {algo.run.env}: mean return {_mean_std(returns)} over "
                         f"{len(returns)} deterministic episodes", algo.headline(evaluation)))


def _record_video(algo: Any, args: argparse.Namespace) -> None:
    try:
        episodes = algo.record_video(args.video, args.episodes, args.seed)
    finally:
        algo.close()
    returns = ", ".join(f"{ret:.2f}" for ret, _ in episodes)
    lengths = ", ".join(str(length) for _, length in episodes)
    print(f"wrote {args.video}: {len(episodes)} deterministic episode(s) of {algo.name} on "
          f"{algo.run.env} (seeds {algo.evaluation_seed(args.seed)}…), return {returns} over "
          f"{lengths} steps")


def _cmd_collect(args: argparse.Namespace) -> None:
    from ctrlrl.data import data_dir
    from ctrlrl.data.collect import collect

    name = f"{args.env.replace('/', '_')}-{args.level}.hdf5"
    output = args.output or data_dir() / "generated" / name
    meta = collect(args.env, args.level, output, args.size, args.seed, args.train_steps,
                   args.expert_steps, args.expert_return, policy=args.policy)
    print(f"wrote {output}: {meta['transitions']} transitions, {meta['episodes']} episodes, "
          f"mean episode return {meta['episode_return_mean']:.1f}")
    for name in ("medium", "expert"):
        if f"{name}_policy" in meta and args.policy is None:
            print(f"{name} behaviour policy: {meta[f'{name}_policy']} (keep it: `--policy` with it "
                  "makes these rows again without the SAC run)")


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

    welch = []
    for given in args.welch:
        pair = tuple(n.strip() for n in given.split(","))
        if len(pair) != 2:
            raise UserError(f"--welch {given!r}: name two labels, e.g. --welch pdppo,ppo")
        welch.append(pair)
    paths = write_report(args.runs, args.output, args.metric, welch, args.title,
                         "ctrlrl " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["report"] else None,
                         args.aggregate, args.notes, args.finished, args.at_step)
    print("wrote " + ", ".join(map(str, paths)))


def _ignore_further_interrupts() -> None:
    """The checkpoint is on disk and the process is leaving: another Ctrl-C (a held key, a
    terminal's repeated signal) must not raise inside interpreter shutdown and print a traceback."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ctrlrl.core.signals import TrainingInterrupted

    commands = {"list": _cmd_list, "train": _cmd_train, "describe": _cmd_describe, "eval": _cmd_eval,
                "plot": _cmd_plot, "collect": _cmd_collect, "sweep": _cmd_sweep, "bench": _cmd_sweep,
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
        return 128 + exc.signum  # the shell's code for a signal: 130 Ctrl-C, 143 SIGTERM
    except KeyboardInterrupt:
        _ignore_further_interrupts()
        print("ctrlrl: aborted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
