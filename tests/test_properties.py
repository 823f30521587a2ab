"""Property tests (hypothesis): whatever a user feeds the dataset loaders, `--set` and the YAML
readers, the result is a valid load or one `UserError` line naming the problem, never another
exception. Malformed inputs are built from a valid one by a few drawn mutations, so examples stay
small and every kind of damage is reached often.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import string
import tempfile
import types
import typing
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import yaml
from conftest import ENV, OFFLINE_DATA, assert_one_line_error
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ctrlrl import api
from ctrlrl.algos.off_policy import OfflineAlgorithm
from ctrlrl.core.config import RunConfig, apply_overrides, config_fields, from_dict, load_preset, parse_set
from ctrlrl.core.errors import UserError
from ctrlrl.data import Dataset, dataset_env, load

# the same examples on every run (no flaky CI) and no example database left in the repository;
# tmp_path is shared by a test's examples, each of which works in its own folder below it
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

ALGOS = api.list_algos()
# an env each algorithm resolves on (the ones the fast tests train on)
ALGO_ENV = {**ENV, "odice-il": "Hopper-v5", "random-policy": "ctrlrl/RiverSwim-v0"}
INT64 = 2**63


def outcome(call: Any, *args: Any, names: tuple[str, ...] = ()) -> Any:
    """call(*args), or None when it raised a one-line UserError that mentions every one of `names`."""
    try:
        result = call(*args)
    except UserError as exc:
        message = str(exc)
        assert message.strip() and "\n" not in message, repr(message)
        for name in names:
            assert name in message, f"{name!r} not in {message!r}"
        event(f"{call.__name__}: refused")  # `pytest --hypothesis-show-statistics` counts them
        return None
    event(f"{call.__name__}: accepted")
    return result


# ---------------------------------------------------------------- arbitrary values


DTYPES = st.sampled_from(["<f2", "<f4", ">f8", "<i1", "<i8", "<u8", "|b1", "<c8"]) | hnp.byte_string_dtypes(
    max_len=3)


def arrays() -> st.SearchStrategy[np.ndarray]:
    """Any small numeric, boolean, complex or byte-string array of 0-3 dimensions, NaN/inf included."""
    return hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))


def hdf5_values() -> st.SearchStrategy[Any]:
    return arrays() | st.text(max_size=6) | st.integers() | st.floats()


def write_hdf5(path: Path, data: dict[str, Any]) -> None:
    """Each value as an HDF5 dataset ('a/b' keys nest in groups); a key whose path collides with an
    earlier one (a value where a group is, or the reverse) is left out, as a file cannot hold both."""
    with h5py.File(path, "w") as f:
        for key, value in data.items():
            try:
                if isinstance(value, str):
                    f.create_dataset(key, data=value, dtype=h5py.string_dtype())
                else:
                    f.create_dataset(key, data=value)
            except (ValueError, TypeError):
                continue


@st.composite
def damaged_file(draw: st.DrawFn, path: Path) -> None:
    """Leave `path` as written, cut short, with bytes overwritten, or replaced by arbitrary bytes."""
    damage = draw(st.sampled_from(["none", "none", "none", "truncate", "overwrite", "bytes"]))
    raw = path.read_bytes()
    last = max(len(raw) - 1, 0)  # a file an earlier damage left empty stays in range
    if damage == "truncate":
        path.write_bytes(raw[: draw(st.integers(0, last))])
    elif damage == "overwrite":
        at = draw(st.integers(0, last))
        patch = draw(st.binary(min_size=1, max_size=64))
        path.write_bytes(raw[:at] + patch + raw[at + len(patch):])
    elif damage == "bytes":
        path.write_bytes(draw(st.binary(max_size=200)))


# ---------------------------------------------------------------- D4RL-format files


@st.composite
def d4rl_data(draw: st.DrawFn) -> dict[str, Any]:
    """A D4RL-format dict, mostly Pendulum-sized (3-dim observations, 1-dim actions in [-2, 2]), then
    up to three mutations: a key dropped, replaced by any value, nested one level down, cut short,
    cast to another dtype, given NaN/inf or a value beyond float32, or an extra key."""
    n = draw(st.integers(0, 6))
    obs_dim, act_dim = draw(st.sampled_from([(3, 1), (3, 1), (2, 1), (3, 2), (0, 1)]))
    small = st.floats(-2, 2, width=32)
    data: dict[str, Any] = {
        "observations": draw(hnp.arrays(np.float32, (n, obs_dim), elements=small)),
        "actions": draw(hnp.arrays(np.float32, (n, act_dim), elements=small)),
        "rewards": draw(hnp.arrays(np.float32, n, elements=small)),
        "terminals": draw(hnp.arrays(np.float32, n, elements=st.sampled_from([0.0, 1.0]))),
        "timeouts": draw(hnp.arrays(np.bool_, n)),
    }
    if draw(st.booleans()):
        data["next_observations"] = draw(hnp.arrays(np.float32, (n, obs_dim), elements=small))
    if draw(st.booleans()):
        data["metadata/env_id"] = draw(st.sampled_from(["Pendulum-v1", "Hopper-v5", "NoSuch-v0", ""])
                                       | st.text(max_size=8) | arrays())
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3]))):
        key = draw(st.sampled_from(sorted(data) or ["observations"]))
        mutation = draw(st.sampled_from(["drop", "replace", "nest", "short", "cast", "nonfinite", "extra",
                                         "huge"]))
        value = data.get(key)
        numeric = isinstance(value, np.ndarray) and value.dtype.kind in "biufc"
        if mutation == "drop":
            data.pop(key, None)
        elif mutation == "replace":
            data[key] = draw(hdf5_values())
        elif mutation == "nest":
            data[f"{key}/{draw(st.sampled_from(['x', key]))}"] = data.pop(key, 0)
        elif mutation == "short" and isinstance(value, np.ndarray) and value.ndim:
            data[key] = value[: draw(st.integers(0, max(len(value) - 1, 0)))]
        elif mutation == "cast" and numeric:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data[key] = value.astype(draw(DTYPES))
        elif mutation in ("nonfinite", "huge") and numeric and value.size:
            bad = draw(st.sampled_from([np.nan, np.inf, -np.inf])) if mutation == "nonfinite" else 1e300
            value = np.real(value).astype(np.float64)
            value.flat[draw(st.integers(0, value.size - 1))] = bad
            data[key] = value
        elif mutation == "extra":
            data[draw(st.text(string.ascii_lowercase + "/", min_size=1, max_size=6))] = draw(hdf5_values())
    return data


def check_dataset(data: Dataset, env_id: str | None) -> None:
    """What every consumer of a loaded dataset relies on, and its fit to the env asked for (here
    always Pendulum: 3-dim observations, 1-dim actions in [-2, 2])."""
    n = len(data)
    assert n > 0
    assert data.observations.ndim == 2 and data.observations.shape[1] > 0
    assert data.actions.ndim == 2 and data.actions.shape[0] == n and data.actions.shape[1] > 0
    assert data.next_observations.shape == data.observations.shape and len(data.observations) == n
    assert data.rewards.shape == data.terminals.shape == (n,)
    for arr in (data.observations, data.actions, data.rewards, data.next_observations, data.terminals):
        assert arr.dtype == np.float32 and np.isfinite(arr).all()
    assert set(np.unique(data.terminals)) <= {0.0, 1.0}
    assert data.episode_returns.dtype == np.float64 and data.episode_returns.ndim == 1
    assert np.isfinite(data.episode_returns).all()
    if env_id is not None:
        assert data.env_id == env_id and data.observations.shape[1] == 3 and data.actions.shape[1] == 1
        assert (np.abs(data.actions) <= 2 + 1e-4).all()


@SETTINGS
@given(data=d4rl_data(), env_id=st.sampled_from([None, "Pendulum-v1"]), damage=st.data())
def test_any_d4rl_file_loads_valid_or_says_why_in_one_line(tmp_path, data, env_id, damage):
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    path = folder / "data.hdf5"
    write_hdf5(path, data)
    damage.draw(damaged_file(path))
    outcome(dataset_env, str(path), names=(str(path),))  # what `train --dataset` reads to pick the env
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a given env that differs from the one the file names
        dataset = outcome(load, str(path), env_id, names=(str(path),))
    if dataset is not None:
        check_dataset(dataset, env_id)


def test_d4rl_rewards_beyond_float32_are_refused(tmp_path):
    """Found by the property above: a finite float64 beyond float32's range became inf on loading."""
    path = tmp_path / "big.hdf5"
    write_hdf5(path, {"observations": np.zeros((3, 2)), "actions": np.zeros((3, 1)),
                      "rewards": np.array([0.0, 1e300, 0.0]), "terminals": np.zeros(3),
                      "timeouts": np.zeros(3)})
    with pytest.raises(UserError, match=r"'rewards' has a value beyond float32's range .* at index 1;"):
        load(str(path))


def test_d4rl_arrays_beyond_memory_are_refused(tmp_path):
    """HDF5 keeps the size, not the data, of chunks never written: a small file can claim 8 TB."""
    path = tmp_path / "huge.hdf5"
    with h5py.File(path, "w") as f:
        f.create_dataset("observations", shape=(10**12, 1), dtype="f8", chunks=(1024, 1))
    with pytest.raises(UserError, match="larger than this machine's memory"):
        load(str(path))


# ---------------------------------------------------------------- Minari datasets


@pytest.fixture(scope="module")
def minari_store(tmp_path_factory) -> Path:
    """A valid two-episode Pendulum Minari dataset 'test/fuzz-v0', written by minari itself."""
    import gymnasium as gym
    import minari
    from minari.data_collector.episode_buffer import EpisodeBuffer

    store = tmp_path_factory.mktemp("minari")
    env = gym.make("Pendulum-v1")
    obs = np.stack([env.reset(seed=0)[0]] * 4).astype(np.float32)
    buffers = [EpisodeBuffer(observations=obs, actions=np.zeros((3, 1), np.float32), rewards=[-1.0] * 3,
                             terminations=[False, False, end], truncations=[False] * 3, infos={})
               for end in (True, False)]
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # minari asks for author, description, ...
        mp.setenv("MINARI_DATASETS_PATH", str(store))
        minari.create_dataset_from_buffers("test/fuzz-v0", buffers, env=env, ref_min_score=-100.0,
                                           ref_max_score=0.0)
    env.close()
    return store


SPACES = [{"type": "Discrete", "dtype": "int64", "n": 3, "start": 0},
          {"type": "Box", "dtype": "float32", "shape": [2, 2], "low": [[-1, -1], [-1, -1]],
           "high": [[1, 1], [1, 1]]},
          {"type": "Box", "dtype": "float32", "shape": [5], "low": [-1] * 5, "high": [1] * 5},
          {"type": "Dict", "subspaces": {}}, {"type": "Nope"}, {}]
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                  max_size=3),
                    max_leaves=6)


@st.composite
def damaged_minari(draw: st.DrawFn, folder: Path) -> None:
    """Up to three kinds of damage to the Minari dataset in `folder`: its metadata.json (arbitrary text,
    a key dropped or given any JSON value, another space or env spec), its episode file (a member
    dropped, replaced by any array, by one of its shape and another dtype, or by a group; an episode
    dropped, a group added; the file cut short, overwritten or deleted), or the namespace's metadata."""
    data = folder / "data"
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(["metadata", "metadata", "episodes", "episodes", "file", "namespace"]))
        if target == "metadata" and (data / "metadata.json").is_file():
            try:
                meta = json.loads((data / "metadata.json").read_text())
            except ValueError:
                continue
            if not isinstance(meta, dict):
                continue
            key = draw(st.sampled_from(sorted(meta) or ["total_steps"]))
            change = draw(st.sampled_from(["text", "drop", "json", "space", "env"]))
            if change == "text":
                (data / "metadata.json").write_text(draw(st.text(max_size=40)))
                continue
            if change == "drop":
                meta.pop(key, None)
            elif change == "json":
                meta[key] = draw(JSON)
            elif change == "space":
                space = draw(st.sampled_from(SPACES))
                meta[draw(st.sampled_from(["observation_space", "action_space"]))] = json.dumps(space)
            else:
                env = draw(st.sampled_from(["NoSuch-v0", "Hopper-v5", "", "ctrlrl/LotSizing-v0"]))
                meta["env_spec"] = draw(st.sampled_from([json.dumps({"id": env}), "{", None,
                                                         json.dumps(env)]))
            (data / "metadata.json").write_text(json.dumps(meta))
        elif target == "episodes" and (data / "main_data.hdf5").is_file():
            try:
                f = h5py.File(data / "main_data.hdf5", "a")
            except OSError:  # a file an earlier damage broke stays as it is
                continue
            with f, contextlib.suppress(OSError, KeyError, RuntimeError, ValueError):
                episode = draw(st.sampled_from(sorted(f) or ["episode_0"]))
                member = draw(st.sampled_from(["observations", "actions", "rewards", "terminations",
                                               "truncations", "infos"]))
                change = draw(st.sampled_from(["drop", "replace", "retype", "group", "drop_episode",
                                               "extra"]))
                path = f"{episode}/{member}"
                shape = f[path].shape if isinstance(f.get(path), h5py.Dataset) else (3,)
                if change in ("drop", "replace", "retype", "group") and path in f:
                    del f[path]
                if change == "replace" and episode in f:
                    f.create_dataset(path, data=draw(arrays()))
                elif change == "retype" and episode in f:  # the right shape, any dtype and values
                    f.create_dataset(path, data=draw(hnp.arrays(DTYPES, shape)))
                elif change == "group" and episode in f:
                    f.create_group(path).create_dataset("x", data=np.zeros(shape))
                elif change == "drop_episode" and episode in f:
                    del f[episode]
                elif change == "extra":
                    f.require_group(draw(st.sampled_from(["episode_9", "other", "episode_x"])))
        elif target == "file" and (data / "main_data.hdf5").is_file():
            if draw(st.booleans()):
                (data / "main_data.hdf5").unlink()
            else:
                draw(damaged_file(data / "main_data.hdf5"))
        elif target == "namespace":
            (folder.parent / "namespace_metadata.json").write_text(draw(st.text(max_size=20)))


@SETTINGS
@given(env_id=st.sampled_from([None, "Pendulum-v1"]), damage=st.data())
def test_any_damaged_minari_dataset_loads_valid_or_says_why_in_one_line(tmp_path, monkeypatch, minari_store,
                                                                         env_id, damage):
    store = Path(tempfile.mkdtemp(dir=tmp_path))
    shutil.copytree(minari_store, store, dirs_exist_ok=True)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
    damage.draw(damaged_minari(store / "test" / "fuzz-v0"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome(dataset_env, "minari:test/fuzz-v0", names=("minari:test/fuzz-v0",))
        dataset = outcome(load, "minari:test/fuzz-v0", env_id, names=("minari:test/fuzz-v0",))
    if dataset is not None:
        check_dataset(dataset, env_id)


def _set_member(data: Path, path: str, value: Any) -> None:
    with h5py.File(data / "main_data.hdf5", "a") as f:
        del f[path]
        f.create_dataset(path, data=value)


def _set_metadata(data: Path, key: str, value: Any) -> None:
    meta = json.loads((data / "metadata.json").read_text())
    (data / "metadata.json").write_text(json.dumps({**meta, key: value}))


@pytest.mark.parametrize(("damage", "needle"), [
    (lambda d: _set_member(d, "episode_1/terminations", np.array([0.0, 0.5, 1.0])),
     "episode 1's terminations hold values other than 0 and 1"),
    (lambda d: _set_member(d, "episode_0/observations", np.full((4, 3), b"x")),
     "episode 0's observations hold |S1, not numbers"),
    (lambda d: _set_member(d, "episode_0/actions", np.zeros((3, 2), np.float32)),
     "episode 0 has observations (4, 3), actions (3, 2)"),
    (lambda d: _set_metadata(d, "ref_max_score", "high"), "ref_max_score='high' cannot normalise"),
    (lambda d: _set_metadata(d, "dataset_id", 7), "minari cannot read it"),
    # minari would first allocate an index per claimed episode: 8 TB here
    (lambda d: _set_metadata(d, "total_episodes", 10**12), "claims 1000000000000 episodes"),
])
def test_minari_damage_the_properties_found(tmp_path, monkeypatch, minari_store, damage, needle):
    """Damage a load would otherwise accept silently (0.5 as a termination), or crash on."""
    shutil.copytree(minari_store, tmp_path, dirs_exist_ok=True)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    damage(tmp_path / "test" / "fuzz-v0" / "data")
    with pytest.raises(UserError, match=re.escape(needle)):
        load("minari:test/fuzz-v0")


# ---------------------------------------------------------------- --set and YAML files


# YAML that is broken, hostile or surprising: unclosed and empty collections, tags that would run
# code, values beyond float64 and int64, NaN, dates (an impossible one), keys without values,
# nesting deeper than the parser's recursion limit, an integer beyond float64
YAMLISH = ["[1,", "{a: }", "{a: 1}", "!!python/object:os.system", "!!python/name:os.system", "1e400",
           "-1e400", "1e20", "99999999999999999999999", "nan", ".nan", ".inf", "-.inf", "0x10", "1_000",
           "2001-01-01", "2001-13-45", "~", "", "null", "yes", "[]", "[0]", "[-1, 2]", "[1e400]", "[.nan]",
           "[[1]]", "[true]", "[64, 64]", "'quoted'", '"open', "&a 1", "*a", "!!binary aGk=", "!!set {a}",
           "3e-4", "1.5", "-0", "true", "a=b", "=", "\x00", "é", "- 1\n- 2", "!!int x", "[" * 2000,
           "9" * 400]


def field_names(algo: str) -> list[str]:
    return sorted(config_fields(api.algo_class(algo).Config)) + sorted(config_fields(RunConfig))


def conforms(value: Any, typ: Any) -> bool:
    """`value` is of the declared field type `typ` (no NaN floats, ints that fit int64)."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, arg) for arg in args)
    if origin is tuple:
        return isinstance(value, tuple) and all(conforms(v, args[0]) for v in value)
    if typ is type(None):
        return value is None
    if typ is float:
        return type(value) is float and not math.isnan(value)
    if typ is int:
        return type(value) is int and -INT64 <= value < INT64
    return type(value) is typ


def check_configs(run: RunConfig, cfg: Any) -> None:
    for conf in (run, cfg):
        for key, typ in config_fields(type(conf)).items():
            assert conforms(getattr(conf, key), typ), f"{key}={getattr(conf, key)!r} is not {typ}"


def mostly(common: st.SearchStrategy[Any], rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`common` three times in four, else `rare`: malformed input, yet enough of it well-formed to
    reach the checks behind the first one."""
    return st.integers(0, 3).flatmap(lambda i: common if i else rare)


# values each kind of setting accepts, beside the hostile ones
PLAUSIBLE = ["1", "64", "0.5", "3e-4", "true", "false", "[32, 32]", "tanh", "null", "runs/x"]


@st.composite
def set_items(draw: st.DrawFn, algo: str) -> list[str]:
    """`--set` arguments: mostly KEY=VALUE with a real key (else any text) and a plausible, tricky
    or arbitrary value; else any text at all."""
    key = mostly(st.sampled_from(field_names(algo)), st.text(max_size=5))
    value = (st.sampled_from(PLAUSIBLE) | st.sampled_from(YAMLISH) | st.text(max_size=10)
             | st.integers().map(str) | st.floats().map(repr))
    item = mostly(st.builds(lambda k, v: f"{k}={v}", key, value), st.text(max_size=10))
    return draw(st.lists(item, max_size=3))


def base_overrides(algo: str) -> dict[str, Any]:
    """What an algorithm needs to resolve at all (offline ones: a dataset)."""
    return {"dataset": str(OFFLINE_DATA)} if issubclass(api.algo_class(algo), OfflineAlgorithm) else {}


@settings(SETTINGS, max_examples=250)
@given(algo=st.sampled_from(ALGOS), data=st.data())
def test_any_set_argument_resolves_typed_or_says_why_in_one_line(algo, data):
    items = data.draw(set_items(algo))
    overrides = outcome(parse_set, items)
    if overrides is None:
        return
    resolved = outcome(api.resolve, algo, ALGO_ENV[algo], {**base_overrides(algo), **overrides})
    if resolved is not None:
        _, run, cfg = resolved
        check_configs(run, cfg)
        for key, value in overrides.items():  # and every setting given took effect
            conf = cfg if hasattr(cfg, key) else run
            assert getattr(conf, key) == as_field(value, config_fields(type(conf))[key]), key


def as_field(value: Any, typ: Any) -> Any:
    """The value a YAML-parsed `--set` value must give a field of type `typ`, where it is accepted."""
    if typ is str:
        return str(value)
    if isinstance(value, list):
        return tuple(value)
    return float(value) if isinstance(value, str) else value  # `1e-4`: YAML 1.1 keeps it text


@pytest.mark.parametrize("algo", ALGOS)
def test_every_algorithm_resolves_on_its_test_env(algo):
    """The property above explores each algorithm only if it resolves without --set at all."""
    _, run, cfg = api.resolve(algo, ALGO_ENV[algo], base_overrides(algo))
    check_configs(run, cfg)


@pytest.mark.parametrize(("item", "needle"), [
    ("seed=.nan", "seed=nan: expected an integer"), ("seed=1e400", "seed=inf: expected an integer"),
    ("total_steps=1e20", "total_steps=1e+20: expected an integer"),
    ("hidden_sizes=[1e400]", "hidden_sizes=inf: expected an integer"),
    ("learning_rate=nan", "learning_rate=nan: expected a number, not NaN"),
    ("env=[1]", "env=[1]: expected text"), ("run_dir=", "run_dir=None: expected text"),
    ("dataset=2001-13-45", None), ("device={a: }", "device={'a': None}: expected text"),
    (" =3", "--set ' =3': expected key=value"),
    ("learning_rate=" + "9" * 400, "expected a number within ±1.8e308")])
def test_set_values_found_by_the_properties(item, needle, tmp_path, capsys):
    """Values the properties found crashing or silently mistyped: each refused in one line, or (an
    impossible date) kept as the text it is."""
    from ctrlrl import cli

    if needle is None:
        assert parse_set([item]) == {"dataset": "2001-13-45"}
        return
    # a value wrongly accepted trains for no steps, in tmp_path
    code = cli.main(["train", "ppo", "--env", "Pendulum-v1", "--total-steps", "0", "--run-dir",
                     str(tmp_path / "run"), "--set", "tensorboard=false", "--set", item])
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, needle)


YAML_KEYS = st.sampled_from(["default", "Pendulum-v1", "Pendulum-*", "*", "_anchors", "Hopper-v5"]) | (
    st.text(max_size=4) | st.integers())
YAML_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(YAML_KEYS, inner,
                                                                                         max_size=3),
                           max_leaves=8)
SETTING_VALUES = st.sampled_from([yaml.safe_load(text) for text in PLAUSIBLE]) | YAML_VALUES


def settings_of(algo: str) -> st.SearchStrategy[dict[Any, Any]]:
    """A mapping of setting: value as a preset entry or a saved config holds, keys mostly real."""
    keys = mostly(st.sampled_from(field_names(algo)), YAML_KEYS)
    return st.dictionaries(keys, SETTING_VALUES, max_size=4)


def preset_files(algo: str) -> st.SearchStrategy[bytes]:
    """Mostly a YAML document shaped like a preset (env id: settings), else any YAML document,
    arbitrary bytes or text, or a tricky YAML line."""
    preset = st.dictionaries(YAML_KEYS, mostly(settings_of(algo), YAML_VALUES), max_size=4)
    document = mostly(preset, YAML_VALUES).map(lambda v: yaml.safe_dump(v, allow_unicode=True).encode())
    return mostly(document, st.binary(max_size=40) | st.text(max_size=40).map(str.encode)
                  | st.sampled_from(YAMLISH).map(str.encode))


@SETTINGS
@given(algo=st.sampled_from(ALGOS), data=st.data())
def test_any_preset_file_resolves_typed_or_says_why_in_one_line(tmp_path, algo, data):
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / f"{algo}.yaml"
    path.write_bytes(data.draw(preset_files(algo)))
    env = "Pendulum-v1"
    preset = outcome(load_preset, path, env, names=(str(path),))
    if preset is None:
        return
    assert isinstance(preset, dict)
    configs = outcome(apply_overrides, RunConfig(env=env), api.algo_class(algo).Config(), preset, "preset")
    if configs is not None:
        check_configs(*configs)


@SETTINGS
@given(algo=st.sampled_from(ALGOS), data=st.data())
def test_any_saved_config_rebuilds_typed_or_says_why_in_one_line(algo, data):
    """`from_dict` rebuilds configs from config.yaml and checkpoints, which a user may have edited."""
    cls = api.algo_class(algo).Config
    saved = data.draw(mostly(settings_of(algo), YAML_VALUES))
    cfg = outcome(from_dict, cls, saved, "config.yaml config", names=("config.yaml config",))
    if cfg is not None:
        check_configs(RunConfig(), cfg)


@pytest.mark.parametrize("content", [b"algo: ppo\nseed: 2001-13-45\n", b"\xff\xfe", b"[" * 2000])
def test_a_folder_with_an_unreadable_config_yaml_is_not_taken_for_a_run(content, tmp_path, capsys):
    """YAML the parser cannot read (an impossible date, not UTF-8, nested too deeply) in a
    --run-dir's config.yaml: that folder is not a ctrlrl run, said in one line."""
    from ctrlrl import cli

    (tmp_path / "config.yaml").write_bytes(content)
    code = cli.main(["train", "ppo", "--env", "Pendulum-v1", "--total-steps", "0", "--run-dir",
                     str(tmp_path), "--set", "tensorboard=false"])
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, "is neither an empty folder nor a ctrlrl run")
