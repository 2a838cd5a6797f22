"""Every relative link in the README and docs/ resolves: the file exists, and so does the anchor."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "sandbox/README.md"]


def _prose(text: str) -> str:
    """The text outside fenced code blocks (a link inside code is not a link)."""
    return re.sub(r"(?ms)^\s*```.*?^\s*```", "", text)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in _prose(page.read_text()).splitlines():
        if re.match(r"#{1,6} ", line):
            text = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def _relative_links(page: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(_prose(page.read_text()))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto: …
    ]


def _broken(page: Path) -> list[str]:
    broken = []
    for target in _relative_links(page):
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target} (no such heading)")
    return broken


@pytest.mark.parametrize("page", _pages(), ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert page.exists()
    assert _broken(page) == []


def test_the_docs_are_linked_from_the_readme() -> None:
    linked = {target.partition("#")[0] for target in _relative_links(ROOT / "README.md")}
    docs = {f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md")}
    assert docs, "docs/ holds no page"
    assert docs - linked == set(), "pages of docs/ that the README does not link"


def test_the_check_finds_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n")
    page.write_text(
        "# Here\n[ok](other.md#a-section) [self](#here) [web](https://example.com)\n"
        "[gone](missing.md) [no heading](other.md#nowhere)\n"
        "```\n[in code](not-checked.md)\n```\n"
    )
    assert _broken(page) == ["missing.md (no such file)", "other.md#nowhere (no such heading)"]
