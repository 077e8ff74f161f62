"""Where in the workspace a call runs, and what the host's mount table says of the tree.

Resolving a ``workdir`` reads the host tree but never follows a symbolic link out of it.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from mcp_sandbox.errors import RequestRejected
from mcp_sandbox.policy.arguments import MAX_WORKDIR_CHARS

_MOUNTINFO_ESCAPE = re.compile(rb"\\([0-7]{3})")


def _mounts() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of each mount this process sees, in mount order."""
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split(b" ")
        try:
            dash = fields.index(b"-", 6)  # after the optional fields: type, source, options
        except ValueError:
            continue
        point = _MOUNTINFO_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), fields[4])
        fstype = fields[dash + 1] if dash + 1 < len(fields) else b""
        found.append((os.fsdecode(point), os.fsdecode(fstype)))
    return found


def mount_points_under(root: Path) -> frozenset[str]:
    """Real paths of the mounts strictly inside ``root``: a read-only bind of the root does not
    reach into them, so neither do masks, copies nor write-backs."""
    prefix = str(root).rstrip("/") + "/"
    return frozenset(point for point, _ in _mounts() if point.startswith(prefix))


def filesystem_of(root: Path) -> str:
    """The type of the filesystem ``root`` is on ("" if unknown): of the deepest mount at or
    above it, the last mounted."""
    path = str(root).rstrip("/") or "/"
    best, fstype = -1, ""
    for point, kind in _mounts():
        covers = path == point or path.startswith(point.rstrip("/") + "/")
        if covers and len(point) >= best:
            best, fstype = len(point), kind
    return fstype


def resolve_workdir(root: Path, workdir: str) -> tuple[str, ...]:
    """``workdir`` as components below ``root``, every symbolic link resolved on the host.

    Raises RequestRejected, never echoing the value: the caller wrote it.
    """
    if "\x00" in workdir:
        raise RequestRejected("workdir holds a NUL byte")
    if len(workdir) > MAX_WORKDIR_CHARS:
        raise RequestRejected(f"workdir is longer than {MAX_WORKDIR_CHARS} characters")
    if workdir.startswith("/") or workdir.startswith("~"):
        raise RequestRejected("workdir must be a path relative to the workspace root, not absolute")
    parts = [p for p in workdir.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise RequestRejected("workdir may not contain '..': it must stay inside the workspace")
    real = os.path.realpath(os.path.join(root, *parts))
    if real != str(root) and not real.startswith(str(root).rstrip("/") + "/"):
        raise RequestRejected(
            "workdir resolves outside the workspace (through a symbolic link); refused"
        )
    try:
        st = os.stat(real)
    except OSError:
        raise RequestRejected("workdir does not exist in the workspace") from None
    if not stat.S_ISDIR(st.st_mode):
        raise RequestRejected("workdir is not a directory")
    rel = Path(real).relative_to(root).parts
    for mount in mount_points_under(root):
        if real == mount or real.startswith(mount + "/"):
            raise RequestRejected("workdir is on another filesystem mounted inside the workspace")
    return rel
