"""Ctrl-C and SIGTERM: the run stops after the current iteration with a checkpoint, and resumes
from it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli

from ctrlrl.core.checkpoint import load_checkpoint

ARGS = ["--env", "Pendulum-v1", "--device", "cpu", "--total-steps", "10000000", "--n-envs", "1",
        "--eval-every", "0",
        "--set", "n_steps=256", "--set", "batch_size=64", "--set", "n_epochs=2",
        "--set", "hidden_sizes=[32,32]", "--set", "log_every=256", "--set", "progress=false",
        "--set", "tensorboard=false"]


def _start(run_dir: Path, *extra: str, new_session: bool = False) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ctrlrl.cli", "train", "ppo", *ARGS, "--run-dir", str(run_dir),
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=run_dir.parent,
        start_new_session=new_session)


def _wait_for_metrics(proc: subprocess.Popen, run_dir: Path, timeout: float = 90) -> None:
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.is_file() and metrics.read_text().strip():
            return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"training exited early ({proc.returncode}):\n{out}\n{err}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no metrics row within the timeout")


def _interrupt_and_check(proc: subprocess.Popen, run_dir: Path, send, code: int = 130) -> int:
    """`code`: the exit status, 128 + the signal's number (130 Ctrl-C, 143 SIGTERM)."""
    send()
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"training did not stop after SIGINT:\n{out}\n{err}")
    assert proc.returncode == code, f"exit {proc.returncode}\n{out}\n{err}"
    assert "Traceback" not in err, err
    assert "--resume" in err  # tells the user how to continue
    ckpt = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    step = ckpt["step"]
    assert step > 0
    assert step % 256 == 0  # a whole number of iterations: stopped between iterations
    assert not list((run_dir / "checkpoints").glob("*.tmp"))
    return step


def _resume_and_check(run_dir: Path, step: int) -> None:
    proc = run_cli("train", "ppo", "--resume", str(run_dir), "--total-steps", str(step + 512),
                   cwd=run_dir.parent)
    assert proc.returncode == 0, proc.stderr
    assert f"at step {step}" in proc.stdout
    after = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    assert after["step"] == step + 512
    assert after["run"]["total_steps"] == step + 512
    rows = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    assert rows  # metrics were appended, not replaced
    assert f'"step": {step + 512}' in rows[-1]


def test_ctrl_c_checkpoints_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    proc = _start(run_dir)
    _wait_for_metrics(proc, run_dir)
    step = _interrupt_and_check(proc, run_dir, lambda: proc.send_signal(signal.SIGINT))
    _resume_and_check(run_dir, step)


def test_terminal_ctrl_c_with_async_envs(tmp_path):
    """A real terminal sends SIGINT to the whole foreground process group, workers included."""
    run_dir = tmp_path / "run"
    proc = _start(run_dir, "--set", "vec_mode=async", "--n-envs", "2", new_session=True)
    _wait_for_metrics(proc, run_dir)
    step = _interrupt_and_check(proc, run_dir,
                                lambda: os.killpg(os.getpgid(proc.pid), signal.SIGINT))
    _resume_and_check(run_dir, step)


def test_sigterm_to_the_process_group_with_async_envs(tmp_path):
    """Slurm, systemd and `kill -- -PGID` send SIGTERM to every process of the job: the env
    workers keep serving while the main process finishes its iteration and checkpoints."""
    run_dir = tmp_path / "run"
    proc = _start(run_dir, "--set", "vec_mode=async", "--n-envs", "2", new_session=True)
    _wait_for_metrics(proc, run_dir)
    step = _interrupt_and_check(proc, run_dir,
                                lambda: os.killpg(os.getpgid(proc.pid), signal.SIGTERM), code=143)
    _resume_and_check(run_dir, step)


def _process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (Linux /proc): what a cgroup-wide stop reaches."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def test_sigterm_on_a_sweep_keeps_its_runs_checkpoints(tmp_path):
    """Slurm and systemd signal every process of the job once: the sweep's process group (what
    `kill -- -PGID` reaches), its run processes (groups of their own) and their env workers."""
    out = tmp_path / "out"
    sets = ["n_steps=256", "batch_size=64", "n_epochs=2", "hidden_sizes=[32,32]", "log_every=256",
            "checkpoint_every=256", "tensorboard=false", "eval_every=0", "vec_mode=async",
            "n_envs=2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ctrlrl.cli", "sweep", "--algos", "ppo", "--envs", "Pendulum-v1",
         "--total-steps", "10000000", "--workers", "1", "--out", str(out),
         *(a for s in sets for a in ("--set", s))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        start_new_session=True)
    ckpt_path = out / "Pendulum-v1" / "ppo" / "seed0" / "checkpoints" / "latest.pt"
    deadline = time.monotonic() + 90
    while not ckpt_path.is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no checkpoint: {proc.communicate()}")
        time.sleep(0.05)
    first = load_checkpoint(ckpt_path)["step"]
    started = time.monotonic()
    for pid in _process_tree(proc.pid):
        os.kill(pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 2, err
    assert "Traceback" not in err, err
    assert "stopped; checkpoint saved" in err and "run the same command again" in err
    stopped = load_checkpoint(ckpt_path)["step"]
    assert stopped >= first and stopped % 512 == 0  # saved when the run stopped, between iterations
    assert time.monotonic() - started < 30  # no process waited for a kill that never came


def test_second_ctrl_c_aborts_and_keeps_last_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    # checkpoint every iteration so there is one on disk before the interrupts
    proc = _start(run_dir, "--set", "checkpoint_every=256")
    _wait_for_metrics(proc, run_dir)
    ckpt_path = run_dir / "checkpoints" / "latest.pt"
    deadline = time.monotonic() + 30
    while not ckpt_path.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert load_checkpoint(ckpt_path)["step"] > 0  # intact and loadable



def test_held_ctrl_c_never_prints_a_traceback(tmp_path):
    """Interrupts keep coming while the run saves and the interpreter shuts down."""
    run_dir = tmp_path / "run"
    proc = _start(run_dir, "--set", "checkpoint_every=256")
    _wait_for_metrics(proc, run_dir)
    # the iteration's metrics row comes before its checkpoint: a held Ctrl-C aborts at its second
    # signal, so the checkpoint it must not lose is the one already on disk
    checkpoint = run_dir / "checkpoints" / "latest.pt"
    deadline = time.monotonic() + 60
    while not checkpoint.is_file() and time.monotonic() < deadline:
        time.sleep(0.01)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.002)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert load_checkpoint(checkpoint)["step"] > 0
