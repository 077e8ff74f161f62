"""The manifests of a workspace, read from its root: regular files only, never through a
link, never a masked one (a mask hides a file from the build as from any call)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mcp_sandbox.environment.manifests import MAX_MANIFEST_BYTES, Manifests, is_manifest
from mcp_sandbox.errors import RequestRejected
from mcp_sandbox.policy.paths import PathRules


def read_manifests(root: Path, mask: PathRules) -> Manifests:
    """Blocking. Raises RequestRejected when the root cannot be listed or a manifest read."""
    try:
        names = sorted(e.name for e in os.scandir(root) if is_manifest(e.name))
    except OSError as e:
        raise RequestRejected(f"cannot list the workspace: {e.strerror}") from None
    files = {}
    for name in names:
        if mask.matches((name,), is_dir=False):
            continue
        data = _read(root / name)
        if data is not None:
            files[name] = data
    return Manifests.of(files)


def _read(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None  # a link, or gone: not a manifest of this tree
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if st.st_size > MAX_MANIFEST_BYTES:
            raise RequestRejected(f"{path.name} is over {MAX_MANIFEST_BYTES} bytes")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise RequestRejected(f"cannot read {path.name}: {e.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_MANIFEST_BYTES:
        raise RequestRejected(f"{path.name} is over {MAX_MANIFEST_BYTES} bytes")
    return data
