"""What a run changed in its copy: the diff against what went out, and the listing a result
shows (paths scrubbed before they are cut)."""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from mcp_sandbox.output.result import FileChange
from mcp_sandbox.output.shaping import HIDDEN_CHARS
from mcp_sandbox.workspace.copy_scan import Entry, Kind
from mcp_sandbox.workspace.read_back import Readback, Seen

_INVISIBLE = re.compile(f"[{HIDDEN_CHARS}]")


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
