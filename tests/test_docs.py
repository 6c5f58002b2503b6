"""The README is a door: every page of docs/ is linked from it, and every link of README.md and docs/ leads
somewhere (the file exists, and the heading a #fragment names is in it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)  # a '#' in a code block is no heading
    return {slug(m) for m in re.findall(r"(?m)^#{1,6} (.+)$", text)}


def test_slugs_are_githubs():
    assert slug("The study: `make study`") == "the-study-make-study"
    assert slug("Full-resolution Dice (Kaggle's metric)") == "full-resolution-dice-kaggles-metric"


@pytest.mark.parametrize("page", PAGES)
def test_every_link_leads_somewhere(page):
    source = REPO / page
    broken = []
    for target in LINK.findall(source.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto: ...: not this repository's
            continue
        file, _, fragment = target.partition("#")
        path = (source.parent / file).resolve() if file else source
        if not path.exists():
            broken.append(f"{target} (no file {file})")
        elif fragment and path.suffix == ".md" and fragment not in anchors(path):
            broken.append(f"{target} (no heading #{fragment} in {path.name})")
    assert not broken, f"{page}: {broken}"


def test_the_readme_links_every_page_of_docs():
    linked = {Path(t.partition("#")[0]).name for t in LINK.findall((REPO / "README.md").read_text())}
    pages = {p.name for p in (REPO / "docs").glob("*.md")}
    assert pages <= linked, f"pages of docs/ the README does not link: {sorted(pages - linked)}"
