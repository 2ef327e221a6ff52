"""The user's docs stay usable: every relative link of the README, docs/ and CONTRIBUTING.md points at a file
(and, for ``#anchor`` links into markdown, a heading) that exists; the README stays short and opens with the
two fresh-machine commands; user-facing files cite no tracker issue numbers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
USER_FACING = [*DOCS, ROOT / "BENCHMARKS.md", *sorted((ROOT / "configs").rglob("*.yaml"))]
DEMO = "bash .ci/demo.sh"
TESTS = "bash .ci/setup.sh && .venv/bin/python -m pytest -q -p no:cacheprovider"
README_MAX_LINES = 220

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def without_fences(text: str) -> str:
    """The text without fenced code blocks (a ``#`` there is a comment, not a heading)."""
    return re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.M | re.S)


def prose(text: str) -> str:
    """The text without code blocks and inline code, where brackets are not links."""
    return re.sub(r"`[^`\n]*`", "", without_fences(text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (backticks too), spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a markdown file, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for line in without_fences(path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links(path: Path) -> list[str]:
    targets = LINK.findall(prose(path.read_text(encoding="utf-8")))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # http:, https:, mailto:


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading #{anchor} in {dest.name}")
    return problems


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert broken_links(path) == []


def test_the_docs_link_to_each_other():
    readme = relative_links(ROOT / "README.md")
    for doc in ("docs/usage.md", "docs/eval.md", "docs/results.md", "LICENSE", "CITATION.cff"):
        assert any(t.partition("#")[0] == doc for t in readme), f"README links no {doc}"


def test_link_checker_catches_a_broken_file_and_anchor(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n\n## Two words\n\n[ok](#two-words) [ok](b.md#section-b)\n")
    (tmp_path / "b.md").write_text("# Section B\n\n```\n[not a link](missing.md)\n```\n")
    assert broken_links(tmp_path / "a.md") == []
    (tmp_path / "c.md").write_text("[x](missing.md) [y](b.md#nope) [z](#nowhere) [w](https://example.org)\n")
    assert len(broken_links(tmp_path / "c.md")) == 3


def test_slug_matches_github():
    assert slug("4. The store (written by `igcritic collect`, read by `igcritic fit`)") == (
        "4-the-store-written-by-igcritic-collect-read-by-igcritic-fit"
    )
    assert slug("Quickstart: the shipped critic, 5 minutes") == "quickstart-the-shipped-critic-5-minutes"


def test_readme_is_short_and_opens_with_the_two_commands():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"
    code = [line for line in lines[:8] if line and not line.startswith(("#", "```"))]
    assert code[0].startswith(DEMO + " ") or code[0] == DEMO
    assert code[1].startswith(TESTS + " ") or code[1] == TESTS


def test_ci_runs_the_readmes_test_command():
    pytest_part = TESTS.split(" && ", 1)[1]
    assert pytest_part in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("path", USER_FACING, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_issue_numbers_in_user_facing_files(path):
    hits = re.findall(r"\bissues?\s*#?\d+", path.read_text(encoding="utf-8"), flags=re.I)
    assert hits == [], f"{path.name} cites {hits}: say what it means instead"
