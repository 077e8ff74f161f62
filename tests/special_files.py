"""Sockets, FIFOs and device nodes for tests of what a workspace must never pass on live."""

from __future__ import annotations

import os
import stat
from pathlib import Path

# Device nodes need root to make.
SPECIALS = ["socket", "fifo"] + (["chr", "blk"] if os.geteuid() == 0 else [])


def make_special(path: Path, kind: str) -> None:
    """A socket, FIFO or device node at ``path`` (devices with /dev/null's and loop's numbers,
    never a console's)."""
    if kind == "socket":
        os.mknod(path, 0o666 | stat.S_IFSOCK)  # what bind(2) leaves behind, at any path length
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "chr":
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    else:
        os.mknod(path, 0o666 | stat.S_IFBLK, os.makedev(7, 200))
