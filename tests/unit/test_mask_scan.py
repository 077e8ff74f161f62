"""The mask scan reuses a directory's listing only while nothing in it can have changed."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_sandbox.policy.paths import DEFAULT_MASK, PathRules
from mcp_sandbox.workspace import mask_scan
from mcp_sandbox.workspace.mask_scan import MaskScanner
from mcp_sandbox.workspace.workdir import filesystem_of
from special_files import SPECIALS, make_special

RULES = PathRules(DEFAULT_MASK)
AN_HOUR_AGO_NS = time.time_ns() - 3600 * 10**9


def _age(*dirs: Path) -> None:
    """Make ``dirs`` look long unchanged (ctime still moves: the kernel sets it)."""
    for d in dirs:
        os.utime(d, ns=(AN_HOUR_AGO_NS, AN_HOUR_AGO_NS))


def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """No racy window: every listing may be reused (the ctime check still applies)."""
    monkeypatch.setattr(mask_scan, "RACY_S", -1.0)


def _tick() -> None:
    """Let the kernel's coarse clock (a jiffy) move on: with no racy window, a change in the
    very tick of our listing is exactly what the window is there to catch."""
    time.sleep(0.02)


def _tree(root: Path) -> None:
    (root / "app" / "deep").mkdir(parents=True)
    (root / "app" / "main.py").write_text("")
    (root / "docs").mkdir()


def test_an_unchanged_tree_is_not_listed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _quiet(monkeypatch)
    _tree(tmp_path)
    scanner = MaskScanner(tmp_path, RULES, reuse=True)
    first = scanner.scan(max_entries=100)
    listed: list[str] = []
    real = os.scandir

    def scandir(path: str) -> object:
        listed.append(path)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert scanner.scan(max_entries=100) == first
    assert listed == []


@pytest.mark.parametrize("where", ["", "app", "app/deep", "docs"])
def test_a_secret_written_after_a_scan_is_masked_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    _quiet(monkeypatch)
    _tree(tmp_path)
    scanner = MaskScanner(tmp_path, RULES, reuse=True)
    assert scanner.scan(max_entries=100).files == ()
    _tick()
    (tmp_path / where / ".env").write_text("SECRET=1")
    assert scanner.scan(max_entries=100).files == (f"{where}/.env".lstrip("/"),)


@pytest.mark.parametrize("kind", SPECIALS)
@pytest.mark.parametrize("where", ["", "app/deep", "docs"])
def test_a_special_file_made_after_a_scan_is_masked_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, kind: str
) -> None:
    """A socket, FIFO or device node is masked whatever its name, like a new `.env`."""
    _quiet(monkeypatch)
    _tree(tmp_path)
    scanner = MaskScanner(tmp_path, RULES, reuse=True)
    assert scanner.scan(max_entries=100).files == ()
    _tick()
    make_special(tmp_path / where / "db", kind)
    assert scanner.scan(max_entries=100).files == (f"{where}/db".lstrip("/"),)
    _tick()
    (tmp_path / where / "db").unlink()
    (tmp_path / where / "db").write_text("a plain file now")
    assert scanner.scan(max_entries=100).files == ()


def test_a_change_hidden_behind_a_reset_mtime_is_still_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`touch -d` can put the mtime back; the kernel moves the ctime all the same."""
    _quiet(monkeypatch)
    _tree(tmp_path)
    _age(tmp_path / "app")
    scanner = MaskScanner(tmp_path, RULES, reuse=True)
    scanner.scan(max_entries=100)
    _tick()
    (tmp_path / "app" / "id_rsa").write_text("k")
    _age(tmp_path / "app")
    assert scanner.scan(max_entries=100).files == ("app/id_rsa",)


def test_a_directory_changed_within_the_racy_window_is_listed_again(tmp_path: Path) -> None:
    """A change in the same clock tick as our listing could leave every timestamp equal."""
    _tree(tmp_path)
    scanner = MaskScanner(tmp_path, RULES, reuse=True)
    scanner.scan(max_entries=100)  # every directory is seconds old: none may be reused
    listed: list[str] = []
    real = os.scandir

    def scandir(path: str) -> object:
        listed.append(path)
        return real(path)

    os_scandir, os.scandir = os.scandir, scandir  # type: ignore[assignment]
    try:
        scanner.scan(max_entries=100)
    finally:
        os.scandir = os_scandir
    assert sorted(listed) == sorted(
        str(p) for p in (tmp_path, tmp_path / "app", tmp_path / "app" / "deep", tmp_path / "docs")
    )


def test_a_directory_swapped_for_a_link_or_a_file_is_rescanned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _quiet(monkeypatch)
    _tree(tmp_path)
    (tmp_path / "app" / "deep" / "a.pem").write_text("k")
    (tmp_path / "elsewhere").mkdir()
    scanner = MaskScanner(tmp_path, RULES, reuse=True)
    assert scanner.scan(max_entries=100).files == ("app/deep/a.pem",)
    _tick()
    (tmp_path / "app" / "deep" / "a.pem").unlink()
    (tmp_path / "app" / "deep").rmdir()
    (tmp_path / "app" / "deep").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "b.pem").write_text("k")
    assert scanner.scan(max_entries=100).files == ("elsewhere/b.pem",)


def test_on_a_filesystem_not_known_to_be_local_nothing_is_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _quiet(monkeypatch)
    _tree(tmp_path)
    monkeypatch.setattr(mask_scan, "filesystem_of", lambda root: "nfs4")
    scanner = MaskScanner(tmp_path, RULES)
    scanner.scan(max_entries=100)
    listed: list[str] = []
    real = os.scandir

    def scandir(p: str) -> Any:
        listed.append(p)
        return real(p)

    monkeypatch.setattr(os, "scandir", scandir)
    scanner.scan(max_entries=100)
    assert len(listed) == 4


def test_the_workspace_filesystem_is_read_from_mountinfo(tmp_path: Path) -> None:
    assert filesystem_of(tmp_path) != ""
    assert filesystem_of(Path("/proc")) == "proc"


names = st.sampled_from(["a", "b", ".env", "x.pem", ".ssh", "id_rsa", "src"])
ops = st.lists(
    st.tuples(
        st.sampled_from(["file", "dir", "remove", *SPECIALS]),
        st.lists(names, min_size=1, max_size=3),
    ),
    max_size=12,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops)
def test_reusing_listings_gives_what_a_full_scan_gives(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, list[str]]]
) -> None:
    """After any sequence of changes, the reusing scanner agrees with a scan from nothing."""
    root = tmp_path_factory.mktemp("tree")
    mask_scan_racy = mask_scan.RACY_S
    mask_scan.RACY_S = -1.0
    try:
        scanner = MaskScanner(root, RULES, reuse=True)
        for kind, parts in steps:
            path = root.joinpath(*parts)
            _tick()
            try:
                if kind == "file":
                    path.parent.mkdir(parents=True, exist_ok=True)
                    if path.exists() and not path.is_file():
                        continue  # writing would open a FIFO (and wait) or a device
                    path.write_text("")
                elif kind in SPECIALS:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    make_special(path, kind)
                elif kind == "dir":
                    path.mkdir(parents=True, exist_ok=True)
                elif path.is_dir():
                    for sub in sorted(path.rglob("*"), reverse=True):
                        sub.rmdir() if sub.is_dir() else sub.unlink()
                    path.rmdir()
                elif path.exists():
                    path.unlink()
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                continue
            assert scanner.scan(max_entries=1000) == MaskScanner(root, RULES, reuse=False).scan(
                max_entries=1000
            )
    finally:
        mask_scan.RACY_S = mask_scan_racy


def test_a_mount_inside_the_workspace_is_masked_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read-only bind shows what lies under another mount on the host: nobody checked it."""
    _tree(tmp_path)
    monkeypatch.setattr(mask_scan, "mount_points_under", lambda root: {str(tmp_path / "docs")})
    masks = MaskScanner(tmp_path, RULES, reuse=True).scan(max_entries=100)
    assert masks.dirs == ("docs",)
