"""The read-only workspace's masked paths: every call walks the tree, re-listing what changed.

A path is masked when a mask rule names it, and so is every socket, FIFO and device node,
whatever its name: through the read-only bind they stay live (a host daemon's socket, a pipe
a host process reads, a device), so each is overmounted by the empty file like a secret.

Every `ro` call needs the masked paths as they are now: a `.env` written a second ago must be
hidden. Listing every directory and matching every name costs about 7 µs an entry (70 ms on
a project with a virtualenv), on every call. What a directory holds (names and types, all
that masking looks at) changes only with its mtime and ctime, so a scan stats each directory
and reuses the listing it made last time while the directory's device, inode, mtime and
ctime are all unchanged. ctime cannot be set from user space, so not even a program that
resets the mtime (``touch -d``) hides a change.

Timestamps come from a coarse clock (a jiffy; a second on some filesystems), so a change in
the same tick as our listing could leave them equal: a listing is reused only when the
directory was last changed at least ``RACY_S`` before we listed it (as git does with its
index). Network and FUSE filesystems cache attributes or keep another clock: on a
filesystem not known to be local, no listing is reused and every scan lists everything.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mcp_sandbox.errors import RequestRejected
from mcp_sandbox.policy.paths import MAX_MASKS, PathRules
from mcp_sandbox.workspace.workdir import filesystem_of, mount_points_under

RACY_S = 3.0
# Filesystems whose timestamps come from this kernel's clock and whose attributes are
# never stale.
LOCAL_FILESYSTEMS = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs", "bcachefs"}
)

_Key = tuple[int, int, int, int]  # st_dev, st_ino, st_mtime_ns, st_ctime_ns


@dataclass(frozen=True)
class MaskSet:
    """Paths (relative, POSIX) to overmount: files and special files with an empty read-only
    file, dirs with an empty read-only directory."""

    files: tuple[str, ...]
    dirs: tuple[str, ...]


@dataclass(frozen=True)
class _Listing:
    """What one directory holds, as far as masking cares."""

    key: _Key | None  # None: changed too recently to be reused
    entries: int
    masked_files: tuple[str, ...]
    masked_dirs: tuple[str, ...]
    subdirs: tuple[str, ...]  # to walk into: neither masked nor links


class MaskScanner:
    """The masked paths of one tree under one set of rules; thread-safe."""

    def __init__(self, root: Path, mask: PathRules, *, reuse: bool | None = None) -> None:
        self.root = root
        self._mask = mask
        self._reuse = filesystem_of(root) in LOCAL_FILESYSTEMS if reuse is None else reuse
        self._cache: dict[str, _Listing] = {}
        self._lock = threading.Lock()

    def scan(self, *, max_entries: int) -> MaskSet:
        """Every masked path of the tree and every special file (socket, FIFO, device), not
        following symbolic links nor entering other mounts (each is masked whole). A masked
        name that is a symbolic link is left alone: inside the sandbox it resolves in the
        container, where what it points at is masked (or not) under its own name. A directory
        this process cannot list is masked whole.

        Raises RequestRejected when the tree is too large or holds too many masked paths.
        """
        with self._lock:
            masks, self._cache = self._walk(max_entries)
        if len(masks.files) + len(masks.dirs) > MAX_MASKS:
            raise RequestRejected(
                f"the workspace has {len(masks.files) + len(masks.dirs)} masked paths; a "
                f"read-only mount can hide at most {MAX_MASKS}: use workspace='copy'"
            )
        for rel in (*masks.files, *masks.dirs):
            if not _mountable(rel):
                raise RequestRejected(
                    "a masked path has a name the container backend cannot carry (not UTF-8); "
                    "use workspace='copy'"
                )
        return masks

    def _walk(self, max_entries: int) -> tuple[MaskSet, dict[str, _Listing]]:
        skip = mount_points_under(self.root)
        files: list[str] = []
        dirs: list[str] = []
        seen = 0
        listed: dict[str, _Listing] = {}
        stack: list[tuple[tuple[str, ...], str]] = [((), str(self.root).rstrip("/") or "/")]
        while stack:
            parts, path = stack.pop()
            listing = self._listing(path, parts)
            if listing is None:
                # What we cannot list, we cannot check: the sandbox may still open a name in it.
                if parts:
                    dirs.append("/".join(parts))
                continue
            listed[path] = listing
            seen += listing.entries
            if seen > max_entries:
                raise RequestRejected(
                    f"the workspace has more than {max_entries} entries to check for masked "
                    "files; raise workspace_policy.scan_max_entries or use a smaller workspace"
                )
            if listing.masked_files:
                files += ("/".join((*parts, name)) for name in listing.masked_files)
            dirs.extend("/".join((*parts, name)) for name in listing.masked_dirs)
            for name in listing.subdirs:
                child = f"{path}/{name}"
                if child in skip:
                    # Another mount: the bind shows what lies under it on the host, files
                    # nobody checks (a secret hidden by the mount, say). Masked whole.
                    dirs.append("/".join((*parts, name)))
                else:
                    stack.append(((*parts, name), child))
        return MaskSet(tuple(sorted(files)), tuple(sorted(dirs))), listed

    def _listing(self, path: str, parts: tuple[str, ...]) -> _Listing | None:
        """``path``'s listing, reused if unchanged; None if it cannot be listed."""
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            return None  # replaced since its parent was listed: listed again next time
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        cached = self._cache.get(path)
        if self._reuse and cached is not None and cached.key == key:
            return cached
        now_ns = time.time_ns()  # before listing: what changes after this, changes key
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError:
            return None
        masked_files: list[str] = []
        masked_dirs: list[str] = []
        subdirs: list[str] = []
        for entry in entries:
            # The type comes from the listing (d_type): no stat unless the filesystem has none.
            if entry.is_symlink():
                continue
            is_dir = entry.is_dir(follow_symlinks=False)
            if self._mask.matches((*parts, entry.name), is_dir):
                (masked_dirs if is_dir else masked_files).append(entry.name)
            elif is_dir:
                subdirs.append(entry.name)
            elif not entry.is_file(follow_symlinks=False):
                # A socket, FIFO or device node: the bind carries no `nodev`, so it would reach
                # a host daemon, a host reader or a device. Masked whatever its name.
                masked_files.append(entry.name)
        quiet = now_ns - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_S * 1e9
        return _Listing(
            key if quiet else None,
            len(entries),
            tuple(masked_files),
            tuple(masked_dirs),
            tuple(subdirs),
        )


def _mountable(rel: str) -> bool:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
