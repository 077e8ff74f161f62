"""The copy as a bounded tar stream, files owned by the sandbox user. No Docker here: the
stream travels through the engine."""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile
from collections.abc import Iterator

from mcp_sandbox.constants import SANDBOX_UID, WORKDIR
from mcp_sandbox.workspace.copy_scan import (
    CHUNK_BYTES,
    O_DIR,
    Entry,
    Manifest,
    new_digest,
    open_dir,
)

_BLOCK = 512  # a tar block


def _header(entry: Entry, size: int, *, uid: int) -> bytes:
    info = tarfile.TarInfo(entry.rel)
    info.mtime = entry.mtime_ns // 1_000_000_000
    owner = 0 if entry.locked else uid
    info.uid = info.gid = owner
    perm = stat.S_IMODE(entry.mode) & 0o777
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
        info.mode = 0o555 if entry.locked else perm | 0o700
    elif entry.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.sent_link
        info.mode = 0o777
    else:
        info.type = tarfile.REGTYPE
        info.size = size
        info.mode = perm & 0o555 if entry.locked else perm
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def container_link(parts: tuple[str, ...], link: str) -> str:
    """The link as the copy holds it: the same target, as the container resolves it.

    The daemon refuses to unpack a relative link that climbs out of the directory it unpacks
    into; written as an absolute container path it means the same there, and unpacks. Either
    way it resolves inside the container, never to a host path.
    """
    if link.startswith("/"):
        return link
    if not posixpath.normpath(posixpath.join(*parts[:-1], link)).startswith(".."):
        return link
    return posixpath.normpath(posixpath.join(WORKDIR, *parts[:-1], link))


def tar_stream(manifest: Manifest, *, uid: int = SANDBOX_UID) -> Iterator[bytes]:
    """The copy as a tar stream in chunks of about 1 MiB, files owned by ``uid``.

    Reads each file once, through descriptors; records what was sent and its digest. A file
    that changed type or vanished since the scan is left out; one that grew is cut at its
    scanned size, so the bounds checked by ``scan_copy`` hold.
    """
    buf = bytearray()
    root_fd = os.open(manifest.root, O_DIR)
    dir_parts: tuple[str, ...] | None = None
    dir_fd = -1
    try:
        for entry in manifest.entries:
            if entry.kind == "dir":
                buf += _header(entry, 0, uid=uid)
                entry.sent = True
                continue
            parent = entry.parts[:-1]
            if parent != dir_parts:
                if dir_fd >= 0:
                    os.close(dir_fd)
                dir_parts = parent
                try:
                    dir_fd = open_dir(root_fd, parent)
                except OSError:
                    dir_fd = -1
            if dir_fd < 0:
                continue
            name = entry.parts[-1]
            if entry.kind == "symlink":
                try:
                    entry.link = os.readlink(name, dir_fd=dir_fd)
                except OSError:
                    continue
                entry.sent_link = container_link(entry.parts, entry.link)
                buf += _header(entry, 0, uid=uid)
                entry.sent = True
            else:
                yield from _file_into(buf, entry, dir_fd, uid)
            if len(buf) >= CHUNK_BYTES:
                yield bytes(buf)
                buf.clear()
        buf += b"\0" * (2 * _BLOCK)
        yield bytes(buf)
    finally:
        if dir_fd >= 0:
            os.close(dir_fd)
        os.close(root_fd)


def _file_into(buf: bytearray, entry: Entry, dir_fd: int, uid: int) -> Iterator[bytes]:
    try:
        # O_NONBLOCK: a fifo swapped in since the scan must not block the open.
        fd = os.open(
            entry.parts[-1],
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            dir_fd=dir_fd,
        )
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_ino != entry.ino:
            return
        size = min(st.st_size, entry.size)
        entry.size = size
        buf += _header(entry, size, uid=uid)
        digest = new_digest()
        left = size
        while left > 0:
            try:
                data = os.read(fd, min(left, CHUNK_BYTES))
            except OSError:
                data = b""
            if not data:
                data = b"\0" * left  # the file shrank: the header's size is a promise
            digest.update(data)
            buf += data
            left -= len(data)
            if len(buf) >= CHUNK_BYTES:
                yield bytes(buf)
                buf.clear()
        buf += b"\0" * (-size % _BLOCK)
        entry.digest = digest.digest()
        entry.sent = True
    finally:
        os.close(fd)
