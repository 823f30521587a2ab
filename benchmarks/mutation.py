"""Mutation check of the algorithms' defining lines.

Each `benchmarks/mutants/<algo>.yaml` lists one-line semantic mutants of an algorithm's update path
(a flipped sign, a dropped term, min for max, the wrong policy or return) and the default-run tests
that must catch them:

    - file: ctrlrl/algos/td3.py            # relative to the repository root
      find: "torch.min(q1, q2)"             # exact text, found exactly once in that file
      replace: "torch.max(q1, q2)"
      what: "clipped double-Q: min -> max"
      tests: tests/test_wiring_baselines.py::test_td3_target   # pytest arguments
      equivalent: "why it cannot change behaviour"             # optional; such a mutant is not run

For each mutant this script copies `ctrlrl/`, `tests/` and `pyproject.toml` to a scratch directory,
applies the replacement there (the working tree is never touched), and runs `pytest -x -q` on the
listed tests with that copy first on the import path. A mutant is killed when pytest reports a
failure. The listed tests are part of the default run, so a mutant they kill fails the default run.

    python benchmarks/mutation.py                     # every algorithm
    python benchmarks/mutation.py --algos td3,sac     # some
    python benchmarks/mutation.py --markdown docs/testing-mutants.md   # also write the tables
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "benchmarks" / "mutants"
COPIED = ("ctrlrl", "tests", "pyproject.toml")


@dataclass
class Mutant:
    algo: str
    file: str
    find: str
    replace: str
    what: str
    tests: str
    equivalent: str | None = None


@dataclass
class Outcome:
    mutant: Mutant
    status: str      # killed | SURVIVED | equivalent | invalid
    seconds: float
    detail: str = ""


def load_mutants(algos: list[str] | None) -> list[Mutant]:
    files = sorted(MUTANTS.glob("*.yaml"))
    known = [f.stem for f in files]
    if algos:
        unknown = [a for a in algos if a not in known]
        if unknown:
            sys.exit(f"mutation.py: no mutants file for {', '.join(unknown)}; known: {', '.join(known)}")
        files = [MUTANTS / f"{a}.yaml" for a in algos]
    mutants = []
    for f in files:
        entries = yaml.safe_load(f.read_text()) or []
        for i, e in enumerate(entries):
            missing = [k for k in ("file", "find", "replace", "what", "tests") if k not in e]
            if missing:
                sys.exit(f"mutation.py: {f.name} entry {i + 1} lacks {', '.join(missing)}")
            mutants.append(Mutant(algo=f.stem, **{k: e[k] for k in
                                                  ("file", "find", "replace", "what", "tests")},
                                  equivalent=e.get("equivalent")))
    return mutants


def copy_tree(dest: Path) -> None:
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)


def pytest(tests: str, scratch: Path, timeout: float) -> tuple[int, str]:
    """Exit code and last output line of `pytest -x -q TESTS` run on the scratch copy."""
    env = {**os.environ, "PYTHONPATH": str(scratch), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests.split()]
    try:
        proc = subprocess.run(cmd, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        code, out = -1, "timeout"
    lines = [ln for ln in out.strip().splitlines() if ln.strip()]
    return code, lines[-1] if lines else ""


def run_one(m: Mutant, scratch: Path, timeout: float, baseline: dict[str, str]) -> Outcome:
    if m.equivalent:
        return Outcome(m, "equivalent", 0.0, m.equivalent)
    if m.tests not in baseline:  # the tests must pass unmutated, or a failure proves nothing
        code, last = pytest(m.tests, scratch, timeout)
        baseline[m.tests] = "" if code == 0 else f"fails unmutated (exit {code}): {last}"
    if baseline[m.tests]:
        return Outcome(m, "invalid", 0.0, baseline[m.tests])
    target = scratch / m.file
    original = target.read_text()
    count = original.count(m.find)
    if count != 1:
        return Outcome(m, "invalid", 0.0, f"`find` occurs {count} times in {m.file}")
    target.write_text(original.replace(m.find, m.replace))
    start = time.perf_counter()
    try:
        code, last = pytest(m.tests, scratch, timeout)
    finally:
        target.write_text(original)
    seconds = time.perf_counter() - start
    if code == 1:
        return Outcome(m, "killed", seconds, last)
    if code == 0:
        return Outcome(m, "SURVIVED", seconds, last)
    # collection errors, usage errors or a timeout say nothing about the mutant: fix the entry
    return Outcome(m, "invalid", seconds, f"pytest exit {code}: {last}")


def check_copy_imports(scratch: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(scratch)}
    out = subprocess.run([sys.executable, "-c", "import ctrlrl; print(ctrlrl.__file__)"], cwd=scratch,
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    if not out.startswith(str(scratch)):
        sys.exit(f"mutation.py: the scratch copy is not imported first (got {out})")


def summary_table(outcomes: list[Outcome]) -> str:
    rows = ["| Algorithm | Mutants | Killed | Equivalent | Survived |", "|---|---|---|---|---|"]
    for algo in dict.fromkeys(o.mutant.algo for o in outcomes):
        mine = [o for o in outcomes if o.mutant.algo == algo]
        n = {s: sum(o.status == s for o in mine) for s in ("killed", "equivalent", "SURVIVED", "invalid")}
        survived = n["SURVIVED"] + n["invalid"]
        rows.append(f"| {algo} | {len(mine)} | {n['killed']} | {n['equivalent']} | {survived} |")
    return "\n".join(rows)


def detail_table(outcomes: list[Outcome]) -> str:
    rows = ["| Algorithm | Mutant | File | Result | Tests |", "|---|---|---|---|---|"]
    for o in outcomes:
        result = o.status if o.status != "equivalent" else f"equivalent: {o.detail}"
        what = o.mutant.what.replace("|", "\\|")
        rows.append(f"| {o.mutant.algo} | {what} | `{o.mutant.file}` | {result} | `{o.mutant.tests}` |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algos", help="comma-separated names of files in benchmarks/mutants/")
    p.add_argument("--timeout", type=float, default=600, help="seconds per mutant")
    p.add_argument("--markdown", help="also write the summary and per-mutant tables to this file")
    args = p.parse_args()
    mutants = load_mutants(args.algos.split(",") if args.algos else None)
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="ctrlrl-mutants-") as tmp:
        scratch = Path(tmp)
        copy_tree(scratch)
        check_copy_imports(scratch)
        baseline: dict[str, str] = {}
        for m in mutants:
            o = run_one(m, scratch, args.timeout, baseline)
            outcomes.append(o)
            print(f"{o.status:10s} {o.seconds:6.1f}s  {m.algo}: {m.what}  [{o.detail}]", flush=True)
    print()
    print(summary_table(outcomes))
    if args.markdown:
        Path(args.markdown).write_text(summary_table(outcomes) + "\n\n" + detail_table(outcomes) + "\n")
    sys.exit(0 if all(o.status in ("killed", "equivalent") for o in outcomes) else 1)


if __name__ == "__main__":
    main()
