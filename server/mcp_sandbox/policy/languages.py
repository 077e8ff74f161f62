"""Data: each language a sandbox runs, and the argv that runs a snippet of it."""

from __future__ import annotations

from typing import Literal, get_args

Language = Literal["python", "javascript", "bash"]

SUPPORTED: tuple[str, ...] = get_args(Language)

# The snippet travels as the last argv element: no file to write, no stdin taken.
ARGV_PREFIX: dict[str, tuple[str, ...]] = {
    "python": ("python3", "-c"),
    "javascript": ("node", "-e"),
    "bash": ("bash", "-c"),
}

SHELL_PREFIX: tuple[str, ...] = ("/bin/sh", "-c")


def argv_for(language: str, code: str) -> tuple[str, ...]:
    """The command that runs ``code``; KeyError for a language we do not have."""
    return (*ARGV_PREFIX[language], code)
