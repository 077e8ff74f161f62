"""PURE: what a warm sandbox that already holds a copy needs to hold the tree as it is now.

A warm sandbox for `copy` and `rw` gets the copy while it waits (``PreparedCopy``); a call
then sends only the difference (``delta``): the paths to remove, and the entries whose
scan differs, as a patch. A path counts as the same when its kind, size, mode, mtime, inode
and ctime all match what was sent. No one can set a ctime, and every write, chmod, rename
or link moves it, so a path whose ctime matches holds what it held, with one exception:
timestamps come from a coarse clock, so a change in the same tick as the prepared scan
would leave it as it was. A path changed less than ``SETTLE_NS`` before that scan is
therefore sent again, whatever its stat says (git's "racily clean" entries, the same way).
On a filesystem not known to be local (NFS, FUSE: other clocks, coarser stamps) nothing is
trusted and every path is sent again. Not covered: a second write through a shared mapping
(mmap) into a page still dirty may leave the ctime as it was until the page is written out.
"""

from __future__ import annotations

from dataclasses import dataclass

from mcp_sandbox.workspace.copy_scan import Entry, Manifest

# Longer than any local filesystem's timestamp granularity (ext4, xfs, btrfs, tmpfs: the
# kernel's tick; FAT: 2 s).
SETTLE_NS = 3_000_000_000


@dataclass(frozen=True)
class PreparedCopy:
    """The copy a waiting sandbox holds: the manifest as it was sent (with its digests),
    and the wall clock just before its scan."""

    manifest: Manifest
    scanned_at_ns: int
    trusted: bool = True  # the tree is on a local filesystem: its stat can be compared


@dataclass(frozen=True)
class Delta:
    """Paths to remove from the sandbox's copy (each before the patch, deepest first), and
    the entries of the current manifest to send as the patch, in its order."""

    removed: tuple[str, ...]
    patch: Manifest


def _same(old: Entry, new: Entry) -> bool:
    return (old.kind, old.size, old.mode, old.mtime_ns, old.ino, old.ctime_ns, old.locked) == (
        new.kind,
        new.size,
        new.mode,
        new.mtime_ns,
        new.ino,
        new.ctime_ns,
        new.locked,
    )


def delta(prepared: PreparedCopy, current: Manifest) -> Delta:
    """What turns ``prepared`` into ``current``. The entries of ``current`` the sandbox holds
    already take what was sent of them (digest, link), as if sent now: the read-back
    compares against them."""
    before = {e.rel: e for e in prepared.manifest.entries if e.sent}
    settled = prepared.scanned_at_ns - SETTLE_NS
    patch: list[Entry] = []
    removed: set[str] = set()
    now: set[str] = set()
    for entry in current.entries:
        rel = entry.rel
        now.add(rel)
        old = before.get(rel)
        if prepared.trusted and old is not None and _same(old, entry) and old.ctime_ns < settled:
            entry.digest, entry.link, entry.sent_link = old.digest, old.link, old.sent_link
            entry.sent = True
            continue
        if old is not None and not (old.kind == entry.kind == "dir"):
            removed.add(rel)  # a file or link is written afresh, never through the old one
        patch.append(entry)
    removed.update(rel for rel in before if rel not in now)
    order = sorted(removed, key=lambda rel: (-rel.count("/"), rel))
    return Delta(tuple(order), Manifest(current.root, patch))
