"""Every relative link in README.md, docs/*.md and experiments/README.md points at a file that exists, and every
#anchor at a heading of that file (GitHub's slugs: lower case, punctuation dropped, spaces to hyphens)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from configuration import REPO_ROOT

DOCS = [REPO_ROOT / 'README.md', *sorted((REPO_ROOT / 'docs').glob('*.md')), REPO_ROOT / 'experiments' / 'README.md']
LINK = re.compile(r'(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)')


def slug(heading: str) -> str:
    """GitHub's anchor for a heading text."""
    text = re.sub(r'[`*_]', '', heading.strip().lower())
    text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', text)
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


def anchors(path: Path) -> set[str]:
    """The anchors of a markdown file's headings (outside code blocks)."""
    found, fenced = set(), False
    for line in path.read_text(encoding='utf-8').splitlines():
        if line.startswith('```'):
            fenced = not fenced
        elif not fenced and line.startswith('#'):
            found.add(slug(line.lstrip('#')))
    return found


def links(path: Path) -> list[str]:
    """Relative link targets of a markdown file (outside code blocks)."""
    out, fenced = [], False
    for line in path.read_text(encoding='utf-8').splitlines():
        if line.startswith('```'):
            fenced = not fenced
            continue
        if not fenced:
            out += [a or b for a, b in LINK.findall(line)]
    return [t for t in out if not re.match(r'^[a-z]+:', t)]


def test_slug_matches_githubs_rule():
    assert slug(' Reading on the CPU with ONNX Runtime') == 'reading-on-the-cpu-with-onnx-runtime'
    assert slug('Does ConCLR help?') == 'does-conclr-help'
    assert slug('`--phase test`: the table') == '--phase-test-the-table'


@pytest.mark.parametrize('doc', DOCS, ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(doc):
    broken = []
    for target in links(doc):
        file_part, _, anchor = target.partition('#')
        path = (doc.parent / file_part).resolve() if file_part else doc
        if not path.exists():
            broken.append(f'{target}: no such file')
        elif anchor and path.suffix == '.md' and anchor not in anchors(path):
            broken.append(f'{target}: no heading with that anchor')
    assert not broken, f'{doc.name}: ' + '; '.join(broken)
