"""Run directories: where a run is written (runs/<env>/<algo>/<seed>-<time>/ by default), which
folders a run may be written into, and the fully resolved config.yaml every run starts with."""

from __future__ import annotations

import errno
import os
from datetime import datetime
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # Windows: runs are not locked there
    fcntl = None

import yaml

from ctrlrl.core.checkpoint import CHECKPOINT_NAME, atomic_write
from ctrlrl.core.config import YAML_FAILURES
from ctrlrl.core.errors import UserError
from ctrlrl.core.logger import truncate_metrics

LOCK_NAME = "run.lock"  # in checkpoints/, which stays local like the checkpoint itself


def default_run_dir(env: str, algo: str, seed: int) -> Path:
    """runs/<env>/<algo>/<seed>-<time>, with a -<k> suffix where two runs start in the same second."""
    base = Path("runs") / env / algo / f"{seed}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path, k = base, 0
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def claim_run_dir(path: Path) -> IO | None:
    """Lock `path` for this process for as long as the returned file stays open, or refuse: a
    second process in a run dir (two sweeps over one grid, a resume of a run still training)
    would truncate its logs and interleave its checkpoints. The OS drops the lock when the file
    is closed or its process exits, however it exits, so a crash leaves no stale lock."""
    if fcntl is None:
        return None
    lock_path = path / "checkpoints" / LOCK_NAME
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = lock_path.open("a+")
    except OSError as exc:
        raise UserError(f"cannot write the run dir {path} ({exc.strerror}); "
                        "pass --run-dir with a writable folder") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):  # a filesystem without locks: go on
            return lock
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise UserError(f"run dir {path} is in use by {holder}; let that run finish or stop it "
                        "(Ctrl-C saves its checkpoint), then resume") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"ctrlrl process {os.getpid()}\n")
    lock.flush()
    return lock


def prepare_run_dir(path: Path, config: dict[str, Any], resuming: bool, step: int) -> IO | None:
    """Make `path` ready for a run, claim it (`claim_run_dir`: the lock it returns is the
    caller's to keep open while the run trains) and write its config.yaml (atomically: a half
    file would not parse).

    A fresh run goes into a new or empty folder, or a run dir that never reached its first
    checkpoint (`is_run_dir`); never into a folder that holds a checkpoint or anything else.
    Resuming drops the metrics.jsonl rows past the checkpoint's `step`: the steps after it are
    trained again, and no step is logged twice.
    """
    if not resuming and (path / "checkpoints" / CHECKPOINT_NAME).exists():
        raise UserError(f"run dir {path} already holds a run; continue it with "
                        f"--resume {path} or pass another --run-dir")
    if not resuming and path.exists() and not is_run_dir(path) and (
            not path.is_dir() or any(path.iterdir())):
        raise UserError(f"--run-dir {path} is neither an empty folder nor a ctrlrl run (a "
                        "config.yaml with an algo, or checkpoints/); pass a new or empty folder")
    lock = claim_run_dir(path)
    try:
        if resuming:
            truncate_metrics(path / "metrics.jsonl", step)
        else:  # a run that died before its first checkpoint leaves only logs: start afresh
            for log in [path / "metrics.jsonl", *path.glob("events.out.tfevents.*")]:
                log.unlink(missing_ok=True)
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
        with atomic_write(path / "config.yaml", "w") as f:
            f.write(yaml.safe_dump(config, sort_keys=False))
    except OSError as exc:
        if lock is not None:
            lock.close()
        raise UserError(f"cannot write the run dir {path} ({exc.strerror}); "
                        "pass --run-dir with a writable folder") from None
    return lock


def is_run_dir(path: Path) -> bool:
    """A folder ctrlrl wrote a run into: it has checkpoints/, or a config.yaml that maps `algo`
    (what `prepare_run_dir` writes first). The one kind of non-empty folder a run may reuse."""
    if (path / "checkpoints").is_dir():
        return True
    try:
        config = yaml.safe_load((path / "config.yaml").read_text())
    except (OSError, *YAML_FAILURES):  # YAML_FAILURES' ValueError covers non-UTF-8 files
        return False
    return isinstance(config, dict) and "algo" in config
