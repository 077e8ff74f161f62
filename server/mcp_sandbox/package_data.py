"""Where the files that ship beside the code live: the repo checkout, or the wheel's _data."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """``seccomp`` or ``sandbox_images``: inside an installed wheel, else in the checkout."""
    bundled = _PACKAGE / "_data" / name
    return bundled if bundled.is_dir() else _PACKAGE.parents[1] / name
