"""The workspace copied into a sandbox and back, on the host side.

Out: a bounded tar stream of the workspace, masked and excluded paths left out. Back: the
copy as the run left it, compared with what went out; in `rw`, the changes written to the
host with strict checks. No Docker here: the streams travel through ``docker_api``.

Every host access is relative to a directory descriptor opened with ``O_NOFOLLOW``, one
component at a time, so no symbolic link in the tree, nor one swapped in during a run, can
lead a read or a write outside the root.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import posixpath
import re
import secrets
import stat
import struct
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from mcp_sandbox.errors import RequestRejected
from mcp_sandbox.output import HIDDEN_CHARS
from mcp_sandbox.workspace import (
    FileChange,
    PathRules,
    WorkspacePolicy,
    mount_points_under,
)

Kind = Literal["file", "symlink", "dir", "other"]

SANDBOX_UID = 65534
_MIB = 1024 * 1024
_PAGE = 4096
_BLOCK = 512
_CHUNK = 1 << 20
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# The archive the daemon returns names every entry after the copied directory.
_ARCHIVE_ROOT = "workspace"
WORKDIR = "/workspace"


def _digest() -> hashlib.blake2b:
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


def _open_dir(root_fd: int, parts: tuple[str, ...]) -> int:
    """A descriptor of ``root/parts``, no component a link. Raises OSError."""
    fd = os.dup(root_fd)
    try:
        for name in parts:
            child = os.open(name, _O_DIR, dir_fd=fd)
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
    max_bytes = policy.copy_max_mib * _MIB
    files = seen = 0
    root_fd = os.open(root, _O_DIR)
    try:
        stack: list[tuple[tuple[str, ...], bool]] = [((), False)]
        while stack:
            parts, locked = stack.pop()
            try:
                fd = _open_dir(root_fd, parts)
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
                            child, "file", st.st_size, st.st_mode, st.st_mtime_ns, st.st_ino
                        )
                        manifest.file_bytes += st.st_size
                        manifest.tmpfs_bytes += -(-st.st_size // _PAGE) * _PAGE
                    elif stat.S_ISLNK(st.st_mode):
                        try:
                            link = os.readlink(name, dir_fd=fd)
                        except OSError:
                            continue
                        entry = Entry(child, "symlink", 0, st.st_mode, st.st_mtime_ns, st.st_ino)
                        entry.link = link
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
                    entry.locked = child_locked
                    # Pushed now, listed when popped: a directory precedes what it holds.
                    stack.append((child, child_locked))
                    manifest.entries.append(entry)
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)
    return manifest


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
    root_fd = os.open(manifest.root, _O_DIR)
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
                    dir_fd = _open_dir(root_fd, parent)
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
            if len(buf) >= _CHUNK:
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
        digest = _digest()
        left = size
        while left > 0:
            try:
                data = os.read(fd, min(left, _CHUNK))
            except OSError:
                data = b""
            if not data:
                data = b"\0" * left  # the file shrank: the header's size is a promise
            digest.update(data)
            buf += data
            left -= len(data)
            if len(buf) >= _CHUNK:
                yield bytes(buf)
                buf.clear()
        buf += b"\0" * (-size % _BLOCK)
        entry.digest = digest.digest()
        entry.sent = True
    finally:
        os.close(fd)


# --- back: what the run left ------------------------------------------------------------------


@dataclass(slots=True)
class Seen:
    """One path of the copy after the run."""

    kind: Kind
    size: int
    mode: int
    digest: bytes | None = None
    link: str = ""
    hardlink: bool = False
    data: bytes | None = None


@dataclass
class Readback:
    # None: the path is back as it was sent (what ``diff`` would find unchanged). Those are
    # most of a large copy, and cost only their name here.
    seen: dict[str, Seen | None] = field(default_factory=dict)
    complete: bool = True
    over_budget: bool = False  # a changed file's bytes were not kept: past the rw quota
    note: str | None = None
    # The symbolic links back as they were sent: no link `rw` writes may send one of them
    # outside the workspace (see ``_escaped``).
    links: list[str] = field(default_factory=list)


class _TooBig(Exception):
    pass


class _ChunkReader:
    """A file-like view of an iterator of chunks that refuses to read past ``limit`` bytes."""

    def __init__(self, chunks: Iterable[bytes], limit: int) -> None:
        self._chunks = iter(chunks)
        self._buf = bytearray()
        self._pos = 0
        self._limit = limit
        self.total = 0

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) - self._pos < n:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                break
            self.total += len(chunk)
            if self.total > self._limit:
                raise _TooBig
            if self._pos:
                del self._buf[: self._pos]
                self._pos = 0
            self._buf += chunk
        end = len(self._buf) if n < 0 else min(len(self._buf), self._pos + n)
        data = bytes(self._buf[self._pos : end])
        self._pos = end
        return data


def read_back(
    chunks: Iterable[bytes],
    sent: dict[str, Entry],
    *,
    max_bytes: int,
    max_entries: int,
    keep_bytes: int,
) -> Readback:
    """Parse the copy's archive as the run left it; bounded in bytes read and entries kept.

    Keeps the bytes of created or changed files, up to ``keep_bytes`` in all (what `rw`
    writes back); digests the rest.
    """
    back = Readback()
    kept = 0
    reader = _ChunkReader(chunks, max_bytes)
    try:
        with tarfile.open(
            fileobj=reader, mode="r|", encoding="utf-8", errors="surrogateescape"
        ) as tar:  # type: ignore[call-overload]  # a read()-only object is enough for a stream
            while (member := tar.next()) is not None:
                # A stream's TarFile still lists every member it read: drop each once read, or
                # a run that leaves many long names costs the server a TarInfo for each.
                tar.members.clear()
                name = member.name
                if not name.startswith(_ARCHIVE_ROOT + "/"):
                    continue
                rel = name[len(_ARCHIVE_ROOT) + 1 :]
                if "\x00" in rel or any(p in ("", ".", "..") for p in rel.split("/")):
                    continue
                if len(back.seen) >= max_entries:
                    back.complete = False
                    back.note = f"the run left more than {max_entries} entries; list incomplete"
                    break
                mode = stat.S_IMODE(member.mode)
                before = sent.get(rel)
                if member.isdir():
                    same = before is not None and before.kind == "dir"
                    back.seen[rel] = None if same else Seen("dir", 0, mode)
                elif member.issym():
                    same = (
                        before is not None
                        and before.kind == "symlink"
                        and before.sent_link == member.linkname
                    )
                    link = member.linkname
                    back.seen[rel] = None if same else Seen("symlink", 0, mode, link=link)
                    if same:
                        back.links.append(rel)
                elif member.islnk():
                    # A hard link names its first path as the archive has it.
                    first = member.linkname.removeprefix(_ARCHIVE_ROOT + "/")
                    back.seen[rel] = Seen("file", 0, mode, hardlink=True, link=first)
                elif member.isreg():
                    keep = keep_bytes - kept >= member.size
                    seen = _read_member(tar.extractfile(member), member.size, keep)
                    seen.mode = mode
                    unchanged = (
                        before is not None
                        and before.kind == "file"
                        and before.digest == seen.digest
                        and before.size == seen.size
                        and (before.mode & 0o111) == (mode & 0o111)
                    )
                    if unchanged:
                        back.seen[rel] = None
                        continue
                    if seen.data is not None:
                        kept += seen.size
                    else:
                        back.over_budget = True
                    back.seen[rel] = seen
                else:
                    back.seen[rel] = Seen("other", 0, mode)
    except _TooBig:
        back.complete = False
        back.note = f"the run left more than {max_bytes // _MIB} MiB in /workspace; list incomplete"
    except (tarfile.TarError, OSError, EOFError):
        back.complete = False
        back.note = "the copy could not be read back whole; list incomplete"
    return back


def _read_member(f: IO[bytes] | None, size: int, keep: bool) -> Seen:
    digest = _digest()
    parts: list[bytes] = []
    if f is not None:
        while True:
            data = f.read(_CHUNK)
            if not data:
                break
            digest.update(data)
            if keep:
                parts.append(data)
    return Seen("file", size, 0, digest=digest.digest(), data=b"".join(parts) if keep else None)


# --- the difference -----------------------------------------------------------------------------


def _as_is(text: str) -> str:
    return text


@dataclass(slots=True)
class Change:
    rel: str
    change: Literal["created", "changed", "deleted"]
    kind: Kind
    size: int | None
    before: Entry | None
    after: Seen | None
    applied: bool | None = None
    note: str | None = None

    @property
    def parts(self) -> tuple[str, ...]:
        # Not stored: a run may leave tens of thousands of changes, and their names twice
        # over would cost the server as much again.
        return tuple(self.rel.split("/"))

    def public(self, scrub: Callable[[str], str] = _as_is) -> FileChange:
        return FileChange(
            path=shown_path(self.rel, scrub),
            change=self.change,
            kind=self.kind,
            size=self.size,
            applied=self.applied,
            note=self.note,
        )


# The longest path a result shows, and what stands for the middle cut out of a longer one.
MAX_SHOWN_PATH = 200
PATH_CUT = "[…]"
# The most characters the listed changes take in a result, together, as JSON: with the
# default output budget (24,000), a whole result stays under 40,000 characters.
LISTED_CHARS = 12_000


def _printable(rel: str) -> str:
    """A path as text a reader can trust: undecodable bytes and controls made visible."""
    text = _INVISIBLE.sub(
        "\ufffd", rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    )
    return "".join(
        c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else "\ufffd" for c in text
    )


def shown_path(rel: str, scrub: Callable[[str], str] = _as_is) -> str:
    """A path as a result shows it: printable, scrubbed, and a long one cut in the middle.

    Scrubbed whole before any cut, so a cut never shows the part of a secret it split.
    """
    text = scrub(_printable(rel))
    if len(text) <= MAX_SHOWN_PATH:
        return text
    room = MAX_SHOWN_PATH - len(PATH_CUT)
    head = room * 2 // 5  # the end names the file: keep more of it
    return text[:head] + PATH_CUT + text[len(text) - (room - head) :]


def _path_order(c: Change) -> tuple[str, bool]:
    # By path as its parts compare (`a/b` before `a-b`), a deletion before a creation there.
    return c.rel.replace("/", "\x00"), c.change != "deleted"


def listing(
    changes: Iterable[Change],
    *,
    most: int,
    scrub: Callable[[str], str] = _as_is,
    budget: int = LISTED_CHARS,
) -> list[FileChange]:
    """The first ``changes`` by path, as a result lists them: at most ``most``, and no more
    than fit in ``budget`` characters of JSON (as sent: non-ASCII kept). The rest are only
    counted."""
    shown: list[FileChange] = []
    used = 2  # []
    # The first few only: sorting them all would copy every name a run left.
    for c in heapq.nsmallest(most, changes, key=_path_order):
        item = c.public(scrub)
        weight = len(item.model_dump_json()) + 1  # and a comma
        if used + weight > budget:
            break
        shown.append(item)
        used += weight
    return shown


def _as_file(after: Seen, seen: dict[str, Seen | None], sent: dict[str, Entry]) -> Seen:
    """A hard link stands for the regular file it names: the same bytes under this path.

    Tar stores the second name of a file as a link to the first, so ``ln a b`` can make
    the untouched ``a`` arrive as a link; read as a link it would look deleted.
    """
    if not after.hardlink or after.link not in seen:
        return after
    target = seen[after.link]
    if target is None:  # back as it was sent
        before = sent.get(after.link)
        if before is None or before.kind != "file":
            return after
        return Seen("file", before.size, after.mode, digest=before.digest)
    if target.kind != "file" or target.hardlink:
        return after
    return Seen("file", target.size, after.mode, digest=target.digest, data=target.data)


def diff(sent: dict[str, Entry], back: Readback) -> list[Change]:
    """Created, changed and deleted paths, directories included, in no useful order (a
    deletion before a creation at the same path); ``listing`` shows them by path."""
    changes: list[Change] = []
    for rel, seen in back.seen.items():
        if seen is None:
            continue
        after = _as_file(seen, back.seen, sent)
        before = sent.get(rel)
        size = after.size if after.kind == "file" and not after.hardlink else None
        if before is None:
            changes.append(Change(rel, "created", after.kind, size, None, after))
        elif before.kind != after.kind or after.hardlink:
            changes.append(Change(rel, "deleted", before.kind, before.size, before, None))
            changes.append(Change(rel, "created", after.kind, size, None, after))
        elif before.kind == "file" and (
            before.digest != after.digest
            or before.size != after.size
            or (before.mode & 0o111) != (after.mode & 0o111)
        ):
            changes.append(Change(rel, "changed", "file", size, before, after))
        elif before.kind == "symlink" and before.sent_link != after.link:
            changes.append(Change(rel, "changed", "symlink", None, before, after))
    if back.complete:
        for rel, before in sent.items():
            if rel not in back.seen:
                size = before.size if before.kind == "file" else None
                changes.append(Change(rel, "deleted", before.kind, size, before, None))
    return changes


# --- rw: writing the changes back -----------------------------------------------------------


class _Refused(Exception):
    """This change does not reach the host; ``str`` says why."""


@dataclass(frozen=True)
class _Rules:
    root: Path
    mask: PathRules
    protect: PathRules
    exclude: PathRules
    mounts: frozenset[str]


def _inside(path: str, root: Path) -> bool:
    r = str(root).rstrip("/")
    return path == r or path.startswith(r + "/")


# Control characters in a name drive the user's terminal when they list the directory (`ls`
# prints an OSC title); bidi overrides and invisible characters mislead (U+202E shows exe
# as png; a zero-width space makes two names look the same).
_HOSTILE_NAME = re.compile(f"[\x00-\x1f\x7f-\x9f{HIDDEN_CHARS}]")
_INVISIBLE = re.compile(f"[{HIDDEN_CHARS}]")


def _refusal(c: Change, rules: _Rules) -> str | None:
    # A link is a directory to whoever follows it: `.claude -> cfg` is `.claude/` on the host.
    is_dir = c.kind in ("dir", "symlink")
    parts = c.parts  # a property: split once
    if c.change != "deleted" and any(_HOSTILE_NAME.search(p) for p in parts):
        return "name holds control, bidirectional or invisible characters: not applied"
    if rules.protect.covers(parts, is_dir):
        return "protected path: a sandbox never changes it"
    if rules.mask.covers(parts, is_dir):
        return "masked path: the sandbox cannot see what is there"
    if rules.exclude.covers(parts, is_dir):
        return "excluded path: not part of the copy"
    for i in range(1, len(parts) + 1):
        if os.path.join(rules.root, *parts[:i]) in rules.mounts:
            return "on another filesystem mounted inside the workspace"
    after = c.after
    if c.change == "deleted" or after is None:
        return None
    if after.hardlink or (after.kind == "file" and after.data is None):
        return "hard link: not applied (copy the file instead)"
    if after.kind == "other":
        return "special file (fifo or device): not applied"
    if after.kind == "symlink":
        return _link_refusal(parts, after.link, rules)
    return None


_OUTSIDE = "symbolic link points outside the workspace: removed"
_AIMED = "symbolic link points at a protected or masked path: removed"
_CLIMBS = "symbolic link climbs back through a name (like y/..; put .. first): removed"
_REDIRECTS = "symbolic link would send an older link outside or to a protected path: removed"


def _link_refusal(parts: tuple[str, ...], target: str, rules: _Rules) -> str | None:
    """Why a link the sandbox made may not exist on the host; None if it stays inside.

    Inside not only in the tree as it stands: a later call may turn a name the target passes
    through into a link (`y/..` is the root while `y` is missing or a directory, and the
    root's parent once `y -> .`), and an older link is never checked again. So a target is
    relative and climbs (`..`) only first, no higher than the directory holding the link
    (a real directory: writes open each one with O_NOFOLLOW) is deep. Resolving it starts
    in that directory, climbs at most to the root, then only descends, and each name it
    descends through is a directory or a link kept inside by the same rule. A link the user
    made to somewhere outside breaks that last step: see ``_escaped`` for what guards it.
    """
    if not target or "\x00" in target or target.startswith("/"):
        return _OUTSIDE
    stack = list(parts[:-1])
    named = False
    for comp in target.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if named:
                return _CLIMBS
            if not stack:
                return _OUTSIDE
            stack.pop()
        else:
            named = True
            stack.append(comp)
    if rules.protect.covers(stack, True) or rules.mask.covers(stack, True):
        return _AIMED
    return _resolved_refusal(parts, target, rules)


def _resolved_refusal(parts: tuple[str, ...], target: str, rules: _Rules) -> str | None:
    """Why a link at ``parts`` to ``target`` may not stay, as the host resolves it now:
    through the links already there (`git -> .git` makes `git/hooks` `.git/hooks`)."""
    real = os.path.realpath(os.path.join(rules.root, *parts[:-1], target))
    if not _inside(real, rules.root):
        return _OUTSIDE
    resolved = Path(real).relative_to(rules.root).parts
    if rules.protect.covers(resolved, True) or rules.mask.covers(resolved, True):
        return _AIMED
    return None


def _host_link(root_fd: int, parts: tuple[str, ...]) -> str | None:
    """The target of the link at ``parts``, reached through real directories; else None."""
    try:
        pfd = _open_dir(root_fd, parts[:-1])
    except OSError:
        return None
    try:
        return os.readlink(parts[-1], dir_fd=pfd)
    except OSError:
        return None
    finally:
        os.close(pfd)


def _resolving_inside(root_fd: int, rels: Iterable[str], rules: _Rules) -> list[tuple[str, ...]]:
    """Those of the links at ``rels`` that resolve inside, and at no protected path."""
    out = []
    for rel in rels:
        parts = tuple(rel.split("/"))
        target = _host_link(root_fd, parts)
        if target is not None and _resolved_refusal(parts, target, rules) is None:
            out.append(parts)
    return out


def _escaped(root_fd: int, links: list[tuple[str, ...]], rules: _Rules) -> bool:
    """Whether one of ``links`` (each resolving inside before the writes) no longer does.

    The rule of ``_link_refusal`` keeps the sandbox's own links inside whatever later calls
    do, but not through a link of the user's pointing outside (`to_root -> /`): an older
    `leak -> d/to_root/etc/passwd`, checked while `d` was a directory, reaches `/etc/passwd`
    once `d -> .`. Only a new link sends an older one of the sandbox's somewhere else.
    """
    for parts in links:
        target = _host_link(root_fd, parts)
        if target is not None and _resolved_refusal(parts, target, rules):
            return True
    return False


def apply_changes(
    changes: list[Change],
    back: Readback,
    policy: WorkspacePolicy,
    root: Path,
    *,
    owner: tuple[int, int] | None,
) -> tuple[int, str | None]:
    """Write the allowed changes to ``root``; mark each change applied or refused (why).

    All or nothing on the bounds: past the quota, or with an incomplete read-back, nothing
    is written. Returns (changes applied, note).
    """
    rules = _Rules(
        root,
        PathRules(policy.mask),
        PathRules(policy.protect),
        PathRules(policy.exclude),
        mount_points_under(root),
    )
    for c in changes:
        c.applied = False
        c.note = _refusal(c, rules)
    todo = [c for c in changes if c.note is None]
    written = sum(c.size or 0 for c in todo if c.kind == "file" and c.change != "deleted")
    quota = policy.rw_quota_mib * _MIB
    stop = None
    if not back.complete:
        stop = f"{back.note}: nothing was written to your files"
    elif back.over_budget or written > quota:
        stop = (
            f"the run changed more than {policy.rw_quota_mib} MiB (rw_quota_mib): "
            "nothing was written to your files"
        )
    elif len(todo) > policy.rw_max_changes:
        stop = (
            f"the run changed {len(todo)} paths, above rw_max_changes "
            f"({policy.rw_max_changes}): nothing was written to your files"
        )
    if stop:
        for c in todo:
            c.note = "not applied: a limit was reached"
        return 0, stop
    root_fd = os.open(root, _O_DIR)
    try:
        links = [c for c in todo if c.kind == "symlink" and c.change != "deleted"]
        # The links that stay, as they resolve before any write (see ``_escaped``).
        older = _resolving_inside(root_fd, back.links, rules) if links else []
        deletions = [c for c in todo if c.change == "deleted"]
        # Files and links first, then directories deepest first: each rmdir only empties.
        deletions.sort(key=lambda c: (c.kind == "dir", -len(c.parts)))
        new_dirs = sorted(
            (c for c in todo if c.kind == "dir" and c.change == "created"),
            key=lambda c: len(c.parts),
        )
        files = [c for c in todo if c.kind == "file" and c.change != "deleted"]
        # A directory the sandbox made that was not applied (the host has one it could not
        # see there, say) takes its contents with it: nothing goes into a directory hidden
        # from the sandbox, where a later run could neither see nor re-check it.
        made = {c.rel: c for c in changes if c.kind == "dir" and c.change == "created"}
        for group, op in (
            (deletions, _delete),
            (new_dirs, _make_dir),
            (files, _write_file),
            (links, _make_link),
        ):
            for c in group:
                parent = made.get(c.rel.rpartition("/")[0])
                if parent is not None and not parent.applied:
                    c.note = "its directory was not applied"
                    continue
                try:
                    op(root_fd, c, owner)
                    c.applied = True
                except _Refused as e:
                    c.note = str(e)
                except OSError as e:
                    c.note = f"not applied: {e.strerror or 'error'}"
        # Links were checked against the tree before any write, each alone; check them again
        # now the tree is final. `d -> .` and `leak -> d/to_root/etc` in one call both pass
        # while `d` is missing; together, through the user's `to_root -> /`, they leave.
        for c in links:
            if not c.applied or c.after is None:
                continue
            why = _link_refusal(c.parts, c.after.link, rules)
            if why:
                _remove_quietly(root_fd, c.parts)
                c.applied = False
                c.note = why
        if older and _escaped(root_fd, older, rules):
            for c in links:
                if c.applied:
                    _remove_quietly(root_fd, c.parts)
                    c.applied = False
                    c.note = _REDIRECTS
    finally:
        os.close(root_fd)
    return sum(1 for c in changes if c.applied and c.kind != "dir"), None


def _parent(root_fd: int, parts: tuple[str, ...]) -> int:
    try:
        return _open_dir(root_fd, parts[:-1])
    except FileNotFoundError:
        raise _Refused("not applied: its directory is missing") from None
    except OSError:
        raise _Refused("not applied: a parent is not a directory on the host") from None


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _matches_before(st: os.stat_result | None, before: Entry, dir_fd: int, name: str) -> bool:
    """The host path is still what was copied: else someone changed it during the run."""
    if st is None or st.st_ino != before.ino:
        return False
    if before.kind == "file":
        return stat.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns) == (
            before.size,
            before.mtime_ns,
        )
    if before.kind == "symlink":
        return stat.S_ISLNK(st.st_mode) and os.readlink(name, dir_fd=dir_fd) == before.link
    return stat.S_ISDIR(st.st_mode)


_CONFLICT = "not applied: the path changed on the host during the run"


def _delete(root_fd: int, c: Change, owner: tuple[int, int] | None) -> None:
    assert c.before is not None
    pfd = _parent(root_fd, c.parts)
    name = c.parts[-1]
    try:
        if not _matches_before(_lstat(pfd, name), c.before, pfd, name):
            raise _Refused(_CONFLICT)
        if c.kind == "dir":
            try:
                os.rmdir(name, dir_fd=pfd)
            except OSError as e:
                if e.errno in (39, 66):  # ENOTEMPTY on Linux, macOS
                    raise _Refused("kept: it holds files the sandbox did not see") from None
                raise
        else:
            os.unlink(name, dir_fd=pfd)
    finally:
        os.close(pfd)


def _chown(fd: int, owner: tuple[int, int] | None) -> None:
    if owner is not None:
        os.fchown(fd, *owner)


def _make_dir(root_fd: int, c: Change, owner: tuple[int, int] | None) -> None:
    assert c.after is not None
    pfd = _parent(root_fd, c.parts)
    name = c.parts[-1]
    try:
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
        except FileExistsError:
            raise _Refused(_CONFLICT) from None
        fd = os.open(name, _O_DIR, dir_fd=pfd)
        try:
            # Never one the sandbox cannot list (0700, say): what it holds must stay in the
            # next copy, where the links in it are checked again (``_escaped``).
            os.fchmod(fd, (c.after.mode & 0o775) | 0o755)
            _chown(fd, owner)
        finally:
            os.close(fd)
    finally:
        os.close(pfd)


def _write_file(root_fd: int, c: Change, owner: tuple[int, int] | None) -> None:
    after = c.after
    assert after is not None and after.data is not None
    pfd = _parent(root_fd, c.parts)
    name = c.parts[-1]
    tmp = f".mcp-sandbox-{secrets.token_hex(6)}.tmp"
    try:
        current = _lstat(pfd, name)
        if c.change == "created" and current is not None:
            raise _Refused(_CONFLICT)
        if c.change == "changed":
            assert c.before is not None
            if not _matches_before(current, c.before, pfd, name):
                raise _Refused(_CONFLICT)
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=pfd,
        )
        try:
            view = memoryview(after.data)
            while view:
                view = view[os.write(fd, view) :]
            # No setuid, setgid or sticky bit, and nothing world-writable, reaches the host.
            os.fchmod(fd, after.mode & 0o775)
            _chown(fd, owner)
        finally:
            os.close(fd)
        if after.mode & 0o7000:
            c.note = "setuid/setgid bit removed"
        # rename replaces the directory entry itself: it never follows a link at ``name``.
        os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
    except BaseException:
        _unlink_quietly(pfd, tmp)
        raise
    finally:
        os.close(pfd)


def _make_link(root_fd: int, c: Change, owner: tuple[int, int] | None) -> None:
    after = c.after
    assert after is not None
    pfd = _parent(root_fd, c.parts)
    name = c.parts[-1]
    try:
        current = _lstat(pfd, name)
        if c.change == "changed":
            assert c.before is not None
            if not _matches_before(current, c.before, pfd, name):
                raise _Refused(_CONFLICT)
            os.unlink(name, dir_fd=pfd)
        elif current is not None:
            raise _Refused(_CONFLICT)
        os.symlink(after.link, name, dir_fd=pfd)
        if owner is not None:
            os.chown(name, *owner, dir_fd=pfd, follow_symlinks=False)
    finally:
        os.close(pfd)


def _unlink_quietly(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def _remove_quietly(root_fd: int, parts: tuple[str, ...]) -> None:
    try:
        pfd = _open_dir(root_fd, parts[:-1])
    except OSError:
        return
    try:
        st = _lstat(pfd, parts[-1])
        if st is not None and stat.S_ISLNK(st.st_mode):
            _unlink_quietly(pfd, parts[-1])
    finally:
        os.close(pfd)


def workspace_owner(root: Path) -> tuple[int, int] | None:
    """Whom written files belong to: the root's owner, when this process may give files away."""
    if os.geteuid() != 0:
        return None
    st = os.stat(root)
    return st.st_uid, st.st_gid
