"""Run configuration: one resolved `RunConfig` plus one algorithm config per run.

Resolution order, later wins: dataclass defaults → the algorithm's preset for the env
(`algos/presets/<algo>.yaml`) → `--set key=value` overrides → explicit CLI flags. The result is
written to `config.yaml` in the run directory and is what `--resume` checks against.

Every config field says what it means in a comment: at the end of its line, or on the comment
lines directly above it. `field_docs` reads those comments, so they are the one source of the
settings' descriptions (`ctrlrl describe ALGO`); a subclass that redefines a field without a
comment keeps its parent's.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import difflib
import fnmatch
import functools
import inspect
import io
import math
import platform
import sys
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import yaml

from ctrlrl.core.errors import UserError

_INT64 = 2**63


def check_choices(cfg: Any, **allowed: tuple[str, ...]) -> None:
    """Raise a UserError naming the first setting that is none of its allowed values
    (`check_choices(self, rule=("true", "semi"))`); called from `__post_init__` as `check_ranges`."""
    for key, choices in allowed.items():
        if getattr(cfg, key) not in choices:
            raise UserError(f"setting {key}={getattr(cfg, key)!r} is not known; use one of "
                            f"{', '.join(choices)}")


def check_ranges(cfg: Any, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = (),
                 fraction: tuple[str, ...] = (), widths: tuple[str, ...] = (),
                 episode_index: tuple[str, ...] = ()) -> None:
    """Raise a UserError naming the first setting outside its range.

    positive: > 0; non_negative: ≥ 0; fraction: in [0, 1]; widths: a non-empty list of
    positive layer sizes; episode_index: ≥ −1 (−1: every episode). Called from each config's
    `__post_init__`, so every way of building a config (defaults, presets, --set, checkpoints)
    is checked.
    """
    def bad(key: str, need: str) -> UserError:
        return UserError(f"setting {key}={getattr(cfg, key)!r} is out of range: need {need}")

    for key in positive:
        if not getattr(cfg, key) > 0:
            raise bad(key, "a value > 0")
    for key in non_negative:
        if not getattr(cfg, key) >= 0:
            raise bad(key, "a value >= 0")
    for key in fraction:
        if not 0 <= getattr(cfg, key) <= 1:
            raise bad(key, "a value in [0, 1]")
    for key in widths:
        sizes = getattr(cfg, key)
        if not sizes or any(int(w) <= 0 for w in sizes):
            raise bad(key, "a non-empty list of positive layer sizes, e.g. [256,256]")
    for key in episode_index:
        if not getattr(cfg, key) >= -1:
            raise bad(key, "an episode index >= 0, or -1 for the whole dataset")


MAX_THREADS = 1024
COMPILE_MODES = ("eager", "step", "graph")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class RunConfig:
    """Everything about a run that is not an algorithm hyperparameter."""

    # gymnasium env id, e.g. Hopper-v5 (`ctrlrl list` shows the ids that can be made here)
    env: str = "Hopper-v5"
    seed: int = 0  # seeds torch, numpy and the envs (on CPU the same seed repeats a run bit for bit)
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    total_steps: int = 1_000_000  # environment steps, summed over parallel envs (offline: gradient steps)
    dataset: str = ""  # offline algorithms' data: PATH.hdf5 | d4rl:<task> | minari:<id>
    # D4RL-format files: keep the rows flagged timeouts (bootstrapped from next_observations)
    # instead of dropping them as D4RL's qlearning_dataset does
    keep_timeouts: bool = False
    n_envs: int = 1  # envs stepped in parallel
    vec_mode: str = "sync"  # sync (all envs in this process) | async (a subprocess per env)
    normalize_obs: bool = False  # running mean/std of observations, saved with checkpoints
    normalize_reward: bool = False  # scale rewards by the std of the discounted return
    clip_obs: float = 10.0  # clip normalised observations to ±clip_obs
    eval_every: int = 10_000  # env steps between evaluations; 0 disables
    eval_episodes: int = 10  # deterministic episodes per evaluation
    checkpoint_every: int = 100_000  # env steps between checkpoints (also written at the end)
    log_every: int = 2_048  # env steps between metric dumps (on-policy: every iteration)
    threads: int = 1  # torch CPU threads; 1 is fastest for small MLPs
    # eager | step: torch.compile the update (off-policy and offline learners: the whole
    # gradient step) | graph: off-policy and offline updates replayed from CUDA graphs (CUDA)
    compile: str = "eager"
    # fp32 | bf16: hidden layers in bfloat16 (float32 weights, optimiser, output layers, losses)
    # | auto: the algorithm's default, bf16 only where the device runs it fast
    precision: str = "auto"
    run_dir: str = ""  # output folder; empty: runs/<env>/<algo>/<seed>-<time>
    tensorboard: bool = True  # write TensorBoard event files beside metrics.jsonl
    progress: bool = True  # console progress bar

    def __post_init__(self) -> None:
        check_ranges(self, positive=("n_envs", "eval_episodes", "threads", "clip_obs"),
                     non_negative=("seed", "total_steps", "eval_every", "checkpoint_every",
                                   "log_every"))
        check_choices(self, precision=PRECISIONS, compile=COMPILE_MODES)
        if self.threads > MAX_THREADS:  # torch's OpenMP pool crashes the process far above it
            raise UserError(f"setting threads={self.threads} is out of range: need at most "
                            f"{MAX_THREADS} (more threads than cores only slows a run down)")


def config_fields(cfg_type: type) -> dict[str, Any]:
    """Field name → resolved type for a config dataclass."""
    hints = typing.get_type_hints(cfg_type)
    return {f.name: hints[f.name] for f in fields(cfg_type)}


@functools.cache
def field_docs(cfg_type: type) -> dict[str, str]:
    """Field name → its one-line meaning, from the comments in the config classes' source
    ("" for a field without one, or where the source cannot be read)."""
    docs: dict[str, str] = {}
    for klass in reversed(cfg_type.__mro__):  # base classes first: a subclass's comment wins
        if dataclasses.is_dataclass(klass):
            docs.update({k: v for k, v in _field_comments(klass).items() if v})
    return {f.name: docs.get(f.name, "") for f in fields(cfg_type)}


def _field_comments(klass: type) -> dict[str, str]:
    """The comments of the fields annotated in `klass`'s own body: those on the lines directly
    above a field, then the one at the end of its line."""
    try:
        source = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):  # no source shipped (e.g. a frozen build)
        return {}
    comments, code_lines = {}, set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                              tokenize.ENDMARKER):
            code_lines.add(tok.start[0])
    (cls_node,) = ast.parse(source).body
    out = {}
    for node in cls_node.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            above, line = [], node.lineno - 1
            while line in comments and line not in code_lines:
                above.insert(0, comments[line])
                line -= 1
            trailing = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
            out[node.target.id] = " ".join(above + trailing[:1])
    return out


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Coerce a YAML-parsed value to a dataclass field type, or raise a UserError."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        problems = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError as exc:
                problems.append(str(exc))
        raise UserError(problems[0] + (" (or null)" if type(None) in args else ""))
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"setting {key}={value!r}: expected a list like [256,256]")
        (item,) = {a for a in typing.get_args(typ) if a is not Ellipsis} or {Any}
        items = [v if item is Any else _coerce(v, item, key) for v in value]
        return tuple(items) if origin is tuple else items
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"setting {key}={value!r}: expected true or false")
    if typ in (int, float) and isinstance(value, str):
        # YAML 1.1 (PyYAML) reads `1e-4` and `1e6` as strings: a float needs a dot there
        try:
            value = float(value)
        except ValueError:
            raise UserError(f"setting {key}={value!r}: expected a number") from None
    if typ is int:
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())  # not NaN, inf
        if isinstance(value, bool) or not whole:
            raise UserError(f"setting {key}={value!r}: expected an integer")
        # torch, numpy and gymnasium take seeds, sizes and step counts as 64-bit integers
        if not -_INT64 <= value < _INT64:
            raise UserError(f"setting {key}={value!r}: expected an integer within ±9.2e18 (64 bits)")
        return int(value)
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"setting {key}={value!r}: expected a number")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond float64's range
            raise UserError(f"setting {key}={value!r}: expected a number within ±1.8e308") from None
        if math.isnan(number):
            raise UserError(f"setting {key}={value!r}: expected a number, not NaN")
        return number
    if typ is str:
        # a YAML scalar is text as written; YAML reads `2024-05-01` as a date and `1.5` as a number
        if isinstance(value, bool) or not isinstance(value, (str, int, float, datetime.date)):
            raise UserError(f"setting {key}={value!r}: expected text; quote it, e.g. {key}='...'")
        return str(value)
    return value


# what yaml.safe_load raises on text it cannot read: YAMLError, ValueError for an impossible date
# (2001-13-45) or an integer of over 4300 digits, RecursionError for absurdly deep nesting
YAML_FAILURES = (yaml.YAMLError, ValueError, RecursionError)


def yaml_problem(exc: BaseException) -> str:
    """What a YAML_FAILURES exception says, in one line: the problem and its line and column."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem or exc.context} at line {mark.line + 1}, column {mark.column + 1}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def parse_set(items: list[str]) -> dict[str, Any]:
    """Parse `key=value` strings; values are YAML (`3e-4`, `true`, `[64,64]`), or the text itself
    when it is not YAML (`[1,`)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set learning_rate=3e-4")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except YAML_FAILURES:
            out[key.strip()] = raw
    return out


def read_run_config(path: Path) -> dict[str, Any]:
    """A run dir's config.yaml as ctrlrl writes it ({algo, run: {env, ...}, config}); a damaged or
    hand-edited file ends in one line naming it."""
    file = path / "config.yaml"
    try:
        data = yaml.safe_load(file.read_text())
    except (OSError, *YAML_FAILURES) as exc:
        problem = exc.strerror if isinstance(exc, OSError) else yaml_problem(exc)
        raise UserError(f"{file} cannot be read ({problem}); restore it from the run's checkpoint "
                        "with `ctrlrl train ALGO --resume RUN_DIR`, or leave the run out") from None
    if not (isinstance(data, dict) and isinstance(data.get("algo"), str)
            and isinstance(data.get("run"), dict) and isinstance(data["run"].get("env"), str)
            and isinstance(data.get("config"), dict)):
        raise UserError(f"{file} is not a ctrlrl run config (needs algo, run.env and config); "
                        "restore it with `ctrlrl train ALGO --resume RUN_DIR`, or leave the run out")
    return data


def apply_overrides(
    run: RunConfig, algo_cfg: Any, overrides: dict[str, Any], source: str
) -> tuple[RunConfig, Any]:
    """Return copies of (run, algo_cfg) with `overrides` applied to whichever holds each key."""
    run_types, algo_types = config_fields(RunConfig), config_fields(type(algo_cfg))
    run_changes, algo_changes = {}, {}
    for key, value in overrides.items():
        if key in algo_types:
            algo_changes[key] = _coerce(value, algo_types[key], key)
        elif key in run_types:
            run_changes[key] = _coerce(value, run_types[key], key)
        else:
            valid = sorted(algo_types) + sorted(run_types)
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(f"{source}: unknown key {key!r}{hint}; valid keys: {', '.join(valid)} "
                            "(`ctrlrl describe ALGO` explains each)")
    return dataclasses.replace(run, **run_changes), dataclasses.replace(algo_cfg, **algo_changes)


def load_preset(path: Path, env_id: str) -> dict[str, Any]:
    """Per-env overrides from a preset YAML. Top-level keys starting with `_` only hold anchors;
    `default` applies to every env, a key with `*` to every env id it matches (fnmatch, in file
    order), and the env's own entry wins over both."""
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"preset {path} cannot be read ({exc}); fix or restore the file") from None
    except YAML_FAILURES as exc:  # a ValueError also where the file is not UTF-8 text
        raise UserError(f"preset {path} is not valid YAML ({yaml_problem(exc)}); fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"preset {path} holds a {type(data).__name__}; it must be a mapping of "
                        "env id: {key: value}, e.g. `Hopper-v5: {learning_rate: 3.0e-4}`")
    patterns = [k for k in data if isinstance(k, str) and "*" in k and fnmatch.fnmatchcase(env_id, k)]
    merged: dict[str, Any] = {}
    for name in ["default", *patterns, env_id]:
        entry = data.get(name, {})
        if not isinstance(entry, dict):
            raise UserError(f"preset {path}: entry {name!r} must be a mapping of key: value")
        merged.update(entry)
    return merged


def resolve_device(requested: str) -> torch.device:
    """`auto` picks CUDA when present; an explicit `cuda` never falls back to CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserError(f"--device {requested!r} is not a device; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"--device {requested} asked for CUDA but torch sees no CUDA device "
            f"(torch {torch.__version__}); use --device cpu or install a CUDA build of torch"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {requested}: torch sees {torch.cuda.device_count()} CUDA "
                        "device(s); pick an index below that")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {requested!r} is not supported; use auto, cpu or cuda")
    return device


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bfloat16 matmuls beat float32 on `device`: CUDA with bf16 support, or a CPU with
    bf16 instructions (x86 avx512_bf16 or AMX; measured 4x float32 at 256³, one thread)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    try:  # torch's check also passes plain AVX-512, where oneDNN converts to float32 and back
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: trust torch's check
        return True
    return platform.machine() not in ("x86_64", "AMD64") or any(
        flag in flags for flag in (" avx512_bf16", " amx_bf16"))


def resolve_precision(requested: str, default: str, device: torch.device) -> str:
    """fp32 or bf16 for a run: `auto` is the algorithm's `default`, except that it falls back to
    fp32 where bf16 would be slow; an explicit bf16 on such a device runs (in software) with a
    note, so a run resumes in the precision it was trained in on any machine."""
    if requested == "auto":
        return default if default == "fp32" or bf16_is_fast(device) else "fp32"
    if requested == "bf16" and not bf16_is_fast(device):
        print(f"ctrlrl: note: precision=bf16 on {device}, which has no fast bfloat16 matmuls "
              "(CPU: avx512_bf16 or AMX), runs slower than fp32; precision=fp32 is faster here",
              file=sys.stderr)
    return requested


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass as plain YAML-able values (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def upgrade_run_dict(data: dict[str, Any]) -> dict[str, Any]:
    """A saved run config in today's terms. Run dirs outlive versions (sweeps resume them), and
    before `compile` took a mode it was a switch: off is `eager`, on is `step`."""
    if isinstance(data.get("compile"), bool):
        return {**data, "compile": "step" if data["compile"] else "eager"}
    return data


def from_dict(cfg_type: type, data: dict[str, Any], source: str) -> Any:
    """Rebuild a config dataclass from `to_dict` output, checking keys, types and ranges; every
    problem names `source` (the file it came from)."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: holds a {type(data).__name__}, not a mapping of setting: value; "
                        "restore the file")
    if cfg_type is RunConfig:
        data = upgrade_run_dict(data)
    known = config_fields(cfg_type)
    unknown = sorted(map(str, set(data) - set(known)))
    if unknown:
        raise UserError(f"{source}: unknown keys {unknown} for {cfg_type.__name__}")
    try:
        return cfg_type(**{k: _coerce(v, known[k], k) for k, v in data.items()})
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
