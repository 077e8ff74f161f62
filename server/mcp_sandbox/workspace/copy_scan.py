"""What goes into a copy: the workspace walked by descriptor, masked and excluded paths and
files the sandbox user could not read left out (POSIX ACLs decide as the kernel does).

Every host access is relative to a directory descriptor opened with ``O_NOFOLLOW``, one
component at a time, so no symbolic link in the tree, nor one swapped in during a run, can
lead a read or a write outside the root.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mcp_sandbox.config.workspace import WorkspacePolicy
from mcp_sandbox.constants import MIB, SANDBOX_UID
from mcp_sandbox.errors import RequestRejected
from mcp_sandbox.policy.paths import PathRules
from mcp_sandbox.workspace.workdir import mount_points_under

Kind = Literal["file", "symlink", "dir", "other"]


_PAGE = 4096


CHUNK_BYTES = 1 << 20


O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# The archive the daemon returns names every entry after the copied directory.
ARCHIVE_ROOT = "workspace"


def new_digest() -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=16)


@dataclass
class Entry:
    """One path that went into the copy, as it was on the host."""

    parts: tuple[str, ...]
    kind: Literal["file", "symlink", "dir"]
    size: int
    mode: int
    mtime_ns: int
    ino: int
    link: str = ""
    sent_link: str = ""  # the link as the copy holds it (see ``container_link``)
    locked: bool = False  # protected in `rw`: root-owned and read-only inside
    digest: bytes | None = None
    sent: bool = False
    ctime_ns: int = 0  # as scanned: no one can set it, so a change to the path moves it

    @property
    def rel(self) -> str:
        return "/".join(self.parts)


@dataclass
class Manifest:
    """What a copy holds, in the order it is sent: every directory before what it holds."""

    root: Path
    entries: list[Entry] = field(default_factory=list)
    file_bytes: int = 0
    tmpfs_bytes: int = 0
    unreadable: int = 0  # left out: the sandbox's user could not read them in `ro` either

    def sent(self) -> dict[str, Entry]:
        return {e.rel: e for e in self.entries if e.sent}


def open_dir(root_fd: int, parts: tuple[str, ...]) -> int:
    """A descriptor of ``root/parts``, no component a link. Raises OSError."""
    fd = os.dup(root_fd)
    try:
        for name in parts:
            child = os.open(name, O_DIR, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def sandbox_may_read(st: os.stat_result, acl: bytes | None = None) -> bool:
    """Whether uid/gid 65534 may read this file (or list and enter this directory) by its
    host permissions, as in `ro`: a copy must not hand the sandbox a 0600 file, nor one a
    POSIX ACL (``acl``, the raw ``system.posix_acl_access``) denies it."""
    need = 0o5 if stat.S_ISDIR(st.st_mode) else 0o4
    entries = _acl_entries(acl) if acl else None
    if entries is None:
        if st.st_uid == SANDBOX_UID:
            bits = st.st_mode >> 6
        elif st.st_gid == SANDBOX_UID:
            bits = st.st_mode >> 3
        else:
            bits = st.st_mode
        return bits & need == need
    # The kernel's order (acl(5)): owner, named user, then any matching group, then other.
    mask = next((p for tag, p, _ in entries if tag == _ACL_MASK), 0o7)
    if st.st_uid == SANDBOX_UID:
        return any(tag == _ACL_USER_OBJ and p & need == need for tag, p, _ in entries)
    named = [p & mask for tag, p, who in entries if tag == _ACL_USER and who == SANDBOX_UID]
    if named:
        return named[0] & need == need
    groups = [
        p & mask
        for tag, p, who in entries
        if (tag == _ACL_GROUP_OBJ and st.st_gid == SANDBOX_UID)
        or (tag == _ACL_GROUP and who == SANDBOX_UID)
    ]
    if groups:
        return any(p & need == need for p in groups)
    return any(tag == _ACL_OTHER and p & need == need for tag, p, _ in entries)


# Tags of a POSIX ACL entry in its xattr form (little-endian: version 2, then tag, perm, id).
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = (
    0x01,
    0x02,
    0x04,
    0x08,
    0x10,
    0x20,
)


_ACL_ENTRY = struct.Struct("<HHI")


def _acl_entries(raw: bytes) -> list[tuple[int, int, int]] | None:
    """(tag, perm, id) of each entry, or None for what is not a version-2 ACL."""
    if len(raw) < 4 or int.from_bytes(raw[:4], "little") != 2:
        return None
    body = raw[4:]
    if len(body) % _ACL_ENTRY.size:
        return None
    return list(_ACL_ENTRY.iter_unpack(body))


def _acl(dir_fd: int, name: str) -> bytes | None:
    """The access ACL of ``name`` in the directory ``dir_fd``, if it has one."""
    try:
        return os.getxattr(
            f"/proc/self/fd/{dir_fd}/{name}", "system.posix_acl_access", follow_symlinks=False
        )
    except OSError:  # none (ENODATA), or a filesystem without them
        return None


def scan_copy(root: Path, policy: WorkspacePolicy, *, lock_protected: bool) -> Manifest:
    """What a copy of ``root`` would hold. Raises RequestRejected past a configured bound."""
    mask, exclude = PathRules(policy.mask), PathRules(policy.exclude)
    protect = PathRules(policy.protect)
    skip = mount_points_under(root)
    manifest = Manifest(root)
    max_bytes = policy.copy_max_mib * MIB
    files = seen = 0
    root_fd = os.open(root, O_DIR)
    try:
        stack: list[tuple[tuple[str, ...], bool]] = [((), False)]
        while stack:
            parts, locked = stack.pop()
            try:
                fd = open_dir(root_fd, parts)
            except OSError:
                continue
            try:
                names = sorted(os.listdir(fd))
                seen += len(names)
                if seen > policy.scan_max_entries:
                    raise RequestRejected(
                        f"the workspace has more than {policy.scan_max_entries} entries to copy; "
                        "add excludes (workspace_policy.exclude) or raise scan_max_entries"
                    )
                subdirs = []
                for name in names:
                    child = (*parts, name)
                    try:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except OSError:
                        continue
                    is_dir = stat.S_ISDIR(st.st_mode)
                    if mask.matches(child, is_dir) or exclude.matches(child, is_dir):
                        continue
                    if not stat.S_ISLNK(st.st_mode) and not sandbox_may_read(st, _acl(fd, name)):
                        manifest.unreadable += 1
                        continue
                    child_locked = lock_protected and (locked or protect.matches(child, is_dir))
                    if is_dir:
                        if os.path.join(root, *child) not in skip:
                            subdirs.append((child, child_locked, st))
                        continue
                    if stat.S_ISREG(st.st_mode):
                        entry = Entry(
                            child,
                            "file",
                            st.st_size,
                            st.st_mode,
                            st.st_mtime_ns,
                            st.st_ino,
                            ctime_ns=st.st_ctime_ns,
                        )
                        manifest.file_bytes += st.st_size
                        manifest.tmpfs_bytes += -(-st.st_size // _PAGE) * _PAGE
                    elif stat.S_ISLNK(st.st_mode):
                        try:
                            link = os.readlink(name, dir_fd=fd)
                        except OSError:
                            continue
                        entry = Entry(child, "symlink", 0, st.st_mode, st.st_mtime_ns, st.st_ino)
                        entry.link, entry.ctime_ns = link, st.st_ctime_ns
                        manifest.tmpfs_bytes += _PAGE
                    else:
                        continue  # sockets, fifos, devices: nothing a test needs from the host
                    entry.locked = child_locked
                    manifest.entries.append(entry)
                    files += 1
                    if files > policy.copy_max_files:
                        raise RequestRejected(
                            f"the workspace has more than {policy.copy_max_files} files to copy; "
                            "add excludes (workspace_policy.exclude) or raise copy_max_files"
                        )
                    if manifest.file_bytes > max_bytes:
                        raise RequestRejected(
                            f"the workspace holds more than {policy.copy_max_mib} MiB to copy; "
                            "add excludes (workspace_policy.exclude) or raise copy_max_mib"
                        )
                for child, child_locked, st in reversed(subdirs):
                    entry = Entry(child, "dir", 0, st.st_mode, st.st_mtime_ns, st.st_ino)
                    entry.locked, entry.ctime_ns = child_locked, st.st_ctime_ns
                    # Pushed now, listed when popped: a directory precedes what it holds.
                    stack.append((child, child_locked))
                    manifest.entries.append(entry)
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)
    return manifest
