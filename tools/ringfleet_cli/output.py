"""What the read commands share: the ``--output table|json`` option, and a reason shortened to one line."""

from __future__ import annotations

import argparse

__all__ = ["add_output", "one_line"]


def add_output(parser: argparse.ArgumentParser, json_help: str = "JSON") -> None:
    parser.add_argument(
        "--output",
        "-o",
        choices=("table", "json"),
        default="table",
        help=f"table (default) for people, or {json_help} for programs",
    )


def one_line(text: str, width: int = 120) -> str:
    """A reason on one line of at most ``width`` characters: a traceback's tail keeps its first line (what failed)
    and its last (the exception), the frames between are left to `ringfleet events`."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    head, last = lines[0], lines[-1]
    if head.startswith("Traceback (most recent call last)"):
        head = last
    line = head if head == last else f"{head} ... {last}"
    return line if len(line) <= width else line[: width - 3] + "..."
