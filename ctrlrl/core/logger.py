"""Metrics to TensorBoard (stable-baselines3 scalar names), `metrics.jsonl` and the console."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


class Logger:
    """Collect scalars with `record`, write them all at one env step with `dump`.

    `metrics.jsonl` holds one JSON object per dump (`{"step": ..., "rollout/ep_rew_mean": ...}`),
    appended across resumes; it is what `ctrlrl plot` and the reports read.
    """

    def __init__(self, run_dir: Path, total_steps: int, tensorboard: bool = True,
                 progress: bool = True):
        self.run_dir = Path(run_dir)
        self.total_steps = total_steps
        self.values: dict[str, float] = {}
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir))
        self._progress = _Progress(total_steps) if progress else None

    def record(self, key: str, value: Any) -> None:
        self.values[key] = float(value)

    def dump(self, step: int) -> None:
        if not self.values:
            return
        self._jsonl.write(json.dumps({"step": step, **self.values}) + "\n")
        if self._writer is not None:
            for key, value in self.values.items():
                self._writer.add_scalar(key, value, step)
        if self._progress is not None:
            self._progress.update(step, self.values)
        self.values = {}

    def close(self) -> None:
        self._jsonl.close()
        if self._writer is not None:
            self._writer.close()
        if self._progress is not None:
            self._progress.close()


class _Progress:
    """A rich progress bar on a terminal; a plain line every 10 s otherwise (CI logs)."""

    def __init__(self, total: int):
        self.total = total
        self._last_line = 0.0
        self._bar = None
        if sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                 transient=False)
            self._task = self._bar.add_task("train", total=total, info="")
            self._bar.start()

    def update(self, step: int, values: dict[str, float]) -> None:
        parts = [f"fps {values['time/fps']:.0f}"] if "time/fps" in values else []
        for key, label in (("rollout/ep_rew_mean", "return"), ("eval/mean_reward", "eval")):
            if key in values:
                parts.append(f"{label} {values[key]:.1f}")
        info = "  ".join(parts)
        if self._bar is not None:
            self._bar.update(self._task, completed=min(step, self.total), info=info)
        elif time.monotonic() - self._last_line > 10 or step >= self.total:
            self._last_line = time.monotonic()
            print(f"step {step}/{self.total}  {info}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
