"""A warm copy's way back: the stub's marks for files it sends as they came, and its trailer."""

from __future__ import annotations

import io
import tarfile
import threading
import time
from pathlib import Path

import pytest

from mcp_sandbox.config.workspace import WorkspacePolicy
from mcp_sandbox.sandbox.warm_copy import ArchiveFeed, _read
from mcp_sandbox.workspace.changes import diff
from mcp_sandbox.workspace.copy_delta import SETTLE_NS, PreparedCopy, delta
from mcp_sandbox.workspace.copy_scan import scan_copy
from mcp_sandbox.workspace.read_back import SAME_MARK, Readback, read_back
from mcp_sandbox.workspace.tar_out import tar_stream

POLICY = WorkspacePolicy(modes=("ro", "copy", "rw"))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "p"
    (root / "src").mkdir(parents=True)
    (root / "src" / "m.py").write_text("x = 1\n")
    (root / "run.sh").write_text("echo hi\n")
    (root / "run.sh").chmod(0o755)
    return root


def _sent(project: Path) -> dict[str, object]:
    manifest = scan_copy(project, POLICY, lock_protected=False)
    for _ in tar_stream(manifest):
        pass
    return manifest.sent()  # type: ignore[return-value]


def _stub_archive(marked: dict[str, int], files: dict[str, bytes] | None = None) -> bytes:
    """An archive as a stub sends it: ``marked`` files (name -> mode) as headers only."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        root = tarfile.TarInfo("workspace")
        root.type = tarfile.DIRTYPE
        tar.addfile(root)
        src = tarfile.TarInfo("workspace/src")
        src.type = tarfile.DIRTYPE
        tar.addfile(src)
        for name, mode in marked.items():
            info = tarfile.TarInfo(f"workspace/{name}")
            info.mode, info.pax_headers = mode, {SAME_MARK: "1"}
            tar.addfile(info)
        for name, data in (files or {}).items():
            info = tarfile.TarInfo(f"workspace/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _back(project: Path, archive: bytes, *, from_stub: bool = True) -> tuple[Readback, list]:  # type: ignore[type-arg]
    sent = _sent(project)
    back = read_back(
        iter([archive]),
        sent,  # type: ignore[arg-type]
        max_bytes=10**7,
        max_entries=100,
        keep_bytes=10**6,
        from_stub=from_stub,
    )
    return back, diff(sent, back)  # type: ignore[arg-type]


def test_files_the_stub_marks_as_sent_are_unchanged(project: Path) -> None:
    archive = _stub_archive({"src/m.py": 0o644, "run.sh": 0o755}, {"new.txt": b"hi"})
    back, changes = _back(project, archive)
    assert back.complete
    assert [(c.rel, c.change) for c in changes] == [("new.txt", "created")]


@pytest.mark.parametrize(
    "marked",
    [
        pytest.param({"src/m.py": 0o644, "run.sh": 0o755, "never-sent.txt": 0o644}, id="unsent"),
        pytest.param({"src/m.py": 0o644, "run.sh": 0o644}, id="exec-bit"),
        pytest.param({"src": 0o755}, id="a-directory"),
    ],
)
def test_a_mark_that_does_not_match_what_was_sent_makes_it_incomplete(
    project: Path, marked: dict[str, int]
) -> None:
    back, changes = _back(project, _stub_archive(marked))
    assert not back.complete and "incomplete" in str(back.note)
    # An incomplete read-back lists no deletion, and `rw` writes nothing of it.
    assert all(c.change != "deleted" for c in changes)


def test_a_mark_in_the_daemons_archive_is_not_trusted(project: Path) -> None:
    archive = _stub_archive({"src/m.py": 0o644, "run.sh": 0o755})
    back, changes = _back(project, archive, from_stub=False)
    assert back.complete
    assert {(c.rel, c.change) for c in changes} == {("src/m.py", "changed"), ("run.sh", "changed")}


def _feed(*pieces: bytes, end: bool = True) -> ArchiveFeed:
    feed = ArchiveFeed(b"\0TRAILER\0")

    def pump() -> None:
        for p in pieces:
            feed.put(p)
        if end:
            feed.end()

    threading.Thread(target=pump, daemon=True).start()
    return feed


def _all(chunks: object) -> bytes:
    return b"".join(chunks)  # type: ignore[arg-type]


def test_the_trailer_ends_the_copy_without_waiting_for_the_stream_to_close() -> None:
    feed = _feed(b"tar-bytes", b"\0TRAI", b"LER\0", end=False)
    assert _read(feed, _all) == b"tar-bytes"
    assert feed.whole


def test_a_copy_without_its_trailer_is_lost() -> None:
    assert _read(_feed(b"tar-bytes", b"\0TRAILE"), _all) is None
    # The trailer is the stream's last bytes, never a part of what came before it.
    feed = _feed(b"tar-bytes\0TRAILER\0more")
    assert _read(feed, lambda chunks: next(iter(chunks))) is None


def test_a_reader_that_stopped_early_does_not_wait_for_the_rest() -> None:
    feed = _feed(*(b"x" * 65536 for _ in range(40)))
    assert _read(feed, lambda chunks: next(iter(chunks))) is None
    feed.abandon()


# --- bringing a waiting copy up to date (``copy_delta``) ----------------------------------------


def _prepared(project: Path, scanned_at_ns: int) -> PreparedCopy:
    manifest = scan_copy(project, POLICY, lock_protected=False)
    for _ in tar_stream(manifest):
        pass
    return PreparedCopy(manifest, scanned_at_ns)


def _later() -> int:
    return time.time_ns() + SETTLE_NS + 10**9  # every path settled before the scan


def test_an_unchanged_tree_needs_nothing_and_keeps_what_was_sent(project: Path) -> None:
    prepared = _prepared(project, _later())
    current = scan_copy(project, POLICY, lock_protected=False)
    change = delta(prepared, current)
    assert change.removed == () and change.patch.entries == []
    assert {e.rel: e.digest for e in current.entries if e.kind == "file"} == {
        e.rel: e.digest for e in prepared.manifest.entries if e.kind == "file"
    }
    assert all(e.sent for e in current.entries)


def test_what_changed_is_removed_first_and_sent_again(project: Path) -> None:
    prepared = _prepared(project, _later())
    (project / "src" / "m.py").write_text("x = 2\n")  # same size: the ctime tells
    (project / "run.sh").unlink()
    (project / "new.txt").write_text("new\n")
    current = scan_copy(project, POLICY, lock_protected=False)
    change = delta(prepared, current)
    assert change.removed == ("src/m.py", "run.sh")  # deepest first
    # A write in place leaves its directory as it was: only the file goes again.
    assert sorted(e.rel for e in change.patch.entries) == ["new.txt", "src/m.py"]


def test_a_path_changed_just_before_the_scan_is_sent_again(project: Path) -> None:
    prepared = _prepared(project, time.time_ns())  # in the same tick, for all we know
    change = delta(prepared, scan_copy(project, POLICY, lock_protected=False))
    assert {e.rel for e in change.patch.entries} == {"src", "src/m.py", "run.sh"}
    assert set(change.removed) == {"src/m.py", "run.sh"}  # files afresh; a directory stays


def test_a_directory_that_became_a_file_is_removed_with_what_it_held(project: Path) -> None:
    prepared = _prepared(project, _later())
    (project / "src" / "m.py").unlink()
    (project / "src").rmdir()
    (project / "src").write_text("a file\n")
    change = delta(prepared, scan_copy(project, POLICY, lock_protected=False))
    assert change.removed == ("src/m.py", "src")
    assert [e.rel for e in change.patch.entries] == ["src"]


def test_on_a_filesystem_not_known_to_be_local_nothing_is_trusted(project: Path) -> None:
    prepared = _prepared(project, _later())
    untrusted = PreparedCopy(prepared.manifest, prepared.scanned_at_ns, trusted=False)
    change = delta(untrusted, scan_copy(project, POLICY, lock_protected=False))
    assert {e.rel for e in change.patch.entries} == {"src", "src/m.py", "run.sh"}
