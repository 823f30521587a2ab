"""Hardening: checkpoint files are untrusted input, run directories are never clobbered, and
what a restored state may set is what the live object's own state holds."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, assert_one_line_error

import ctrlrl
from ctrlrl import cli
from ctrlrl.algos import REGISTRY
from ctrlrl.core import checkpoint as ckpt_module
from ctrlrl.core.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from ctrlrl.core.envs import VecEnv
from ctrlrl.core.errors import UserError
from ctrlrl.core.logger import truncate_metrics
from ctrlrl.core.run_dir import is_run_dir
from ctrlrl.harness import sweep

TINY = ["--env", "Pendulum-v1", "--device", "cpu", "--n-envs", "1", "--eval-every", "0",
        "--set", "n_steps=64", "--set", "batch_size=32", "--set", "n_epochs=2",
        "--set", "hidden_sizes=[32,32]", "--set", "log_every=64", "--set", "progress=false",
        "--set", "tensorboard=false"]


def _train(run_dir: Path, steps: int = 128, *extra: str) -> int:
    return cli.main(["train", "ppo", *TINY, "--total-steps", str(steps), "--run-dir", str(run_dir),
                     *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny PPO run (checkpoint at step 128); tests copy it, never change it."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    assert _train(run_dir) == 0
    return run_dir


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(trained, dest)
    return dest


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---- checkpoints: what a file may make ctrlrl do ------------------------------------------

def test_torch_floor_is_the_memory_safe_weights_only_release():
    text = (REPO / "pyproject.toml").read_text()
    assert '"torch>=2.10"' in text


def test_checkpoints_are_read_weights_only(trained, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    ctrlrl.load(trained, replay=False).close()
    assert calls == [True]


def test_an_unsafe_torch_refuses_to_load(trained, monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    with pytest.raises(UserError, match=r"torch>=2\.10"):
        load_checkpoint(trained / "checkpoints" / "latest.pt")


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


def _foreign_files(good: bytes, tmp_path: Path) -> dict[str, bytes]:
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF  # inside the tensor data: only the CRC check notices
    torch.save({"weights": torch.zeros(3)}, tmp_path / "plain.pt")
    return {
        "empty": b"",
        "text": b"step: 100\nalgo: ppo\n" * 20,
        "random bytes": random.Random(0).randbytes(4096),
        "zip of other files": _zip({"notes.txt": b"hello", "data.bin": bytes(100)}),
        "stable-baselines3 zip": _zip({"data": b'{"policy_class": "MlpPolicy"}',
                                       "policy.pth": good, "_stable_baselines3_version": b"2.9"}),
        "cut in half": good[: len(good) // 2],
        "last byte missing": good[:-1],
        "one byte changed": bytes(flipped),
        "plain torch file": (tmp_path / "plain.pt").read_bytes(),
    }


def test_foreign_or_damaged_files_end_in_one_line_everywhere(trained, tmp_path, capsys):
    """`ctrlrl eval`, `ctrlrl train --resume` and `ctrlrl.load` on each kind of bad file."""
    good = (trained / "checkpoints" / "latest.pt").read_bytes()
    for name, data in _foreign_files(good, tmp_path).items():
        path = tmp_path / "bad.pt"
        path.write_bytes(data)
        with pytest.raises(UserError):
            ctrlrl.load(path)
        capsys.readouterr()
        assert cli.main(["eval", str(path)]) == 2, name
        err = capsys.readouterr().err
        assert_one_line_error(err, str(path))
        if name in ("cut in half", "last byte missing", "one byte changed"):
            assert "is damaged" in err, err
        run_dir = tmp_path / "resume"
        shutil.copytree(trained, run_dir, dirs_exist_ok=True)
        shutil.copy(path, run_dir / "checkpoints" / "latest.pt")
        assert cli.main(["train", "ppo", "--resume", str(run_dir), "--total-steps", "256"]) == 2
        assert_one_line_error(capsys.readouterr().err, "latest.pt")


def test_an_sb3_model_is_refused_in_one_line(tmp_path, capsys):
    sb3 = pytest.importorskip("stable_baselines3")
    sb3.PPO("MlpPolicy", "Pendulum-v1", n_steps=64, policy_kwargs={"net_arch": [8]}).save(
        tmp_path / "model.zip")
    assert cli.main(["eval", str(tmp_path / "model.zip")]) == 2
    assert_one_line_error(capsys.readouterr().err, "model.zip", "not a readable ctrlrl checkpoint")


def test_cut_or_changed_checkpoints_never_raise_anything_else(trained, tmp_path):
    """Every prefix length class and scattered byte changes: a UserError or a valid load."""
    good = (trained / "checkpoints" / "latest.pt").read_bytes()
    rng = random.Random(1)
    cases = [good[:n] for n in sorted(rng.sample(range(len(good)), 25))]
    for _ in range(25):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cases.append(bytes(data))
    refused = 0
    for data in cases:
        path = tmp_path / "case.pt"
        path.write_bytes(data)
        try:
            ctrlrl.load(path, replay=False).close()
        except UserError:
            refused += 1
    assert refused >= 40  # nearly every change is caught (a few land in unused zip header bytes)


def _edited(trained: Path, tmp_path: Path, edit) -> Path:
    state = load_checkpoint(trained / "checkpoints" / "latest.pt")
    state.pop("ctrlrl_format")
    edit(state)
    path = tmp_path / "edited.pt"
    save_checkpoint(path, state)
    return path


@pytest.mark.parametrize("edit, needle", [
    (lambda s: s.pop("modules"), "modules"),
    (lambda s: s.update(step="many"), "step"),
    (lambda s: s.update(step=-5), "negative"),
    (lambda s: s.update(episodes=[["a", 1]]), "episodes"),
    (lambda s: s.update(metrics={"loss": "nan please"}), "metrics"),
    (lambda s: s["config"].update(learning_rate=-1.0), "learning_rate"),
    (lambda s: s["config"].update(surprise=1), "surprise"),
    (lambda s: s["run"].update(n_envs=3), "n_envs"),
    (lambda s: s["run"].update(threads=100_000), "threads"),  # would crash torch's thread pool
    (lambda s: s.update(obs=np.zeros((1, 7), np.float32)), "obs"),
    (lambda s: s["rng"].update(numpy={"bit_generator": "MT19937"}), "PCG64"),
    (lambda s: s["modules"]["policy"].popitem(), "configuration"),
    (lambda s: s["config"].update({3: 1}), "strings"),
    (lambda s: s["run"].pop("env"), "no env"),
    (lambda s: s.update(last_evaluation={"step": 3, "returns": [1.0]}), "last_evaluation"),
    (lambda s: s["rng"]["numpy"]["state"].update(inc=-1), "uint64"),
])
def test_checkpoint_entries_are_checked(trained, tmp_path, edit, needle):
    with pytest.raises(UserError, match=needle):
        ctrlrl.load(_edited(trained, tmp_path, edit)).close()


@pytest.mark.parametrize("state, needle", [
    ({"ctrlrl_format": torch.tensor([1, 1])}, "checkpoint format"),
    ({"ctrlrl_format": 1, "obs": {"__ndarray__": torch.zeros(2, requires_grad=True)}}, "grad"),
    ({"ctrlrl_format": 1, "obs": {"__ndarray__": torch.zeros(2, dtype=torch.bfloat16)}}, "BFloat16"),
])
def test_crafted_torch_files_end_in_one_line(tmp_path, state, needle):
    torch.save(state, tmp_path / "crafted.pt")
    with pytest.raises(UserError, match=needle):
        ctrlrl.load(tmp_path / "crafted.pt")


def test_an_unreadable_file_is_named(trained, monkeypatch):
    def denied(*args, **kwargs):  # what open() raises without read permission (root never sees it)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(ckpt_module, "open", denied, raising=False)
    with pytest.raises(UserError, match=r"Permission denied.*permissions"):
        ctrlrl.load(trained)


@pytest.mark.parametrize("algo, setting", [("ppo", {"n_steps": 10**14}),
                                            ("sac", {"buffer_size": 10**14})])
def test_sizes_beyond_memory_end_in_one_line(tmp_path, algo, setting):
    """Sizes a checkpoint's tensors do not pin (a rollout's length, a replay buffer's capacity)
    fail where they are allocated, as a UserError, from a checkpoint or from --set alike (beyond
    any address space, so no overcommitting kernel grants them)."""
    with pytest.raises(UserError, match="cannot allocate"):
        ctrlrl.make(algo, "Pendulum-v1", {**setting, "device": "cpu"})


def _entry_paths(tree, prefix=()):
    """Paths to every entry of a nested checkpoint (the first two items of each list)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _entry_paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree[:2]):
            yield from _entry_paths(value, (*prefix, i))
    if prefix:
        yield prefix


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch's, on tensors where lists belong
def test_any_entry_replaced_by_anything_ends_in_one_line_or_loads(trained, tmp_path):
    """Each entry of a real checkpoint, in turn, replaced by three hostile values of other
    types and sizes: ctrlrl.load gives a UserError or a working algorithm, never another error."""
    base = load_checkpoint(trained / "checkpoints" / "latest.pt")
    base.pop("ctrlrl_format")
    hostile = [None, "text", -1, 10**20, 1.5, [], {}, np.zeros(3), torch.zeros(2)]
    for i, path in enumerate(_entry_paths(base)):
        for value in (hostile[i % 9], hostile[(i + 3) % 9], hostile[(i + 6) % 9]):
            state = copy.deepcopy(base)
            node = state
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
            save_checkpoint(tmp_path / "edited.pt", state)
            with contextlib.suppress(UserError):
                ctrlrl.load(tmp_path / "edited.pt").close()


def test_a_checkpoint_edited_to_an_env_its_algorithm_cannot_use(tmp_path):
    """LOOP plans with its env's exact model: on Hopper it would crash deep in MuJoCo."""
    settings = {"block_steps": 50, "log_every": 50, "progress": False, "tensorboard": False,
                "eval_every": 0, "device": "cpu"}
    ctrlrl.make("loop", "ctrlrl/RiverSwim-v0", settings, total_steps=50,
                run_dir=str(tmp_path / "run")).learn().close()
    path = _edited(tmp_path / "run", tmp_path, lambda s: s["run"].update(env="Hopper-v5"))
    with pytest.raises(UserError, match="Hopper-v5"):
        ctrlrl.load(path)


def test_a_config_claiming_huge_layers_allocates_nothing(trained, tmp_path, monkeypatch):
    path = _edited(trained, tmp_path, lambda s: s["config"].update(hidden_sizes=[10**9]))
    monkeypatch.setattr(REGISTRY["ppo"], "__init__",
                        lambda *a, **k: pytest.fail("built an algorithm from an unchecked config"))
    with pytest.raises(UserError, match=r"hidden_sizes=\[1000000000\]"):
        ctrlrl.load(path)


@pytest.mark.parametrize("edit, needle", [
    # a new attribute: here it would shadow the env's step method
    (lambda env: env["layers"][-1].update(step=1), "unknown attribute 'step'"),
    (lambda env: env["layers"][-1].update(render_mode="human"), "unknown attribute 'render_mode'"),
    (lambda env: env["layers"][-1].update(state="hello"), "state: expected an array"),
    (lambda env: env["layers"][-1].update(state=np.zeros(5)), "shape"),
    (lambda env: env["layers"][0].update(_elapsed_steps=np.zeros(2)), "_elapsed_steps"),
    (lambda env: env["layers"][-1].update(state=None), "state"),
    (lambda env: env["rng"].update(bit_generator="MT19937"), "PCG64"),
    (lambda env: env["rng"]["state"].update(inc=-1), "rng"),  # NumPy: out of bounds for uint64
])
def test_env_restore_sets_only_the_live_snapshots_keys_and_types(edit, needle, tmp_path):
    env = VecEnv("Pendulum-v1", 2)
    try:
        env.reset(0)
        state = env.state_dict()
        save_checkpoint(tmp_path / "env.pt", {"env": state})
        state = load_checkpoint(tmp_path / "env.pt")["env"]
        edit(state["envs"][1])
        before = env.state_dict()
        with pytest.raises(UserError, match=needle):
            env.load_state_dict(state)
        after = env.state_dict()  # refused before anything changed
        assert np.array_equal(after["envs"][1]["layers"][-1]["state"],
                              before["envs"][1]["layers"][-1]["state"])
        pendulum = env.envs.envs[1].unwrapped
        assert callable(pendulum.step) and pendulum.render_mode is None
    finally:
        env.close()


def test_env_restore_accepts_its_own_states_across_an_episode(tmp_path):
    """Attributes that change type while an env runs (None → a number, float64 ↔ float32, a 0-d
    array → a NumPy scalar) fit."""
    for env_id in ("Pendulum-v1", "MountainCarContinuous-v0", "Acrobot-v1"):
        env, fresh = (VecEnv(env_id, 2, normalize_reward=True) for _ in range(2))
        try:
            env.reset(0)
            fresh.reset(1)
            for _ in range(30):
                env.step(np.stack([env.action_space.sample() for _ in range(2)]))
            save_checkpoint(tmp_path / "env.pt", {"env": env.state_dict()})
            fresh.load_state_dict(load_checkpoint(tmp_path / "env.pt")["env"])
            assert np.array_equal(fresh.obs, env.obs)
        finally:
            env.close()
            fresh.close()


# ---- run directories -------------------------------------------------------------------

def test_run_dir_dot_in_a_project_folder_is_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "notes.md").write_text("my notes")
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    monkeypatch.chdir(tmp_path)
    assert _train(Path("."), 64) == 2
    assert_one_line_error(capsys.readouterr().err, "--run-dir .", "neither an empty folder")
    (tmp_path / "a_file").write_text("x")
    assert _train(tmp_path / "a_file", 64) == 2
    assert_one_line_error(capsys.readouterr().err, "a_file", "neither an empty folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "metrics.jsonl", "notes.md"]
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_run_dir_may_be_new_empty_or_a_run_without_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    assert _train(tmp_path / "empty", 64) == 0
    # a run killed before its first checkpoint: config.yaml and a log, no checkpoint
    died = tmp_path / "died"
    died.mkdir()
    (died / "config.yaml").write_text(yaml.safe_dump({"algo": "ppo", "run": {}, "config": {}}))
    (died / "metrics.jsonl").write_text('{"step": 64}\n{"step": 128}\n')
    (died / "events.out.tfevents.1.host").write_bytes(b"old curves")
    assert _train(died, 64) == 0
    assert [r["step"] for r in _rows(died)] == [64]
    assert not (died / "events.out.tfevents.1.host").exists()  # its curves start afresh too


def test_a_sweep_retries_a_run_that_failed_before_its_run_dir(tmp_path):
    """A failed attempt leaves only error.txt in the run's folder; the next sweep starts there."""
    settings = {"n_steps": 64, "batch_size": 32, "n_epochs": 2, "hidden_sizes": [32, 32],
                "log_every": 64, "tensorboard": False, "eval_every": 0, "n_envs": 1,
                "normalize_obs": False, "normalize_reward": False, "device": "cpu"}
    (spec, state), = sweep.plan(sweep.expand_grid(["ppo"], ["Pendulum-v1"], [0], 64,
                                                  str(tmp_path / "out"), settings))
    spec.run_dir.mkdir(parents=True)
    (spec.run_dir / "error.txt").write_text("an earlier attempt failed\n")
    assert state == "start"
    result = sweep.run_one(spec)
    assert result["status"] == "done", result
    assert not (spec.run_dir / "error.txt").exists()


def test_a_sweep_finishes_a_run_stopped_during_its_last_iteration(tmp_path, monkeypatch):
    """Stopped with its last checkpoint at its budget but before done.json, a run is resumed by
    the next sweep with that same budget and ends done (it used to be refused: 'already at step')."""
    from ctrlrl.algos.ppo import PPO
    from ctrlrl.core.signals import request_stop

    settings = {"n_steps": 64, "batch_size": 32, "n_epochs": 2, "hidden_sizes": [32, 32],
                "log_every": 64, "tensorboard": False, "eval_every": 0, "n_envs": 1,
                "device": "cpu"}
    grid = sweep.expand_grid(["ppo"], ["Pendulum-v1"], [0], 64, str(tmp_path / "out"), settings)
    (spec, _), = sweep.plan(grid)
    iteration = PPO.train_iteration

    def then_stop(self) -> None:
        iteration(self)
        request_stop()

    with monkeypatch.context() as patched:
        patched.setattr(PPO, "train_iteration", then_stop)
        assert sweep.run_one(spec)["status"] == "stopped"
    assert not (spec.run_dir / sweep.DONE_FILE).exists()
    (spec, state), = sweep.plan(grid)
    assert state == "resume"
    assert sweep.run_one(spec)["status"] == "done"
    assert json.loads((spec.run_dir / sweep.DONE_FILE).read_text())["steps"] == 64


def test_what_counts_as_a_run_dir(tmp_path):
    assert not is_run_dir(tmp_path)
    (tmp_path / "config.yaml").write_text("learning_rate: 0.1\n")  # someone else's config
    assert not is_run_dir(tmp_path)
    (tmp_path / "config.yaml").write_text("algo: sac\n")
    assert is_run_dir(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "checkpoints").mkdir()
    assert is_run_dir(tmp_path / "other")
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "config.yaml").write_bytes(b"\xff\xfe\x00")
    assert not is_run_dir(tmp_path / "binary")


def test_a_run_dir_in_use_by_another_process_is_refused(run_copy, capsys):
    """A resume (a second sweep over the same grid, say) while another process trains the run
    is refused before it truncates that run's log; once the other process is gone it goes on."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from ctrlrl.core.run_dir import claim_run_dir; lock = claim_run_dir(Path(sys.argv[1])); "
         "print('held', flush=True); sys.stdin.read()", str(run_copy)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with (run_copy / "metrics.jsonl").open("a") as f:  # the other process's newer rows
            f.write('{"step": 99999}\n')
        assert _train(run_copy, 192, "--resume", str(run_copy)) == 2
        assert_one_line_error(capsys.readouterr().err, str(run_copy),
                              f"in use by ctrlrl process {holder.pid}")
        assert _rows(run_copy)[-1] == {"step": 99999}
    finally:
        holder.communicate("")  # its stdin closes: it exits, and the OS drops its lock
    assert _train(run_copy, 192, "--resume", str(run_copy)) == 0
    assert _rows(run_copy)[-1]["step"] == 192


def _locked_elsewhere(run_dir: Path) -> bool:
    """Would another process be refused the run dir's lock now?"""
    probe = ("import fcntl, sys; f = open(sys.argv[1], 'a+'); "
             "fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)")
    return subprocess.run([sys.executable, "-c", probe, str(run_dir / "checkpoints" / "run.lock")],
                          capture_output=True).returncode != 0


def _tiny_ppo():
    from ctrlrl import api

    return api.make("ppo", "Pendulum-v1", {"n_steps": 64, "batch_size": 32, "n_epochs": 2,
                                           "hidden_sizes": [32, 32], "tensorboard": False},
                    device="cpu", n_envs=1, eval_every=0)


def test_a_run_dir_is_locked_while_it_trains_and_free_between_learns(tmp_path):
    run_dir = tmp_path / "run"
    algo = _tiny_ppo()
    algo.setup_run_dir(run_dir)
    seen = []
    iteration = algo.train_iteration

    def probe_then_train() -> None:
        seen.append(_locked_elsewhere(run_dir))
        iteration()

    algo.train_iteration = probe_then_train
    try:
        for total in (64, 128):  # the second learn() claims the folder again
            algo.learn(total)
            assert seen[-1], "another process could have taken the run dir mid-training"
            assert not _locked_elsewhere(run_dir), "learn returned still holding the run dir"
    finally:
        algo.close()


def test_an_object_does_not_train_on_over_a_run_continued_elsewhere(tmp_path, capsys):
    from ctrlrl import api

    run_dir = tmp_path / "run"
    first = _tiny_ppo()
    first.setup_run_dir(run_dir)
    first.learn(64)
    second = api.resume(run_dir, total_steps=128)  # in another process just the same
    second.learn()
    second.close()
    with pytest.raises(UserError, match="trained on elsewhere since this object left it"):
        first.learn(192)
    first.close()
    assert [r["step"] for r in _rows(run_dir)][-1] == 128
    assert not _locked_elsewhere(run_dir)


def test_claims_of_one_run_dir_nest_within_a_process(tmp_path):
    from ctrlrl.core.run_dir import claim_run_dir

    outer = claim_run_dir(tmp_path)  # a sweep's run, say
    inner = claim_run_dir(tmp_path)  # the resume inside it
    inner.release()
    assert _locked_elsewhere(tmp_path)
    outer.release()
    assert not _locked_elsewhere(tmp_path)


def test_resume_reads_the_checkpoint_only_once_it_holds_the_run_dir(run_copy, monkeypatch):
    from ctrlrl import api

    read = api.read_checkpoint
    held = []

    def read_when_held(path):
        held.append(_locked_elsewhere(run_copy))
        return read(path)

    monkeypatch.setattr(api, "read_checkpoint", read_when_held)
    api.resume(run_copy).close()
    assert held == [True]


def test_clearing_a_run_dir_keeps_its_lock(tmp_path):
    """SB3 runs and Ray's copies start from an empty folder: emptied under its holder, the lock
    file must stay, or a second process could lock a new one beside it."""
    from ctrlrl.core.run_dir import claim_run_dir, clear_run_dir

    lock = claim_run_dir(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "checkpoints" / "sb3_model.zip").write_bytes(b"old")
    (tmp_path / "sub").mkdir()
    clear_run_dir(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in sorted(tmp_path.rglob("*"))] == \
        ["checkpoints", "checkpoints/run.lock"]
    assert _locked_elsewhere(tmp_path)
    lock.release()


def test_a_ray_copy_leaves_the_lock_to_its_holder(tmp_path):
    """`--ray-storage copy` ships a run dir without its lock file and writes it back keeping the
    one there."""
    import io
    import tarfile

    from ctrlrl.core.run_dir import claim_run_dir

    run_dir = tmp_path / "run"
    lock = claim_run_dir(run_dir)
    (run_dir / "metrics.jsonl").write_text("{}\n")
    archive = sweep._pack(run_dir)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == [".", "./checkpoints", "./metrics.jsonl"]
    sweep._unpack(archive, run_dir)
    assert _locked_elsewhere(run_dir)
    lock.release()


SB3_TINY = {  # tiny nets; SAC acting at random to step 160; PPO with both normalisations
    "sb3-sac": {"learning_starts": 160, "batch_size": 16, "hidden_sizes": [8]},
    "sb3-td3": {"learning_starts": 40, "batch_size": 16, "hidden_sizes": [8]},
    "sb3-ppo": {"n_steps": 32, "batch_size": 16, "n_epochs": 2, "hidden_sizes": [8],
                "normalize_obs": True, "normalize_reward": True},
}


def _sb3_twin(out: Path, algo: str, **settings):
    settings = {"eval_every": 64, "log_every": 32, "eval_episodes": 1, "device": "cpu",
                "tensorboard": False, "n_envs": 2, **SB3_TINY[algo], **settings}
    total = settings.pop("total_steps", 512)
    (spec, _), = sweep.plan(sweep.expand_grid([algo], ["Pendulum-v1"], [0], total, str(out), settings))
    return spec


def _sb3_outcome(spec) -> tuple[dict, list]:
    """A finished twin's final weights and logged rows (wall-clock scalars left out)."""
    state = load_checkpoint(spec.run_dir / "checkpoints" / "sb3.pt")
    rows = [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
            for line in (spec.run_dir / "metrics.jsonl").read_text().splitlines()]
    return state["params"]["policy"], rows


@pytest.mark.parametrize("algo", list(SB3_TINY))
def test_a_cut_sb3_twin_resumes_exactly(tmp_path, monkeypatch, algo):
    """Stopped (Ctrl-C, SIGTERM, a stopping sweep) or crashed, a twin continues from its last
    checkpoint as if never cut: same weights, same logged rows. What makes that hold: the replay
    buffer, the counters, the envs' state (mid-episode), the normalisers and every RNG restored."""
    pytest.importorskip("stable_baselines3")
    from ctrlrl.core import evaluation, signals

    uncut = _sb3_twin(tmp_path / "uncut", algo)
    assert sweep.run_one(uncut)["status"] == "done"

    stopped = _sb3_twin(tmp_path / "stopped", algo)
    polls = iter(range(10**6))
    # Pendulum's episodes are 200 steps of each env, so 400 of both: SAC stops mid-way through
    # its second episodes, TD3 after an odd number of updates (its policy delay is 2), PPO after
    # its second rollout. SAC and TD3 poll twice a step of both envs, PPO twice a 64-step rollout.
    cut_at = {"sb3-sac": 420, "sb3-td3": 142, "sb3-ppo": 128}[algo]
    stop_from = 4 if algo == "sb3-ppo" else cut_at
    monkeypatch.setattr(signals, "stop_signal", lambda: 2 if next(polls) >= stop_from else 0)
    assert sweep.run_one(stopped)["status"] == "stopped"
    monkeypatch.undo()
    cut = load_checkpoint(stopped.run_dir / "checkpoints" / "sb3.pt")
    assert cut["step"] == cut_at and sweep.plan([stopped])[0][1] == "resume"
    assert sweep.run_one(stopped)["status"] == "done"

    crashed = _sb3_twin(tmp_path / "crashed", algo, checkpoint_every=128)

    real = evaluation.evaluate
    calls = iter(range(10**6))

    def crash_at_the_third(*args, **kwargs):
        if next(calls) == 2:  # the evaluation at step 192, past the checkpoint at 128
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", crash_at_the_third)
    assert sweep.run_one(crashed)["status"] == "failed"
    monkeypatch.undo()
    assert load_checkpoint(crashed.run_dir / "checkpoints" / "sb3.pt")["step"] == 128
    assert sweep.run_one(crashed)["status"] == "done"

    weights, rows = _sb3_outcome(uncut)
    assert sum("eval/mean_reward" in r for r in rows) == 8 and any("rollout/ep_rew_mean" in r for r in rows)
    for run in (stopped, crashed):
        resumed_weights, resumed_rows = _sb3_outcome(run)
        assert resumed_rows == rows
        for key, value in weights.items():
            assert torch.equal(resumed_weights[key], value), key


@pytest.mark.parametrize("edit, needle", [
    (lambda s: s["buffer"]["arrays"].update(observations=s["buffer"]["arrays"]["observations"][..., :2]),
     "observations"),
    (lambda s: s["buffer"].update(pos=10**9), "buffer position"),
    (lambda s: s["params"]["policy"].popitem(), "policy"),
    (lambda s: s["envs"].pop(), "env states"),
    (lambda s: s["monitor_rewards"].append(np.zeros(3)), "monitor_rewards"),
    (lambda s: s.update(episodes=[["a", 1, 0.0]]), "episodes"),
    (lambda s: s["rng"].update(torch=torch.zeros(3)), "rng"),
])
def test_an_sb3_checkpoint_that_does_not_fit_is_refused_in_one_line(tmp_path, edit, needle):
    pytest.importorskip("stable_baselines3")
    spec = _sb3_twin(tmp_path, "sb3-sac", total_steps=64)
    assert sweep.run_one(spec)["status"] == "done"
    path = spec.run_dir / "checkpoints" / "sb3.pt"
    state = load_checkpoint(path)
    edit(state)
    save_checkpoint(path, state)
    (spec.run_dir / "done.json").unlink()
    result = sweep.run_one(spec)
    assert result["status"] == "failed"
    assert "does not fit this run" in result["message"] and needle in result["message"]
    assert "\n" not in result["message"]


def test_an_sb3_twin_starts_afresh_under_the_sweeps_lock(tmp_path):
    """Without a checkpoint of its own, a twin clears what an earlier attempt left."""
    pytest.importorskip("stable_baselines3")
    settings = {"eval_every": 0, "device": "cpu", "tensorboard": False}
    (spec, _), = sweep.plan(sweep.expand_grid(["sb3-sac"], ["Pendulum-v1"], [0], 200,
                                              str(tmp_path / "out"), settings))
    (spec.run_dir / "checkpoints").mkdir(parents=True)
    (spec.run_dir / "checkpoints" / "sb3_model.zip").write_bytes(b"an earlier, cut run")
    assert sweep.run_one(spec)["status"] == "done"
    names = sorted(p.name for p in (spec.run_dir / "checkpoints").iterdir())
    assert names == ["run.lock", "sb3.pt", "sb3_model.zip"]  # the lock kept: its holder was this run
    assert (spec.run_dir / "checkpoints" / "sb3_model.zip").read_bytes() != b"an earlier, cut run"


def test_a_forked_child_does_not_keep_the_run_dir_locked(tmp_path):
    """Env workers are forked: they must not carry the run dir's lock past the parent's release."""
    import multiprocessing as mp
    import time

    from ctrlrl.core.run_dir import claim_run_dir

    lock = claim_run_dir(tmp_path)
    ctx = mp.get_context("fork")
    started = ctx.Event()

    def worker() -> None:  # as an env worker: up, then alive past the parent's release
        started.set()
        time.sleep(60)

    child = ctx.Process(target=worker)
    child.start()
    try:
        assert started.wait(30)
        lock.release()
        assert not _locked_elsewhere(tmp_path)
    finally:
        child.terminate()
        child.join()


def test_a_second_sweep_leaves_a_run_in_use_alone(tmp_path):
    """Refused, it deletes nothing (done.json, the log) and writes no error.txt into the run."""
    from ctrlrl.core.run_dir import claim_run_dir

    settings = {"n_steps": 64, "batch_size": 32, "n_epochs": 2, "hidden_sizes": [32, 32],
                "log_every": 64, "tensorboard": False, "eval_every": 0, "n_envs": 1,
                "device": "cpu"}
    (spec, _), = sweep.plan(sweep.expand_grid(["ppo"], ["Pendulum-v1"], [0], 64,
                                              str(tmp_path / "out"), settings))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from ctrlrl.core.run_dir import claim_run_dir; lock = claim_run_dir(Path(sys.argv[1])); "
         "print('held', flush=True); sys.stdin.read()", str(spec.run_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (spec.run_dir / sweep.DONE_FILE).write_text("{}")
        result = sweep.run_one(spec)
        assert result["status"] == "failed" and "in use by ctrlrl process" in result["message"]
        assert sorted(p.name for p in spec.run_dir.iterdir()) == ["checkpoints", sweep.DONE_FILE]
    finally:
        holder.communicate("")
    claim_run_dir(spec.run_dir).release()  # free again once the holder is gone


def test_atomic_write_keeps_the_old_file_on_failure_and_syncs_the_folder(tmp_path, monkeypatch):
    target = tmp_path / "config.yaml"
    target.write_text("old: 1\n")
    with pytest.raises(RuntimeError), atomic_write(target, "w") as f:
        f.write("new: ")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old: 1\n"
    assert list(tmp_path.iterdir()) == [target]
    events = []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(ckpt_module.os, "replace",
                        lambda a, b: (events.append("rename"), real_replace(a, b)))
    monkeypatch.setattr(ckpt_module.os, "fsync", lambda fd: (
        events.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"), real_fsync(fd)))
    with atomic_write(target, "w") as f:
        f.write("new: 2\n")
    assert target.read_text() == "new: 2\n"
    assert events == ["file", "rename", "dir"]  # the rename itself reaches the disk


def test_ctrl_c_inside_a_write_surfaces_as_the_interrupt(tmp_path):
    """torch.save's zip writer, cut by a second Ctrl-C, raises its own RuntimeError on the way
    out; the CLI must see the interrupt (exit 130, no traceback) and the old file stays."""
    target = tmp_path / "latest.pt"
    target.write_bytes(b"previous checkpoint")
    with pytest.raises(KeyboardInterrupt), atomic_write(target) as f:
        f.write(b"half")
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from None
    assert target.read_bytes() == b"previous checkpoint"
    with pytest.raises(ValueError), atomic_write(target) as f:  # other errors stay themselves
        raise ValueError("disk full")


def test_config_yaml_and_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    written = []
    real = ckpt_module.atomic_write

    def spy(path, mode="wb"):
        written.append(Path(path).name)
        return real(path, mode)

    monkeypatch.setattr(ckpt_module, "atomic_write", spy)
    monkeypatch.setattr("ctrlrl.core.run_dir.atomic_write", spy)
    assert _train(tmp_path / "run", 64) == 0
    assert written[0] == "config.yaml" and "latest.pt" in written


def test_resume_uses_the_checkpoints_config_not_an_edited_config_yaml(run_copy, capsys):
    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    config["config"]["hidden_sizes"] = [512, 512]
    config["config"]["learning_rate"] = 1.0
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config))
    capsys.readouterr()
    assert cli.main(["train", "ppo", "--resume", str(run_copy), "--total-steps", "192"]) == 0
    err = capsys.readouterr().err
    assert "differs from the checkpoint" in err and "hidden_sizes" in err
    after = load_checkpoint(run_copy / "checkpoints" / "latest.pt")
    assert after["step"] == 192 and after["config"]["hidden_sizes"] == [32, 32]
    assert yaml.safe_load((run_copy / "config.yaml").read_text())["config"]["hidden_sizes"] == [32, 32]


def test_resume_without_config_yaml(run_copy):
    (run_copy / "config.yaml").unlink()
    assert cli.main(["train", "ppo", "--resume", str(run_copy), "--total-steps", "192"]) == 0
    assert is_run_dir(run_copy) and (run_copy / "config.yaml").is_file()


def test_resume_drops_metrics_logged_after_the_checkpoint(run_copy):
    """Killed after logging steps 192 and 256 (and half a line) with its checkpoint at 128."""
    with open(run_copy / "metrics.jsonl", "a") as f:
        f.write('{"step": 192, "time/fps": 1.0}\n{"step": 256, "time/fps": 1.0}\n{"step": 3')
    before = [r for r in _rows_lenient(run_copy) if r["step"] <= 128]
    assert cli.main(["train", "ppo", "--resume", str(run_copy), "--total-steps", "256"]) == 0
    rows = _rows(run_copy)
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)), steps  # no step twice
    assert steps[-1] == 256 and 192 in steps
    assert rows[: len(before)] == before  # rows up to the checkpoint are kept as they were
    assert all(r["time/fps"] != 1.0 for r in rows)


def test_resume_hides_tensorboard_events_logged_after_the_checkpoint(run_copy):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    killed = SummaryWriter(str(run_copy))  # what a session killed after its checkpoint left
    for step in (192, 256):
        killed.add_scalar("time/fps", -1.0, step)
    killed.close()
    assert cli.main(["train", "ppo", "--resume", str(run_copy), "--total-steps", "256",
                     "--set", "tensorboard=true"]) == 0
    events = EventAccumulator(str(run_copy))
    events.Reload()
    fps = events.Scalars("time/fps")
    assert [e.step for e in fps] == [192, 256]
    assert all(e.value > 0 for e in fps)


def _rows_lenient(run_dir: Path) -> list[dict]:
    """The complete rows of a metrics.jsonl (not a line cut short)."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def test_truncate_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 10}\n\n{"step": 20.0}\n[1]\n{"step": 30}\n{"step": 20, "x": 1}\n'
                    '{"step": true}\n{"st')
    truncate_metrics(path, 20)
    assert path.read_text() == '{"step": 10}\n{"step": 20.0}\n{"step": 20, "x": 1}\n'
    truncate_metrics(tmp_path / "missing.jsonl", 5)  # nothing logged yet: nothing to do
    assert not (tmp_path / "missing.jsonl").exists()


# ---- signals ----------------------------------------------------------------------------

def test_async_env_workers_ignore_sigterm_and_still_exit():
    """A group SIGTERM leaves the workers stepping; a program that never closes its env still
    exits promptly (multiprocessing's exit-time terminate() no longer stops them)."""
    script = (
        "import os, signal, time\n"
        "import numpy as np\n"
        "from ctrlrl.core.envs import VecEnv\n"
        "env = VecEnv('Pendulum-v1', 2, 'async')\n"
        "env.reset(0)\n"
        "for p in env.envs.vector.processes:\n"
        "    os.kill(p.pid, signal.SIGTERM)\n"
        "time.sleep(0.5)\n"
        "assert all(p.is_alive() for p in env.envs.vector.processes)\n"
        "env.step(np.zeros((2, 1), np.float32))\n"
        "print('stepped')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "stepped" in proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
