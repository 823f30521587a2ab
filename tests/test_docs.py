"""The repository speaks to its users: every pointer in its text leads somewhere a user has.

A clone holds only the tracked files, so no text may cite a document outside the repository, no page
may talk about the work that produced it instead of what it measures, and every relative link in the
markdown pages must reach a tracked file (and, where it names one, a heading of that file).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = (".py", ".md", ".yaml", ".toml", ".sh")

# Written as regular expressions so that this file does not match its own patterns.
OUTSIDE_POINTERS = {
    r"ALGORITHMS\.md": "a reference file outside the repository: cite the paper or an in-repo module",
    r"DESIGN\.md": "a design file outside the repository: point at the README's Layout or a docstring",
    r"\.\./shared\b": "a path outside the repository",
    r"\bissues?\s+#?\d": "a numbered issue: say what the text measures or does instead",
    r"\b(the|this)\s+issue\b": "talk about an issue: say what the text measures or does instead",
}
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCED_CODE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _tracked() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [p for p in out.stdout.decode().split("\0") if p]


def _pages(tracked: list[str]) -> list[str]:
    return [p for p in tracked if p == "README.md" or (p.startswith("docs/") and p.endswith(".md"))]


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_no_text_points_outside_the_repository_or_at_issues():
    tracked = _tracked()
    hits = []
    for path in tracked:
        if not path.endswith(TEXT_SUFFIXES) or not (ROOT / path).is_file():
            continue
        for n, line in enumerate((ROOT / path).read_text(encoding="utf-8").splitlines(), 1):
            for pattern, why in OUTSIDE_POINTERS.items():
                if re.search(pattern, line, re.IGNORECASE):
                    hits.append(f"{path}:{n}: {why}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)


def test_relative_markdown_links_resolve_to_tracked_files_and_headings():
    tracked = _tracked()
    files = set(tracked)
    folders = {str(parent) for p in tracked for parent in Path(p).parents}
    pages = _pages(tracked)
    assert "README.md" in pages and any(p.startswith("docs/") for p in pages)
    broken = []
    for page in pages:
        text = FENCED_CODE.sub("", (ROOT / page).read_text(encoding="utf-8"))
        for target in LINK.findall(text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            resolved = (ROOT / page).parent / path if path else ROOT / page
            try:
                name = resolved.resolve().relative_to(ROOT).as_posix()
            except ValueError:
                broken.append(f"{page}: {target}: outside the repository")
                continue
            if name not in files and name not in folders:
                broken.append(f"{page}: {target}: no tracked file {name}")
            elif anchor and name.endswith(".md"):
                headings = HEADING.findall(FENCED_CODE.sub("", (ROOT / name).read_text(encoding="utf-8")))
                if anchor not in {_anchor(h) for h in headings}:
                    broken.append(f"{page}: {target}: no heading #{anchor} in {name}")
    assert not broken, "\n".join(broken)


def test_anchor_follows_github_rules():
    assert _anchor("MDPO against its ctrlrl baselines") == "mdpo-against-its-ctrlrl-baselines"
    assert _anchor("Offline: TD3+BC against d3rlpy, `A2PR`") == "offline-td3bc-against-d3rlpy-a2pr"
