"""Run directories: where a run is written (runs/<env>/<algo>/<seed>-<time>/ by default), which
folders a run may be written into, and the fully resolved config.yaml every run starts with."""

from __future__ import annotations

import errno
import os
import shutil
import socket
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

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
DATASET_FILE = "dataset.json"  # an offline run's: the dataset it reads and its rows' digest


def default_run_dir(env: str, algo: str, seed: int) -> Path:
    """runs/<env>/<algo>/<seed>-<time>, with a -<k> suffix where two runs start in the same second."""
    base = Path("runs") / env / algo / f"{seed}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path, k = base, 0
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def unwritable(path: Path, exc: OSError) -> UserError:
    return UserError(f"cannot write the run dir {path} ({exc.strerror}); "
                     "pass --run-dir with a writable folder")


class RunDirLock:
    """This process's hold on a run dir, from `claim_run_dir`; `release()` ends it. Claims of one
    folder within one process nest (a sweep's run, then the resume and the learner inside it)
    and share one OS lock, dropped when the last of them is released."""

    _held: ClassVar[dict[Path, list]] = {}  # resolved run dir → [lock file, claims]

    def __init__(self, key: Path) -> None:
        self.key = key
        self.released = False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        entry = self._held[self.key]
        entry[1] -= 1
        if entry[1] == 0:
            del self._held[self.key]
            # unlock first: a forked child (an env worker) holding a copy of the file would
            # otherwise keep the lock after this process closes it
            fcntl.flock(entry[0], fcntl.LOCK_UN)
            entry[0].close()


def claim_run_dir(path: Path) -> RunDirLock | None:
    """Hold `path` for this process until the returned lock is released (or the process ends,
    however it ends: the OS drops the lock, so a crash leaves none behind), or refuse: a second
    process in a run dir (two sweeps over one grid, a resume of a run still training) would
    truncate its logs and interleave its checkpoints. None where the OS has no `flock`."""
    if fcntl is None:
        return None
    key = path.resolve()
    if key in RunDirLock._held:
        RunDirLock._held[key][1] += 1
        return RunDirLock(key)
    lock_path = path / "checkpoints" / LOCK_NAME
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = lock_path.open("a+")
    except OSError as exc:
        raise unwritable(path, exc) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise UserError(f"run dir {path} is in use by {holder}; let that run finish or "
                            "stop it (Ctrl-C saves its checkpoint), then resume") from None
        # a filesystem without locks: the run goes on unguarded
    lock.seek(0)
    lock.truncate()
    lock.write(f"ctrlrl process {os.getpid()} on {socket.gethostname()}\n")
    lock.flush()
    RunDirLock._held[key] = [lock, 1]
    return RunDirLock(key)


def clear_run_dir(path: Path) -> None:
    """Empty `path` for a fresh start, keeping its lock file: deleting that file under a holder
    would let a second process lock a new one beside it."""
    def remove(entry: Path) -> None:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)

    for entry in path.iterdir() if path.is_dir() else []:
        if entry.name == "checkpoints" and entry.is_dir() and not entry.is_symlink():
            for inner in entry.iterdir():
                if inner.name != LOCK_NAME:
                    remove(inner)
        else:
            remove(entry)


def prepare_run_dir(path: Path, config: dict[str, Any], resuming: bool,
                    step: int) -> RunDirLock | None:
    """Make `path` ready for a run, claim it (`claim_run_dir`: the lock it returns is the
    caller's to release when the run stops training) and write its config.yaml (atomically: a
    half file would not parse).

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
            lock.release()
        raise unwritable(path, exc) from None
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
