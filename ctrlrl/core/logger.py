"""Metrics to TensorBoard (stable-baselines3 scalar names), `metrics.jsonl` and the console."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ctrlrl.core.checkpoint import atomic_write

# what an update returns and the logs show as train/<key>: tensors stay on the device (no host
# synchronisation inside an update); the log reads them when it writes
Metrics = dict[str, torch.Tensor | float]


class Logger:
    """Collect scalars with `record`, write them all at one env step with `dump`.

    `metrics.jsonl` holds one JSON object per dump (`{"step": ..., "rollout/ep_rew_mean": ...}`),
    appended across resumes; it is what `ctrlrl plot` and the reports read.
    """

    def __init__(self, run_dir: Path, total_steps: int, tensorboard: bool = True,
                 progress: bool = True, start_step: int = 0):
        self.run_dir = Path(run_dir)
        self.total_steps = total_steps
        self.values: dict[str, float] = {}
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # a resumed run: TensorBoard hides the events a killed session logged past the
            # checkpoint's step (`truncate_metrics` drops the same rows from metrics.jsonl)
            self._writer = SummaryWriter(str(self.run_dir),
                                         purge_step=start_step + 1 if start_step else None)
        self._progress = Progress(total_steps, start=start_step, show=progress,
                                  order=tuple(label for _, label in CONSOLE_SCALARS))

    def record(self, key: str, value: Any) -> None:
        self.values[key] = float(value)

    def dump(self, step: int, headline: dict[str, float] | None = None) -> None:
        """Write the recorded scalars at `step`; the console shows fps, training return and true
        return, the latest evaluation and the algorithm's `headline` (label → value)."""
        if not self.values:
            return
        self._jsonl.write(json.dumps({"step": step, **self.values}) + "\n")
        if self._writer is not None:
            for key, value in self.values.items():
                self._writer.add_scalar(key, value, step)
        self._progress.update(step, console_fields(self.values, headline or {}))
        self.values = {}

    def close(self) -> None:
        self._jsonl.close()
        if self._writer is not None:
            self._writer.close()
        self._progress.close()


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows of a metrics.jsonl logged at or before `step` (a resumed run's checkpoint),
    and drop the rest: the run trains the steps after it again, and logs them then. A line cut
    short by a kill is dropped too. The file is replaced atomically."""
    path = Path(path)
    if not path.is_file():
        return
    lines = path.read_text(errors="replace").splitlines(keepends=True)
    kept = [line for line in lines if _row_step(line) is not None and _row_step(line) <= step]
    if len(kept) < len(lines):
        with atomic_write(path, "w") as f:
            f.writelines(line if line.endswith("\n") else line + "\n" for line in kept)


def _row_step(line: str) -> float | None:
    """The step of one metrics.jsonl row; None for a line that is not a complete row."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    step = row.get("step") if isinstance(row, dict) else None
    return step if isinstance(step, (int, float)) and not isinstance(step, bool) else None


# logged scalars the console shows, by label; the algorithm's headline follows them
CONSOLE_SCALARS = (("time/fps", "fps"), ("rollout/ep_rew_mean", "return"),
                   ("rollout/true_ep_rew_mean", "true return"), ("eval/mean_reward", "eval"))


def format_value(value: float) -> str:
    """A console number: one decimal from 1 up (returns, regret), three significant digits below
    (average rewards, gains)."""
    return f"{value:.1f}" if abs(value) >= 1 or value == 0 else f"{value:.3g}"


def console_fields(values: dict[str, float], headline: dict[str, float]) -> dict[str, str]:
    """Label → text of what the progress display shows from one dump."""
    shown = {label: values[key] for key, label in CONSOLE_SCALARS if key in values}
    return {label: format_value(value) for label, value in {**shown, **headline}.items()}


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class Progress:
    """Progress of a long job: a rich bar with labelled columns on a terminal; a plain line every
    10 s otherwise (CI logs), and one when the job reaches its total.

    `update(done, fields)` shows label → text pairs beside the count; each keeps its last text until
    given again (so the latest evaluation stays beside the training return between evaluations).
    Labels in `order` come first, in that order; the others as they first arrive. With
    `show=False` it shows nothing. A context manager: leaving it closes the bar.
    """

    def __init__(self, total: int, task: str = "train", unit: str = "steps", start: int = 0,
                 order: tuple[str, ...] = (), show: bool = True):
        self.total, self.task, self.unit, self.show = total, task, unit, show
        self.fields: dict[str, str] = {}
        self._order = order
        self._start, self._began = start, time.monotonic()
        self._last_line = -math.inf
        self._unprinted: str | None = None  # a plain line held back by the 10 s rule
        self._bar = None
        if show and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn(f"[bold]{task}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn(unit), TextColumn("{task.fields[info]}"),
                                     TextColumn("elapsed"), TimeElapsedColumn(),
                                     TextColumn("ETA"), TimeRemainingColumn(), transient=False)
            self._task = self._bar.add_task(task, total=total, completed=start, info="")
            self._bar.start()

    def update(self, done: int, fields: dict[str, str] | None = None) -> None:
        if not self.show:
            return
        self.fields.update(fields or {})
        first = [label for label in self._order if label in self.fields]
        labels = first + [label for label in self.fields if label not in first]
        info = "  ".join(f"{label} {self.fields[label]}" for label in labels)
        if self._bar is not None:
            self._bar.update(self._task, completed=done, info=info)
            return
        self._unprinted = f"{self.task} {done}/{self.total} {self.unit}  {info}  {self._times(done)}"
        if time.monotonic() - self._last_line > 10 or done >= self.total:
            self._print_line()

    def _print_line(self) -> None:
        print(self._unprinted, file=sys.stderr, flush=True)
        self._last_line, self._unprinted = time.monotonic(), None

    def _times(self, done: int) -> str:
        """"elapsed H:MM:SS  ETA H:MM:SS" (the ETA from the rate since the start)."""
        elapsed = time.monotonic() - self._began
        out = f"elapsed {_clock(elapsed)}"
        if self._start < done < self.total:
            out += f"  ETA {_clock(elapsed * (self.total - done) / (done - self._start))}"
        return out

    def close(self) -> None:
        """Stop the bar; without one, print the last state if the 10 s rule held it back."""
        if self._bar is not None:
            self._bar.stop()
        elif self._unprinted is not None:
            self._print_line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
