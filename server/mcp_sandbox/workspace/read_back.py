"""The copy as the run left it: its tar stream read back, bounded, hashed as it streams."""

from __future__ import annotations

import stat
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO

from mcp_sandbox.constants import MIB
from mcp_sandbox.workspace.copy_scan import ARCHIVE_ROOT, CHUNK_BYTES, Entry, Kind, new_digest


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
    from_stub: bool = False,
) -> Readback:
    """Parse the copy's archive as the run left it; bounded in bytes read and entries kept.

    Keeps the bytes of created or changed files, up to ``keep_bytes`` in all (what `rw`
    writes back); digests the rest. ``from_stub``: a warm sandbox's stub sent it, and a
    file it marks ``SAME_MARK`` comes without its bytes, as it was sent (it compared them):
    one that was not sent as a file with those exec bits makes the read-back incomplete.
    A false mark can only hide a change, never make one: nothing unsent is written back.
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
                if not name.startswith(ARCHIVE_ROOT + "/"):
                    continue
                rel = name[len(ARCHIVE_ROOT) + 1 :]
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
                    first = member.linkname.removeprefix(ARCHIVE_ROOT + "/")
                    back.seen[rel] = Seen("file", 0, mode, hardlink=True, link=first)
                elif member.isreg() and from_stub and SAME_MARK in member.pax_headers:
                    if not _as_sent(before, mode):
                        back.complete = False
                        back.note = "the copy could not be read back whole; list incomplete"
                        break
                    back.seen[rel] = None
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
        back.note = f"the run left more than {max_bytes // MIB} MiB in /workspace; list incomplete"
    except (tarfile.TarError, OSError, EOFError):
        back.complete = False
        back.note = "the copy could not be read back whole; list incomplete"
    return back


# The pax record by which a warm sandbox's stub says a file is back as it was sent.
SAME_MARK = "MCPSANDBOX.same"


def _as_sent(before: Entry | None, mode: int) -> bool:
    return (
        before is not None
        and before.kind == "file"
        and before.sent
        and (before.mode & 0o111) == (mode & 0o111)
    )


def _read_member(f: IO[bytes] | None, size: int, keep: bool) -> Seen:
    digest = new_digest()
    parts: list[bytes] = []
    if f is not None:
        while True:
            data = f.read(CHUNK_BYTES)
            if not data:
                break
            digest.update(data)
            if keep:
                parts.append(data)
    return Seen("file", size, 0, digest=digest.digest(), data=b"".join(parts) if keep else None)
