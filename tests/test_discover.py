"""Discoverability: `import ctrlrl` registers the envs; every setting documents itself and
`ctrlrl train ALGO --help` / `ctrlrl describe ALGO` show it; `ctrlrl list` gives kinds and the env
ids that can be made here."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import textwrap

import pytest

from ctrlrl.api import algo_class, list_algos
from ctrlrl.cli import describe_algo, main
from ctrlrl.core.config import RunConfig, field_docs

KINDS = {"on-policy", "off-policy", "offline", "average-reward"}


def test_import_ctrlrl_registers_envs_for_gymnasium_and_sb3_without_loading_the_api():
    code = textwrap.dedent("""
        import sys
        import gymnasium as gym
        import ctrlrl
        assert "ctrlrl.api" not in sys.modules and "torch" not in sys.modules, "import is heavy"
        gym.make("ctrlrl/LotSizing-v0").reset(seed=0)
        from stable_baselines3.common.env_util import make_vec_env
        vec = make_vec_env("ctrlrl/RiverSwim-v0", n_envs=2)
        print(vec.reset().shape, ctrlrl.make.__module__)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == "ctrlrl.api"  # the lazily loaded API is the real one


# ---- field documentation ---------------------------------------------------------------------
@dataclasses.dataclass
class _Parent:
    width: int = 64  # hidden layer width
    # the learning rate, written above
    # over two lines
    lr: float = 1e-3
    plain: bool = True


@dataclasses.dataclass
class _Child(_Parent):
    width: int = 32  # the child's own meaning
    lr: float = 3e-4
    extra: str = "x"  # a field only the child has


def test_field_docs_read_trailing_and_preceding_comments_and_inherit_them():
    assert field_docs(_Child) == {"width": "the child's own meaning",
                                  "lr": "the learning rate, written above over two lines",
                                  "plain": "", "extra": "a field only the child has"}


@pytest.mark.parametrize("algo", list_algos())
def test_every_setting_of_every_algorithm_has_a_meaning_and_is_described(algo):
    cls = algo_class(algo)
    described = describe_algo(algo)
    for config in (cls.Config, RunConfig):
        missing = [name for name, doc in field_docs(config).items() if not doc]
        assert not missing, f"{config.__name__}: document {missing} with a comment on the field"
        for name in field_docs(config):
            assert re.search(rf"^  {name} ", described, re.M), f"{name} not in `describe {algo}`"
    assert cls.kind in KINDS
    assert "summary" in vars(cls) and cls.summary, f"{algo} needs its own one-line summary"


# ---- describe / train ALGO --help ----------------------------------------------------------------
@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per setting: meanings are not wrapped


def _out(argv: list[str], capsys) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


def test_train_algo_help_lists_settings_with_type_default_meaning_then_run_settings_then_presets(
        capsys):
    out = _out(["train", "ppo", "--help"], capsys)
    algo_part, run_part = out.split("\nrun settings")
    assert re.search(r"^  n_steps +int +2048 +steps per env per rollout$", algo_part, re.M), out
    assert re.search(r"^  clip_range_vf +float \| null +null +clip V − V_old", algo_part, re.M)
    assert re.search(r"^  hidden_sizes +\[int, \.\.\.\] +\[64,64\] +hidden layer", algo_part, re.M)
    assert not re.search(r"^  total_steps ", algo_part, re.M)
    assert re.search(r"^  total_steps +int +1000000 +environment steps", run_part, re.M)
    presets = run_part.split("\npresets")[1]
    assert "Hopper-v5" in presets and "ctrlrl/LotSizing*" in presets
    assert out.startswith("ppo (on-policy): Proximal Policy Optimization")


def test_describe_is_train_help_and_resolves_an_envs_values(capsys):
    argv = ["ppo", "--env", "ctrlrl/Tomato-v0", "--set", "batch_size=32", "--seed", "7"]
    described = _out(["describe", *argv], capsys)
    assert _out(["train", *argv, "--help"], capsys) == described
    # the preset's value for the env, the --set one and the option's, each naming its default
    assert re.search(r"^  n_steps +int +300 +.*\[default 2048\]$", described, re.M), described
    assert re.search(r"^  batch_size +int +32 +.*\[default 64\]$", described, re.M)
    assert re.search(r"^  seed +int +7 +.*\[default 0\]$", described, re.M)
    assert _out(["describe", "sac"], capsys) == _out(["train", "sac", "-h"], capsys)
    # an offline algorithm's values for an env show without its dataset (a run would need one)
    assert "values for Hopper-v5" in _out(["describe", "odice", "--env", "Hopper-v5"], capsys)


def test_train_help_without_an_algorithm_says_how_to_see_one(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--resume" in out and "`ctrlrl train ALGO --help` (or `ctrlrl describe ALGO`)" in out


def test_train_help_refuses_resume(capsys):
    assert main(["train", "ppo", "--resume", "runs/x", "--help"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.yaml" in err


# ---- list ----------------------------------------------------------------------------------------
def test_list_gives_kinds_and_only_env_ids_that_can_be_made(capsys):
    out = _out(["list"], capsys)
    rows = dict(re.findall(r"^  (\S+) +(on-policy|off-policy|offline|average-reward) +\S", out, re.M))
    assert rows == {name: algo_class(name).kind for name in list_algos()}
    assert {rows["ppo"], rows["sac"], rows["td3bc"], rows["loop"]} == KINDS
    env_ids = set(re.findall(r"^  (\S+)$", out, re.M))
    assert {"Hopper-v5", "Pendulum-v1", "ctrlrl/LotSizing-v0", "ctrlrl/RiverSwim-v0"} <= env_ids
    assert not {"Hopper-v2", "Hopper-v3", "Walker2d-v3"} & env_ids


def test_a_mistyped_setting_is_refused_with_the_closest_name(capsys):
    assert main(["describe", "ppo", "--set", "learning_rat=1e-3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean learning_rate?" in err, err
