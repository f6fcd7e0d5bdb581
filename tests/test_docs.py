"""The README and docs/ link only to files and headings that exist.

Why: docs/benchmarks.md is rewritten every round and its headings move; a link to a heading
that is gone lands at the top of a 1,000-line page without a word. GitHub's heading anchors
are what the links are checked against (lower case, punctuation dropped, spaces to hyphens,
a repeated heading numbered from -1).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading (before numbering repeats)."""
    text = heading.strip().lower().replace("`", "").replace("*", "")
    text = re.sub(r"\[([^]]*)]\([^)]*\)", r"\1", text)  # a link shows its text only
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of ``page``, repeats numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for line in _FENCE.sub("", page.read_text()).splitlines():
        m = _HEADING.match(line)
        if m:
            a = github_anchor(m.group(2))
            n = seen.get(a, 0)
            seen[a] = n + 1
            out.add(a if n == 0 else f"{a}-{n}")
    return out


def local_links(page: Path) -> list[str]:
    """Links of ``page`` outside code blocks that point into the repository."""
    text = _FENCE.sub("", page.read_text())
    return [
        url for url in _LINK.findall(text)
        if not re.match(r"[a-z][a-z0-9+.-]*:", url)  # http:, https:, mailto: ...
    ]


def test_github_anchor_drops_punctuation_and_keeps_hyphens_and_underscores():
    assert github_anchor("Latency: reading → score and reading → alert") == (
        "latency-reading--score-and-reading--alert"
    )
    assert github_anchor("`VIGIL_STATE_SHARDS` and *recovery*") == (
        "vigil_state_shards-and-recovery"
    )


def test_a_repeated_heading_gets_a_numbered_anchor(tmp_path: Path):
    page = tmp_path / "p.md"
    page.write_text("# Runs\n\n## Runs\n\n```\n# not a heading\n```\n")
    assert anchors(page) == {"runs", "runs-1"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_link_in_the_page_reaches_an_existing_file_and_heading(page: Path):
    broken = []
    for url in local_links(page):
        path, _, fragment = url.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{url}: no file {target.relative_to(ROOT)}")
        elif fragment and target.suffix == ".md" and fragment not in anchors(target):
            broken.append(f"{url}: no heading with that anchor in {target.name}")
    assert not broken, f"{page.name} has broken links:\n" + "\n".join(broken)
