"""Python API: `ctrlrl.make(algo, env=..., **overrides)`, `ctrlrl.load(path)`, `resume`."""

from __future__ import annotations

import dataclasses
import fnmatch
import sys
from collections.abc import Set
from pathlib import Path
from typing import Any

import gymnasium as gym
import yaml

from ctrlrl.algos import REGISTRY
from ctrlrl.algos.base import Algorithm
from ctrlrl.core.checkpoint import CHECKPOINT_NAME, read_checkpoint
from ctrlrl.core.config import (
    YAML_FAILURES,
    RunConfig,
    apply_overrides,
    load_preset,
    resolve_device,
    resolve_precision,
    to_dict,
    upgrade_run_dict,
)
from ctrlrl.core.envs import check_env_id, is_continuing
from ctrlrl.core.errors import UserError
from ctrlrl.core.run_dir import claim_run_dir, is_run_dir

PRESET_DIR = Path(__file__).parent / "algos" / "presets"
# run settings that may differ when a run is resumed: they do not change what is computed
# (`threads` is not one: on CPU a different thread count changes floating-point results)
RUNTIME_KEYS = {"total_steps", "device", "progress", "tensorboard", "run_dir", "vec_mode",
                "checkpoint_every", "log_every", "eval_every", "eval_episodes"}


def list_algos() -> list[str]:
    return sorted(REGISTRY)


def algo_class(name: str) -> type[Algorithm]:
    if name not in REGISTRY:
        raise UserError(f"unknown algorithm {name!r}; valid: {', '.join(list_algos())}")
    return REGISTRY[name]


def preset_envs(algo: str) -> list[str]:
    """The env ids (and `*` patterns) that `algo`'s preset file tunes, in file order."""
    path = PRESET_DIR / f"{algo}.yaml"
    data = yaml.safe_load(path.read_text()) if path.is_file() else None
    return [k for k in data or {} if k != "default" and not k.startswith("_")]


def resolve(algo: str, env: str, overrides: dict[str, Any] | None = None,
            **run_flags: Any) -> tuple[type[Algorithm], RunConfig, Any]:
    """Defaults → preset for `env` → `overrides` (--set) → explicit run flags, then checked
    against the algorithm (`check_fit`) before anything is built."""
    cls = algo_class(algo)
    check_env_id(env)
    overrides = overrides or {}
    check_settings_exist(cls, {**overrides, **run_flags})
    run, cfg = RunConfig(env=env), cls.Config()
    preset = load_preset(PRESET_DIR / f"{algo}.yaml", env)
    run, cfg = apply_overrides(run, cfg, preset, f"preset {algo}.yaml [{env}]")
    run, cfg = apply_overrides(run, cfg, overrides, "--set")
    run, cfg = apply_overrides(run, cfg, run_flags, "option")
    given = overrides.keys() | run_flags.keys()
    if "eval_every" not in given and not cls.evaluates_continuing and is_continuing(env):
        run = dataclasses.replace(run, eval_every=0)  # a default interval no evaluation can use
    check_fit(cls, run, cfg, given)
    return cls, run, cfg


def check_settings_exist(cls: type[Algorithm], settings: dict[str, Any]) -> None:
    """Refuse a setting of other algorithms (e.g. --base-policy for ppo), naming whose it is."""
    own = {f.name for f in dataclasses.fields(RunConfig)} | {
        f.name for f in dataclasses.fields(cls.Config)}
    for key in settings.keys() - own:
        owners = [name for name, other in sorted(REGISTRY.items())
                  if key in {f.name for f in dataclasses.fields(other.Config)}]
        if owners:
            raise UserError(f"{key} is a setting of {', '.join(owners)}, not of {cls.name}; drop "
                            f"it (`ctrlrl train {cls.name} --help` lists {cls.name}'s settings)")


def check_fit(cls: type[Algorithm], run: RunConfig, cfg: Any, given: Set[str] = frozenset()
              ) -> None:
    """Refuse, in one line, a run whose env or settings the algorithm cannot use
    (`Algorithm.incompatibility`), naming the envs its presets tune where this env is not one;
    then a setting in `given` (those set explicitly) that the run would not use."""
    check_env_id(run.env)
    probe = gym.make(run.env)
    try:
        problem = cls.incompatibility(probe, run, cfg)
        unused = cls.unused_settings(probe, run, cfg)
    finally:
        probe.close()
    if problem is not None:
        tuned = preset_envs(cls.name)
        if tuned and not any(fnmatch.fnmatchcase(run.env, pattern) for pattern in tuned):
            problem += f" (envs with {cls.name} presets: {', '.join(tuned)})"
        raise UserError(problem)
    idle = [f"{key}={getattr(run, key, getattr(cfg, key, None))!r} ({unused[key]})"
            for key in sorted(given & unused.keys())]
    if idle:
        raise UserError(f"this {cls.name} run on {run.env} cannot use {'; '.join(idle)}: "
                        f"drop {'it' if len(idle) == 1 else 'them'}")


def make(algo: str, env: str = "Hopper-v5", overrides: dict[str, Any] | None = None,
         **run_flags: Any) -> Algorithm:
    """Build an algorithm ready to `learn()`. Keyword flags are RunConfig fields
    (seed, total_steps, ...); `overrides` may hold any RunConfig or algorithm config key."""
    cls, run, cfg = resolve(algo, env, overrides, **run_flags)
    return cls(run, cfg)


def load(path: str | Path, device: str | None = None, replay: bool = True) -> Algorithm:
    """An algorithm restored from a checkpoint file or a run dir, ready to `predict` or `learn`.

    `replay=False` skips the stored replay buffer: quicker and lighter when only acting.
    """
    ckpt = read_checkpoint(path)
    cls = algo_class(ckpt["algo"])
    check_fit(cls, *cls.checkpoint_config(ckpt))  # an edited env or setting: one line, not a crash
    return cls.from_checkpoint(ckpt, device, extra=replay)


def evaluate_heuristic(env: str, episodes: int = 10, seed: int = 0):
    """Returns of an env's scripted `heuristic_action` policy: one episode on each of `episodes`
    envs seeded seed, seed+1, … (the protocol ctrlrl uses for trained policies)."""
    import gymnasium as gym

    from ctrlrl.core.envs import VecEnv
    from ctrlrl.core.evaluation import evaluate

    check_env_id(env)
    if episodes < 1:
        raise UserError(f"--episodes {episodes}: evaluate at least one episode")
    probe = gym.make(env)  # the policy is the env's method: it reads the env's constants
    policy = getattr(probe.unwrapped, "heuristic_action", None)
    if policy is None:
        probe.close()
        raise UserError(f"{env} has no scripted heuristic policy (an env provides one as "
                        "`heuristic_action(obs)`); evaluate a trained run instead")
    vec = VecEnv(env, episodes)
    try:
        return evaluate(policy, vec, seed)
    finally:
        vec.close()
        probe.close()


def config_diffs(saved: dict[str, Any], cls: type[Algorithm], run: RunConfig, cfg: Any
                 ) -> list[str]:
    """Differences that matter between a run's saved config ({"run": ..., "config": ...}, as in
    its checkpoint or config.yaml) and a resolved config for `cls`: everything but runtime
    settings (`RUNTIME_KEYS`), as "key: run has X, this command has Y". A run records the
    precision `auto` resolved to, so `auto` here is resolved the same way before comparing."""
    saved_run = upgrade_run_dict(saved["run"])
    if run.precision == "auto" and saved_run.get("precision", "auto") != "auto":
        run = dataclasses.replace(run, precision=resolve_precision(
            "auto", cls.default_precision, resolve_device(run.device)))
    diffs = []
    for old_section, now in ((saved_run, to_dict(run)), (saved["config"], to_dict(cfg))):
        diffs += [f"{key}: run has {old!r}, this command has {now.get(key)!r}"
                  for key, old in old_section.items()
                  if old != now.get(key) and key not in RUNTIME_KEYS]
    return diffs


def _note_edited_config(config_file: Path, saved: dict[str, Any]) -> None:
    """Say so when a run's config.yaml no longer matches its checkpoint (edited by hand): resuming
    uses the checkpoint's config and writes config.yaml from it again."""
    if not config_file.is_file():
        return
    try:
        text = yaml.safe_load(config_file.read_text())
    except (OSError, *YAML_FAILURES):  # YAML_FAILURES' ValueError covers non-UTF-8 files
        text = None
    readable = isinstance(text, dict) and all(
        isinstance(text.get(section), dict) for section in ("run", "config"))
    written = {"run": upgrade_run_dict(text["run"]), "config": text["config"]} if readable else {}
    # a key the file lacks was written by an older version, not removed by hand
    edited = [key for section in ("run", "config")
              for key, value in saved[section].items()
              if key not in RUNTIME_KEYS and not (
                  readable and written[section].get(key, value) == value)]
    if edited:
        print(f"ctrlrl: note: {config_file} differs from the checkpoint's config "
              f"({', '.join(edited)}); resuming with the checkpoint's, which is written there again",
              file=sys.stderr)


def resume(run_dir: str | Path, /, algo: str | None = None, env: str | None = None,
           overrides: dict[str, Any] | None = None, **run_flags: Any) -> Algorithm:
    """Continue the run in `run_dir` from its last checkpoint.

    Options given here are applied on top of the run's saved config; changing anything but a
    runtime setting (`RUNTIME_KEYS`, e.g. a larger total_steps) is an error, not a silent change.
    """
    run_dir = Path(run_dir)
    if run_flags.get("run_dir") and Path(run_flags["run_dir"]).resolve() != run_dir.resolve():
        raise UserError(f"--resume {run_dir} continues in that folder; drop --run-dir "
                        f"{run_flags['run_dir']}")
    if not (run_dir / "checkpoints" / CHECKPOINT_NAME).is_file():
        raise UserError(f"--resume {run_dir}: no checkpoints/{CHECKPOINT_NAME} there; " + (
            f"the run stopped before its first checkpoint, start it again with --run-dir {run_dir}"
            if is_run_dir(run_dir) else
            "pass the run dir that `ctrlrl train` printed (it holds config.yaml and checkpoints/)"))
    # claimed before its checkpoint is read: a run still training elsewhere is refused here, not
    # cut back to a checkpoint that its next save replaces
    claim = claim_run_dir(run_dir)
    try:
        return _resume_claimed(run_dir, algo, env, overrides, run_flags)
    finally:
        if claim is not None:
            claim.release()  # the resumed algorithm holds its own claim until it has learnt


def _resume_claimed(run_dir: Path, algo: str | None, env: str | None,
                    overrides: dict[str, Any] | None, run_flags: dict[str, Any]) -> Algorithm:
    # the checkpoint's own config is what its weights were trained with; config.yaml is a copy
    # for people and tools to read, and may have been edited since
    ckpt = read_checkpoint(run_dir)
    if algo is not None and algo != ckpt["algo"]:
        raise UserError(f"--resume {run_dir}: that run is {ckpt['algo']!r}, not {algo!r}")
    cls = algo_class(ckpt["algo"])
    saved_run, saved_cfg = cls.checkpoint_config(ckpt)
    if env is not None and env != saved_run.env:
        raise UserError(f"--resume {run_dir}: that run is on {saved_run.env!r}, not {env!r}")
    check_settings_exist(cls, {**(overrides or {}), **run_flags})
    saved = {"run": to_dict(saved_run), "config": to_dict(saved_cfg)}
    run, cfg = apply_overrides(saved_run, saved_cfg, {**(overrides or {}), **run_flags}, "option")
    diffs = config_diffs(saved, cls, run, cfg)
    if diffs:
        raise UserError(f"--resume {run_dir}: config does not match ({'; '.join(diffs)}); "
                        "drop those options or start a new run")
    _note_edited_config(run_dir / "config.yaml", saved)
    check_fit(cls, run, cfg, (overrides or {}).keys() | run_flags.keys())
    algo_obj = cls(run, cfg)
    try:
        algo_obj.load_state(ckpt)
    except UserError:
        algo_obj.close()
        raise
    # the run's own budget again only finishes it (its final evaluation, if a stop cut that off)
    if run.total_steps != saved_run.total_steps and run.total_steps <= algo_obj.step:
        algo_obj.close()
        raise UserError(f"--resume {run_dir}: the run is already at step {algo_obj.step}; pass "
                        f"--total-steps above that to train further")
    try:
        algo_obj.setup_run_dir(run_dir, resuming=True)
    except UserError:
        algo_obj.close()
        raise
    return algo_obj
