"""Every test file is marked with its kind, its folder's name: `make unit` (``-m unit``) and the fast-first order
of tests/conftest.py find each test where it belongs."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import KINDS, ROOT

pytestmark = pytest.mark.unit


def file_marks(path: Path) -> set[str]:
    """The ``pytest.mark.X`` names in the module's ``pytestmark = ...`` (one marker or a list of them)."""
    tree = ast.parse(path.read_text(), str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            values = node.value.elts if isinstance(node.value, ast.List | ast.Tuple) else [node.value]
            marks = set()
            for value in values:
                call = value.func if isinstance(value, ast.Call) else value
                if isinstance(call, ast.Attribute):
                    marks.add(call.attr)
            return marks
    return set()


def test_every_test_file_is_in_a_folder_of_its_kind_and_marked_with_it() -> None:
    files = sorted((ROOT / "tests").rglob("test_*.py"))
    assert len(files) > 50, "the test files were not found"
    misplaced = [str(f.relative_to(ROOT)) for f in files if f.parent.name not in KINDS]
    assert not misplaced, f"put each test file under tests/<kind>/, kind one of {KINDS}: {misplaced}"
    unmarked = [
        f"{f.relative_to(ROOT)}: add `pytestmark = pytest.mark.{f.parent.name}`"
        for f in files
        if f.parent.name not in file_marks(f)
    ]
    assert not unmarked, unmarked
    two_kinds = [str(f.relative_to(ROOT)) for f in files if len(file_marks(f) & set(KINDS)) > 1]
    assert not two_kinds, f"one kind per file (its folder's): {two_kinds}"


def test_a_file_without_its_kind_is_found(tmp_path: Path) -> None:
    # given a file marked with a timeout only, and one marked with its kind and a timeout
    bare = tmp_path / "test_bare.py"
    bare.write_text("import pytest\n\npytestmark = pytest.mark.timeout(60)\n")
    marked = tmp_path / "test_marked.py"
    marked.write_text("import pytest\n\npytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]\n")
    # then only the second has a kind
    assert file_marks(bare) == {"timeout"}
    assert file_marks(marked) == {"e2e", "timeout"}
    assert file_marks(tmp_path / "test_marked.py") & set(KINDS) == {"e2e"}
