"""Seed × env × algorithm sweeps: each run a separate process (locally) or a Ray task.

A sweep writes every run to a fixed place, `<out>/<env>/<label>/seed<k>/`, so running the same
command again skips the runs that finished (`done.json`), resumes the ones that were cut short
from their checkpoints, and starts the rest. Run dirs are ordinary ctrlrl run dirs: `ctrlrl
report`, `ctrlrl eval` and TensorBoard read them like any other.

Stages: the same grid at a larger `--total-steps` trains its runs on to the new budget from their
checkpoints (a run whose checkpoint is not on this machine trains again from step 0, and says so),
and a run already past a smaller one counts as complete for it. So a grid can be brought to a
short budget in every cell first and then to the full one (`ctrlrl report --at-step` compares the
cells at the short budget meanwhile), and rerunning the first stage's command later trains nothing.

Stopping: Ctrl-C (or SIGTERM) on the sweep asks every running run to finish its iteration and
checkpoint; runs live in their own process group, so the terminal's Ctrl-C reaches the sweep
only and each run is asked exactly once.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import itertools
import json
import multiprocessing as mp
import os
import signal
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ctrlrl.core.config import read_run_config
from ctrlrl.core.errors import UserError
from ctrlrl.core.run_dir import LOCK_NAME, claim_run_dir, clear_run_dir

DONE_FILE = "done.json"
SPEC_FILE = "sweep.json"
SB3_PREFIX = "sb3-"
ORPHAN_GRACE_S = 120  # a worker whose sweep died exits after this long (its run has checkpointed)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a sweep. `settings` are `--set` overrides (YAML values) plus this run's
    `--vary` values; `variant` names the varied ones, which become part of the label."""

    algo: str
    env: str
    seed: int
    total_steps: int | None
    out: str
    settings: tuple[tuple[str, Any], ...] = ()
    variant: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        if not self.variant:
            return self.algo
        return f"{self.algo}[{','.join(f'{k}={v}' for k, v in self.variant)}]"

    @property
    def run_dir(self) -> Path:
        name = self.algo + "".join(f"__{k}={v}" for k, v in self.variant)  # no glob characters
        return Path(self.out) / self.env / name / f"seed{self.seed}"

    @property
    def overrides(self) -> dict[str, Any]:
        return {**dict(self.settings), **dict(self.variant)}

    def flags(self) -> dict[str, Any]:
        flags: dict[str, Any] = {"seed": self.seed, "progress": False}
        if self.total_steps is not None:
            flags["total_steps"] = self.total_steps
        return flags


# ---- the grid ---------------------------------------------------------------------------------
def parse_names(text: str, what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError(f"--{what} is empty; give a comma-separated list, e.g. --{what} a,b")
    return names


def parse_seeds(text: str) -> list[int]:
    """`0-4` → 0..4; `0,3,7`; combinations such as `0-2,10`."""
    seeds: list[int] = []
    try:
        for part in parse_names(text, "seeds"):
            lo, _, hi = part.partition("-")
            seeds += range(int(lo), int(hi) + 1) if hi else [int(lo)]
    except ValueError:
        raise UserError(f"--seeds {text!r}: use a range like 0-4 or a list like 0,3,7") from None
    if not seeds or min(seeds) < 0:
        raise UserError(f"--seeds {text!r}: need at least one seed, all >= 0")
    return sorted(set(seeds))


def parse_vary(items: Iterable[str]) -> list[tuple[str, list[Any]]]:
    """`--vary lam=0,0.1,1` → [("lam", [0, 0.1, 1])]; values are YAML like --set's."""
    from ctrlrl.core.config import parse_set

    out = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise UserError(f"--vary {item!r}: use KEY=V1,V2,..., e.g. --vary learning_rate=1e-4,3e-4")
        out.append((key.strip(), [parse_set([f"{key}={v}"])[key.strip()] for v in values.split(",")]))
    return out


def expand_grid(algos: list[str], envs: list[str], seeds: list[int], total_steps: int | None,
                out: str, settings: dict[str, Any] | None = None,
                vary: list[tuple[str, list[Any]]] | None = None) -> list[RunSpec]:
    """All runs, seed-major: a sweep stopped early has every cell covered by its first seeds.

    A setting `ALGO.key` applies to that algorithm only (and to its stable-baselines3 twin);
    a plain `key` to every run.
    """
    settings = settings or {}
    scopes = {key.partition(".")[0] for key in settings if "." in key}
    unknown = scopes - {_base_name(a) for a in algos}
    if unknown:
        raise UserError(f"--set {sorted(unknown)[0]}.…: that algorithm is not in this grid "
                        f"({', '.join(algos)}); scope a setting as ALGO.key=value")
    keys = [k for k, _ in vary or []]
    variants = [tuple(zip(keys, values, strict=True))
                for values in itertools.product(*(v for _, v in vary or []))]
    specs = []
    for seed, env, algo, variant in itertools.product(seeds, envs, algos, variants):
        mine = {k: v for k, v in settings.items() if "." not in k}
        mine.update({k.partition(".")[2]: v for k, v in settings.items()
                     if k.partition(".")[0] == _base_name(algo) and "." in k})
        specs.append(RunSpec(algo, env, seed, total_steps, out, tuple(sorted(mine.items())), variant))
    return specs


def _base_name(algo: str) -> str:
    """The ctrlrl algorithm whose configuration a run uses (its own, or an sb3 twin's base)."""
    return algo.removeprefix(SB3_PREFIX)


def resolve_spec(spec: RunSpec):
    """(algorithm class, RunConfig, algorithm config) of a run, checked; an sb3 twin takes its
    base's."""
    from ctrlrl import api

    algo = spec.algo
    if algo.startswith(SB3_PREFIX):
        from ctrlrl.harness.sb3 import sb3_base

        algo = sb3_base(algo)
    return api.resolve(algo, spec.env, spec.overrides, **spec.flags())


def plan(specs: list[RunSpec]) -> list[tuple[RunSpec, str]]:
    """Each run with its state: `complete`, `resume`, `restart` (it logged steps, but has no
    checkpoint here to continue from) or `start`. Checks every setting first, and refuses a run
    dir that was made with a different configuration (it would be mixed up)."""
    from ctrlrl import api
    from ctrlrl.core.checkpoint import CHECKPOINT_NAME
    from ctrlrl.harness.sb3 import CHECKPOINT as SB3_CHECKPOINT

    out, digests = [], {}
    for spec in specs:
        cls, run, cfg = resolve_spec(spec)
        spec = dataclasses.replace(spec, total_steps=run.total_steps)
        config_file = spec.run_dir / "config.yaml"
        saved_budget = 0
        if config_file.is_file():
            saved = read_run_config(spec.run_dir)
            saved_budget = saved["run"].get("total_steps") or 0
            diffs = (api.config_diffs(saved, cls, run, cfg) if saved.get("algo") == spec.algo
                     else ["algo"])
            if diffs:
                raise UserError(f"{spec.run_dir} holds a run with another configuration "
                                f"({'; '.join(diffs)}); pass another --out for this sweep")
        done = spec.run_dir / DONE_FILE
        if done.is_file() and json.loads(done.read_text())["steps"] >= run.total_steps:
            state = "complete"
        elif saved_budget > run.total_steps and _logged_step(spec.run_dir) >= run.total_steps:
            # given a larger budget since and already past this one (a sweep run in stages)
            state = "complete"
        elif (spec.run_dir / "checkpoints" /
              (SB3_CHECKPOINT if spec.algo.startswith(SB3_PREFIX) else CHECKPOINT_NAME)).is_file():
            state = "resume"
        elif _logged_step(spec.run_dir) > 0:
            # trained here or elsewhere, but its checkpoint is not on this machine (checkpoints
            # stay local): only training from step 0 reaches the budget, and it replaces the logs
            state = "restart"
        else:
            state = "start"
        if state == "complete":
            _check_rows_unchanged(spec.run_dir, run, digests)
        out.append((spec, state))
    return out


def _check_rows_unchanged(run_dir: Path, run, digests: dict) -> None:
    """Refuse a finished offline run that read other rows than its dataset file holds now (the
    file was regenerated since): new seeds beside it could not be pooled with it. `digests`
    caches each file's digest across a plan."""
    from ctrlrl.core.run_dir import DATASET_FILE
    from ctrlrl.data import load

    record = run_dir / DATASET_FILE
    if not record.is_file() or not Path(run.dataset or "").is_file():
        return  # not offline, or a D4RL task or Minari id (those files are not regenerated)
    key = (run.dataset, run.env, run.keep_timeouts)
    if key not in digests:
        digests[key] = load(run.dataset, run.env, run.keep_timeouts).digest()
    read = json.loads(record.read_text())["sha256"]
    if read != digests[key]:
        raise UserError(f"{run_dir} read other rows of {run.dataset} (SHA-256 {read[:12]}…) than "
                        f"the file holds now ({digests[key][:12]}…), so runs of this sweep could "
                        "not be pooled with it: move it out of the sweep's --out, or put that file back")


# ---- one run ------------------------------------------------------------------------------------
def run_one(spec: RunSpec) -> dict[str, Any]:
    """Train one run (a `plan`ned spec: budget resolved) to its budget, resuming when it has a
    checkpoint; never raises.

    Returns {"status": "done" | "stopped" | "failed", "message", "steps", "wall_time"}.
    """
    from ctrlrl.core.signals import stop_requested

    run_dir = spec.run_dir
    if stop_requested():  # queued before the sweep was stopped
        return {"status": "stopped", "message": "not started"}
    try:  # held from here to done.json: a second sweep over the grid leaves this run alone
        claim = claim_run_dir(run_dir)
    except UserError as exc:  # in use (its error.txt is not this sweep's to write) or unwritable
        return {"status": "failed", "message": str(exc)}
    try:
        return _run_claimed(spec)
    finally:
        if claim is not None:
            claim.release()


def _run_claimed(spec: RunSpec) -> dict[str, Any]:
    from ctrlrl.core.signals import TrainingInterrupted

    run_dir = spec.run_dir
    # a finished run given a larger budget is unfinished until it reaches it (`report --finished`)
    (run_dir / DONE_FILE).unlink(missing_ok=True)
    try:
        if spec.algo.startswith(SB3_PREFIX):
            from ctrlrl.harness.sb3 import train_sb3

            steps, wall = train_sb3(spec)
        else:
            steps, wall = _train_ctrlrl(spec)
    except TrainingInterrupted:
        return {"status": "stopped", "message": "stopped; checkpoint saved"}
    except UserError as exc:
        _write_error(run_dir, str(exc))
        return {"status": "failed", "message": str(exc)}
    except Exception as exc:  # one broken run must not take the sweep down
        _write_error(run_dir, traceback.format_exc())
        return {"status": "failed",
                "message": f"{type(exc).__name__}: {exc} (traceback in {run_dir / 'error.txt'})"}
    if steps < spec.total_steps:
        return {"status": "stopped", "message": f"stopped at step {steps}"}
    (run_dir / "error.txt").unlink(missing_ok=True)
    (run_dir / DONE_FILE).write_text(json.dumps({"steps": steps, "wall_time": wall}))
    return {"status": "done", "message": f"{steps} steps in {wall:.0f} s", "steps": steps,
            "wall_time": wall}


def _train_ctrlrl(spec: RunSpec) -> tuple[int, float]:
    from ctrlrl import api
    from ctrlrl.core.checkpoint import CHECKPOINT_NAME

    if (spec.run_dir / "checkpoints" / CHECKPOINT_NAME).is_file():
        algo = api.resume(spec.run_dir, spec.algo, spec.env, spec.overrides, **spec.flags())
    else:
        algo = api.make(spec.algo, spec.env, spec.overrides, **spec.flags())
        # an earlier attempt that failed before its run dir was set up left only its error
        (spec.run_dir / "error.txt").unlink(missing_ok=True)
        algo.setup_run_dir(spec.run_dir)
    write_spec(spec)
    try:
        algo.learn()
    finally:
        algo.close()
    return algo.step, algo.wall_time


def write_spec(spec: RunSpec) -> None:
    """`sweep.json`: the run's label and grid cell, for reports."""
    data = {"label": spec.label, "algo": spec.algo, "env": spec.env, "seed": spec.seed,
            "variant": dict(spec.variant)}
    (spec.run_dir / SPEC_FILE).write_text(json.dumps(data))


def _write_error(run_dir: Path, text: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "error.txt").write_text(text + "\n")


# ---- local processes ------------------------------------------------------------------------------
def _worker_init(parent_pid: int, stop) -> None:
    """Runs in each worker process: own process group (the terminal's Ctrl-C goes to the sweep
    alone), and a watcher that stops the run (checkpoint first) when the sweep sets `stop` or dies.

    `stop` is a lock-free shared byte, polled: an `mp.Event` would deadlock the sweep's `set()`
    on the waits of workers that have already exited.
    """
    from ctrlrl.core.signals import request_stop, wait_while_parent

    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, request_stop)

    def watch() -> None:
        wait_while_parent(parent_pid, lambda: stop.value)
        request_stop()
        wait_while_parent(parent_pid)
        time.sleep(ORPHAN_GRACE_S)  # the sweep died: leave its run time to checkpoint, then go
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def run_local(specs: list[RunSpec], workers: int, on_update: Callable[[], None],
              on_result: Callable[[RunSpec, dict], None]) -> None:
    """Run `specs` on `workers` processes (a fresh one per run: no state leaks between runs)."""
    ctx = mp.get_context("spawn")
    stop = ctx.RawValue("b", 0)
    pool = cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                  initargs=(os.getpid(), stop), max_tasks_per_child=1)
    futures = {pool.submit(run_one, spec): spec for spec in specs}
    pending = set(futures)
    try:
        with _sigterm_as_interrupt():
            while pending:
                done, pending = cf.wait(pending, timeout=1.0, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    on_result(futures[fut], _result(fut))
                on_update()
    except KeyboardInterrupt:
        print("\nsweep: stopping; each running run saves a checkpoint (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)
        stop.value = 1
        for fut in pending:
            fut.cancel()
        try:
            for fut in pending:
                if not fut.cancelled():
                    on_result(futures[fut], _result(fut))
        except KeyboardInterrupt:  # checkpoints on disk stay valid: they are replaced atomically
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.kill()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _result(fut: cf.Future) -> dict[str, Any]:
    try:
        return fut.result()
    except Exception as exc:  # the worker process itself died
        return {"status": "failed", "message": f"worker process died ({type(exc).__name__}: {exc})"}


class _sigterm_as_interrupt:
    """SIGTERM on the sweep (a batch system's stop) behaves like Ctrl-C. Both handlers are set
    explicitly, as `ctrlrl train` does: a sweep started where SIGINT is ignored (a script's
    background job) would otherwise never see its Ctrl-C / `kill -INT`."""

    def __enter__(self):
        def handler(signum, frame):
            raise KeyboardInterrupt

        self._old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)} \
            if threading.current_thread() is threading.main_thread() else {}
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


# ---- Ray ------------------------------------------------------------------------------------------
def run_ray(specs: list[RunSpec], workers: int, address: str | None, storage: str,
            on_update: Callable[[], None], on_result: Callable[[RunSpec, dict], None]) -> None:
    """Each run one Ray task (1 CPU). `storage="shared"`: tasks write to `out` directly (a local
    Ray instance, or a path every node mounts); `storage="copy"`: each task works in a temporary
    dir on its node, receiving the run dir (to resume) and sending it back when it ends."""
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"address": address} if address else {"num_cpus": workers}
        ray.init(include_dashboard=False, log_to_driver=False, **kwargs)
    task = ray.remote(num_cpus=1, max_calls=1)(_ray_task)
    refs = {task.remote(spec, storage, _pack(spec.run_dir) if storage == "copy" else None): spec
            for spec in specs}
    try:
        with _sigterm_as_interrupt():
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                for ref in done:
                    spec = refs[ref]
                    try:
                        result, archive = ray.get(ref)
                    except Exception as exc:
                        result, archive = {"status": "failed", "message": f"Ray task failed: {exc}"}, None
                    if archive is not None:
                        _unpack(archive, spec.run_dir)
                    on_result(spec, result)
                on_update()
    except KeyboardInterrupt:
        print("\nsweep: cancelling the Ray tasks; runs continue later from their last checkpoint",
              file=sys.stderr, flush=True)
        for ref in refs:
            ray.cancel(ref)
        raise
    finally:
        if started:
            ray.shutdown()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--backend ray needs Ray: pip install 'ctrlrl[ray]'") from None
    return ray


def _ray_task(spec: RunSpec, storage: str, archive: bytes | None):
    if storage == "shared":
        return run_one(spec), None
    with tempfile.TemporaryDirectory(prefix="ctrlrl-ray-") as tmp:
        local = dataclasses.replace(spec, out=tmp)
        if archive is not None:
            _unpack(archive, local.run_dir)
        result = run_one(local)
        return result, _pack(local.run_dir)


def _pack(run_dir: Path) -> bytes | None:
    if not run_dir.is_dir():
        return None
    with tempfile.TemporaryFile() as f:
        with tarfile.open(fileobj=f, mode="w:gz") as tar:  # the lock is the holder's, not the run's
            tar.add(run_dir, arcname=".",
                    filter=lambda info: None if info.name.endswith("/" + LOCK_NAME) else info)
        f.seek(0)
        return f.read()


def _unpack(archive: bytes, run_dir: Path) -> None:
    import io

    clear_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(run_dir, filter="data")


# ---- the command ----------------------------------------------------------------------------------
def sweep(specs: list[RunSpec], workers: int, backend: str = "local", address: str | None = None,
          storage: str = "shared", progress: bool = True) -> dict[str, int]:
    """Run the grid; returns counts by outcome. Raises UserError listing failed runs."""
    if workers < 1:
        raise UserError(f"--workers {workers}: need at least 1")
    if backend not in ("local", "ray"):
        raise UserError(f"--backend {backend!r}: use local or ray")
    if backend == "ray":
        _import_ray()  # before anything is planned or printed
    planned = plan(specs)
    todo = [s for s, state in planned if state != "complete"]
    counts = {state: sum(1 for _, s in planned if s == state)
              for state in ("complete", "resume", "restart", "start")}
    restart = (f"{counts['restart']} to train again from step 0 (no checkpoint here), "
               if counts["restart"] else "")
    print(f"sweep: {len(planned)} runs in {specs[0].out}: {counts['complete']} complete (skipped), "
          f"{counts['resume']} to resume, {restart}{counts['start']} to start; {backend}, "
          f"{min(workers, max(len(todo), 1))} at a time", file=sys.stderr, flush=True)
    for spec, state in planned:
        if state == "restart":
            print(f"sweep: note: {spec.run_dir} logged {_logged_step(spec.run_dir)} steps but has "
                  f"no checkpoint here: it trains again from step 0 to {spec.total_steps}, writing "
                  "its metrics.jsonl anew", file=sys.stderr)
    bar = _SweepProgress([s for s, _ in planned], progress)
    outcomes = {"done": 0, "stopped": 0, "failed": 0, "skipped": counts["complete"]}
    failed: list[str] = []

    def on_result(spec: RunSpec, result: dict) -> None:
        outcomes[result["status"]] += 1
        bar.finished(spec, result)
        if result["status"] == "failed":
            failed.append(f"{spec.run_dir}: {result['message'].splitlines()[0]}")

    try:
        if todo and backend == "local":
            run_local(todo, workers, bar.update, on_result)
        elif todo:
            run_ray(todo, workers, address, storage, bar.update, on_result)
    except KeyboardInterrupt:
        bar.close()
        raise UserError("sweep stopped; run the same command again to finish the missing runs") from None
    bar.close()
    if failed:
        raise UserError(f"{len(failed)} of {len(planned)} runs failed: " + " | ".join(failed))
    return outcomes


class _SweepProgress:
    """One bar over all runs' env steps (read from their metrics.jsonl), a line per finished run."""

    def __init__(self, specs: list[RunSpec], enabled: bool):
        self.specs = specs
        self.total = sum(s.total_steps or 0 for s in specs)
        self.n_done = 0
        self._bar = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("[bold]sweep"), BarColumn(),
                                 TextColumn("{task.fields[runs]}"), TimeRemainingColumn())
            self._task = self._bar.add_task("sweep", total=self.total, runs="")
            self._bar.start()
        self.update()

    def update(self) -> None:
        if self._bar is None:
            return
        steps = sum(min(_logged_step(s.run_dir), s.total_steps or 0) for s in self.specs)
        self._bar.update(self._task, completed=steps,
                         runs=f"{self.n_done}/{len(self.specs)} runs")

    def finished(self, spec: RunSpec, result: dict) -> None:
        self.n_done += 1
        line = f"[{result['status']}] {spec.label} on {spec.env} seed {spec.seed}: {result['message']}"
        if self._bar is not None:
            self._bar.console.print(line.splitlines()[0])
        else:
            print(line.splitlines()[0], file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self.update()
            self._bar.stop()


def _logged_step(run_dir: Path) -> int:
    """The step of the last line of a run's metrics.jsonl (0 if none yet)."""
    if (run_dir / DONE_FILE).is_file():
        return json.loads((run_dir / DONE_FILE).read_text())["steps"]
    try:
        with open(run_dir / "metrics.jsonl", "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().splitlines()
        return int(json.loads(lines[-1])["step"]) if lines else 0
    except (OSError, ValueError, KeyError):
        return 0
