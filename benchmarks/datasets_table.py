"""The table of docs/datasets.md: every generated dataset's size and returns, from the files.

    python benchmarks/datasets_table.py [DIR]      # default: <data dir>/generated ($CTRLRL_DATA)
"""

from __future__ import annotations

import sys
from pathlib import Path

from ctrlrl.core.evaluation import normalized_score
from ctrlrl.data import data_dir, episode_returns, read_d4rl, reference_scores

COLUMNS = ("File", "Env", "Level", "Transitions", "Episodes", "Return (mean ± std)",
           "Normalised", "Policy: SAC steps, eval return")


def row(path: Path) -> list[str]:
    data = read_d4rl(path)
    meta = {k.removeprefix("metadata/"): v for k, v in data.items() if k.startswith("metadata/")}
    env_id = str(meta.get("env_id", "?"))
    returns = episode_returns(data)
    refs = reference_scores(env_id)
    norm = f"{normalized_score(returns.mean(), *refs):.1f}" if refs and len(returns) else "—"
    policies = [f"{meta[f'{p}_policy_steps']} steps, {float(meta[f'{p}_policy_eval_return']):.0f}"
                for p in ("medium", "expert") if f"{p}_policy_steps" in meta]
    return [path.name, env_id, str(meta.get("level", "?")), f"{len(data['rewards']):,}",
            str(len(returns)), f"{returns.mean():.1f} ± {returns.std():.1f}", norm,
            "; ".join(policies) or "— (uniform random actions)"]


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else data_dir() / "generated"
    files = sorted(folder.glob("*.hdf5"))
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for path in files:
        print("| " + " | ".join(row(path)) + " |")
    if not files:
        print(f"(no datasets in {folder})", file=sys.stderr)


if __name__ == "__main__":
    main()
