"""The README and the docs link to files of this repository (and headings in them) or to the web.

A link that leaves the repository (``../``) is dead in a clone, and so is a
path or a heading that is not there.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)
FENCE = re.compile(r"```.*?```", re.DOTALL)


def _slugs(markdown: Path) -> set[str]:
    """GitHub's anchors of a file's headings."""
    slugs = set()
    # Only fenced blocks hide headings; a heading's own code span is part of its anchor.
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", markdown.read_text()), re.MULTILINE):
        text = re.sub(r"[`*_]", "", heading.strip().lower())
        slugs.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return slugs


def _links(markdown: Path) -> list[str]:
    return LINK.findall(CODE.sub("", markdown.read_text()))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve_inside_the_repository(doc):
    for target in _links(doc):
        if target.startswith(("https://", "http://")):
            continue
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve() if path else doc
        assert resolved.is_relative_to(ROOT), f"{doc.name}: {target} leaves the repository"
        assert resolved.exists(), f"{doc.name}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in _slugs(resolved), f"{doc.name}: {target}: no such heading"


def test_the_readme_links_the_docs():
    links = _links(ROOT / "README.md")
    assert len(links) >= 8
    assert all(not link.startswith("..") for link in links)
