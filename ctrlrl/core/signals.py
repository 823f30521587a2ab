"""Process-wide stop requests: Ctrl-C and SIGTERM during training, or a caller's `request_stop`.

The training loop (`Algorithm.learn`) runs inside `deferred_sigint`: a first signal lets the
current iteration finish and the final checkpoint be written, then `learn` raises
`TrainingInterrupted`; a second signal aborts at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_stop = threading.Event()  # a stop was asked for (Ctrl-C, SIGTERM, a sweep shutting down)
_stop_signal = [0]  # the signal that asked for it; 0: asked without one (a sweep stopping)


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C or SIGTERM once the final checkpoint is on disk; `signum` is the
    signal that asked to stop (the CLI exits with 128 + signum, the shell convention)."""

    def __init__(self, checkpoint: Path, signum: int = signal.SIGINT):
        super().__init__(f"{signal_name(signum)}: stopped; checkpoint saved to {checkpoint}")
        self.checkpoint, self.signum = checkpoint, signum


def request_stop(signum: int | None = None, frame: Any = None) -> None:
    """Ask the training loop of this process to checkpoint and stop after its current iteration.

    Usable as a signal handler; a request that comes before `learn` starts is honoured when it does.
    """
    _stop_signal[0] = signum or _stop_signal[0]
    _stop.set()


def wait_while_parent(parent_pid: int, until: Callable[[], bool] = lambda: False) -> None:
    """Block while the process that started this one (`parent_pid`) lives and `until()` is false,
    polling every 0.5 s: how a child process learns that its parent was killed (it is told nothing)."""
    while os.getppid() == parent_pid and not until():
        time.sleep(0.5)


def stop_requested() -> bool:
    return _stop.is_set()


def stop_signal() -> int:
    """The signal that asked this process to stop (SIGINT for a request without one); 0: none."""
    return (_stop_signal[0] or signal.SIGINT) if _stop.is_set() else 0


def signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


@contextlib.contextmanager
def deferred_sigint() -> Iterator[Callable[[], int]]:
    """First Ctrl-C (or SIGTERM, e.g. a preempted job): finish the current iteration,
    checkpoint, stop. A second one aborts at once. Yields `stop_signal`, which the loop polls.

    Either way the checkpoint on disk stays intact: it is only ever replaced atomically.
    """
    if threading.current_thread() is not threading.main_thread():
        yield stop_signal
        return

    def handler(signum, frame):
        if _stop_signal[0]:  # a second signal (a stop asked without one still waits for its first)
            raise KeyboardInterrupt
        request_stop(signum)
        print(f"\n{signal_name(signum)}: finishing this iteration and saving a checkpoint "
              "(again to abort)", file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop_signal
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _stop.clear()
        _stop_signal[0] = 0
