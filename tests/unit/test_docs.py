"""The README and docs/ stay true to the tree: every relative link lands on a file (and heading), every file a
command block names exists, the README stays a front door, and the Horovod mapping is written in one place only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit

README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 260  # issue 21: "README ≤ ~250 lines"; the rest belongs under docs/

FENCE = re.compile(r"^(\s*)(```|~~~)(\S*)")
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
COMMAND_LANGUAGES = {"sh", "bash", "shell", "console"}
# A repository path in a command: starts a word (not after "/", "$", "." or a letter, so no URL, absolute path,
# variable or .venv) and has at least one "/".
REPO_PATH = re.compile(r"(?<![\w./$-])([A-Za-z_][\w.-]*(?:/[\w.-]+)+/?)")
TOP_LEVEL_DIRS = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}
HOROVOD_TABLE_HEADER = re.compile(r"^\|\s*Horovod\s*\|\s*ringfleet\s*\|", re.MULTILINE)


def prose_and_blocks(path: Path) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Splits a markdown file into its prose lines and its fenced blocks (language, lines)."""
    prose: list[str] = []
    blocks: list[tuple[str, list[str]]] = []
    block: list[str] | None = None
    fence = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        opened = FENCE.match(line)
        if block is None and opened:
            fence, language, block = opened.group(2), opened.group(3).lower(), []
            blocks.append((language, block))
        elif block is not None and line.strip().startswith(fence) and line.strip().strip(fence[0]) == "":
            block = None
        elif block is not None:
            block.append(line)
        else:
            prose.append(line)
    return prose, blocks


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lowercase, punctuation dropped, spaces as hyphens, then -1, -2..."""
    seen: dict[str, int] = {}
    for line in prose_and_blocks(path)[0]:
        heading = HEADING.match(line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(2).replace("`", "").strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        if count:
            seen[f"{slug}-{count}"] = 1
    return set(seen)


def relative_links(path: Path) -> list[str]:
    links: list[str] = []
    for line in prose_and_blocks(path)[0]:
        links += LINK.findall(INLINE_CODE.sub("", line))
    return [link for link in links if not re.match(r"^[a-z][a-z0-9+.-]*:", link)]


def named_paths(path: Path) -> list[str]:
    """The repository paths the page's shell blocks name (commands and their arguments)."""
    found: list[str] = []
    for language, lines in prose_and_blocks(path)[1]:
        if language in COMMAND_LANGUAGES:
            for line in lines:
                found += [p for p in REPO_PATH.findall(line) if p.split("/", 1)[0] in TOP_LEVEL_DIRS]
    return found


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_lands_on_a_file_and_heading(page: Path) -> None:
    # given a page of the docs, when each relative link is followed from the page's folder
    broken: list[str] = []
    for link in relative_links(page):
        target, _, anchor = link.partition("#")
        resolved = (page.parent / target).resolve() if target else page
        # then its file exists, and a #anchor names one of that page's headings
        if not resolved.exists():
            broken.append(f"{link}: no file {resolved}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{link}: no heading #{anchor} in {resolved.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)} has broken links:\n" + "\n".join(broken)


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_a_command_block_names_exists(page: Path) -> None:
    # given the shell blocks of a page, when a reader copies a command naming examples/..., bench/..., events/...
    missing = sorted({p for p in named_paths(page) if not (ROOT / p).exists()})
    # then that file is there to run
    assert not missing, f"{page.relative_to(ROOT)} names files that do not exist: {missing}"


def test_the_checker_sees_what_it_checks() -> None:
    # given the pages as written, the checks above have something to check (a parser that finds nothing passes all)
    assert "docs/local-cloud.md" in relative_links(README)
    assert "examples/digits/job.yaml" in named_paths(ROOT / "docs" / "cli.md")
    assert "training_worker/Dockerfile" in named_paths(ROOT / "docs" / "deploy.md")
    assert "how-a-new-version-reaches-traffic-and-how-it-is-rolled-back" in anchors(ROOT / "docs" / "operations.md")


def test_the_readme_stays_a_front_door() -> None:
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move the detail to a page under docs/"


def test_the_horovod_mapping_is_written_in_one_place() -> None:
    # the table of where ringfleet follows and departs from Horovod lives in the README; pages link to it
    holders = [p.relative_to(ROOT) for p in DOCS if HOROVOD_TABLE_HEADER.search(p.read_text(encoding="utf-8"))]
    assert holders == [Path("README.md")]
