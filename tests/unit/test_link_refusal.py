"""Links a sandbox writes back in `rw` stay inside the workspace, whatever later calls do.

A target is checked once, when its link is written. A later call may turn a name it passes
through into a link (`x -> y/..` is the root while `y` is missing, its parent once `y -> .`),
so the rule must hold for every tree later calls can make, not only the tree as it stands.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mcp_sandbox.config.workspace import WorkspacePolicy
from mcp_sandbox.policy.paths import PathRules
from mcp_sandbox.workspace.changes import diff
from mcp_sandbox.workspace.copy_scan import scan_copy
from mcp_sandbox.workspace.read_back import read_back
from mcp_sandbox.workspace.tar_out import tar_stream
from mcp_sandbox.workspace.write_back import _link_refusal, _Rules, apply_changes

RW = WorkspacePolicy(modes=("ro", "copy", "rw"))
SECRET = "outside-secret-9c41e0"


def _rules(root: Path, policy: WorkspacePolicy = RW) -> _Rules:
    return _Rules(
        root,
        PathRules(policy.mask),
        PathRules(policy.protect),
        PathRules(policy.exclude),
        frozenset(),
    )


# --- the rule, one target at a time -------------------------------------------------------------


@pytest.mark.parametrize(
    ("link", "target", "why"),
    [
        ("x", "y/..", "climbs back"),  # the reproduction: `y -> .` later makes it the parent
        ("x", "a/b/../c", "climbs back"),
        ("x", "./y/../..", "climbs back"),
        ("a/b/x", "c/..", "climbs back"),
        ("a/b/x", "../c/../d", "climbs back"),
        ("a/b/x", "../../c", None),  # up to the root, no further
        ("a/b/x", "./.././/../c", None),
        ("a/x", "..", None),
        ("a/b/x", "../../../c", "outside"),
        ("x", "..", "outside"),
        ("a/x", "../..", "outside"),
        ("x", "a/b/c", None),
        ("x", "c", None),
        ("x", "./c/", None),
        ("x", "/etc/passwd", "outside"),
        ("x", "", "outside"),
        ("x", "c\x00", "outside"),
        ("x", ".git/hooks", "protected or masked"),
        ("a/x", "../.env", "protected or masked"),
    ],
)
def test_a_target_climbs_only_first_and_no_higher_than_its_link_is_deep(
    tmp_path: Path, link: str, target: str, why: str | None
) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    got = _link_refusal(tuple(link.split("/")), target, _rules(tmp_path))
    if why is None:
        assert got is None
    else:
        assert got is not None and why in got and got.endswith(": removed"), got
        assert "\n" not in got


def test_a_target_through_a_host_link_is_checked_where_it_lands(tmp_path: Path) -> None:
    (tmp_path / "to_root").symlink_to("/")
    (tmp_path / "git").symlink_to(".git")
    rules = _rules(tmp_path)
    assert "outside" in str(_link_refusal(("x",), "to_root/etc/passwd", rules))
    assert "protected" in str(_link_refusal(("x",), "git/hooks", rules))


# --- the rule holds whatever comes later: links on a real tree ----------------------------------

_NAMES = ("a", "b")  # few: later operations keep landing on names already there
_PATHS = [("a",), ("b",), ("a", "a"), ("a", "b"), ("b", "a"), ("b", "b")]
_target = st.lists(st.sampled_from(("..", ".", "", *_NAMES)), min_size=1, max_size=3).map("/".join)
_op = st.one_of(
    st.tuples(st.just("mkdir"), st.sampled_from(_PATHS), st.just("")),
    # Whatever is at the path, a directory too, goes first: a later call may replace any name.
    st.tuples(st.just("link"), st.sampled_from(_PATHS), _target),
    st.tuples(st.just("remove"), st.sampled_from(_PATHS), st.just("")),
)
_OPEN = WorkspacePolicy(mask=(), protect=(), exclude=())


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


def _assert_every_link_inside(root: str) -> None:
    """Every link below ``root`` lands inside it: where the kernel lands, and where
    ``os.path.realpath`` (what the checks use) says, for a link the kernel does not resolve
    for want of a name. (A loop, ELOOP, lands nowhere; there realpath may say anything:
    `a -> a//.` is `/` to it.)"""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                continue
            what = (os.path.relpath(path, root), os.readlink(path))
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    continue
                real = os.path.realpath(path)
                assert _inside(real, root), (*what, real)
                continue
            try:
                landed = os.readlink(f"/proc/self/fd/{fd}")
            finally:
                os.close(fd)
            assert _inside(landed, root), (*what, landed)
            assert os.path.realpath(path) == landed, what


def _apply(root: Path, op: str, parts: tuple[str, ...], target: str) -> None:
    """``op`` at ``parts``, as rw applies it: through real directories only (O_NOFOLLOW),
    and a link only if the rule lets it through."""
    parent = root
    for name in parts[:-1]:
        parent = parent / name
        if parent.is_symlink() or not parent.is_dir():
            return
    path = parent / parts[-1]
    if op in ("link", "remove"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif os.path.lexists(path):
            path.unlink()
    if op == "mkdir" and not os.path.lexists(path):
        path.mkdir()
    elif op == "link" and _link_refusal(parts, target, _rules(root, _OPEN)) is None:
        os.symlink(target, path)


@settings(max_examples=400)
@given(st.lists(_op, max_size=20))
@example(  # the reproduction: x -> y/.. and leak -> x/secret, then y -> .
    [("link", ("x",), "y/.."), ("link", ("leak",), "x/secret"), ("link", ("y",), ".")]
)
@example(  # a directory d, then d -> .
    [
        ("mkdir", ("d",), ""),
        ("link", ("x",), "d/.."),
        ("link", ("leak",), "x/secret"),
        ("link", ("d",), "."),
    ]
)
@example([("mkdir", ("a",), ""), ("link", ("a", "a"), ".."), ("link", ("b",), "a/a/a/a")])
def test_links_the_rule_lets_through_stay_inside_whatever_follows(
    ops: list[tuple[str, tuple[str, ...], str]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.realpath(tmp)
        Path(base, "secret").write_text(SECRET)  # what an escape would reach
        root = Path(base, "ws")
        root.mkdir()
        for op in ops:
            _apply(root, *op)
            _assert_every_link_inside(str(root))
        # And whatever comes next: any name turned into a link that climbs as far as it may.
        for parts in _PATHS:
            for target in (".", "..", "../.."):
                later = Path(base, "later")
                shutil.copytree(root, later, symlinks=True)
                try:
                    _apply(later, "link", parts, target)
                    _assert_every_link_inside(str(later))
                finally:
                    shutil.rmtree(later)


# --- through apply_changes: calls one after another ---------------------------------------------


def _call(root: Path, command: str) -> dict[str, tuple[str, bool | None, str | None]]:
    """One `rw` call: the copy unpacked in a scratch directory (the container's /workspace),
    ``command`` run there, the result read back and applied to ``root``."""
    manifest = scan_copy(root, RW, lock_protected=True)
    data = b"".join(tar_stream(manifest))
    with tempfile.TemporaryDirectory() as tmp:
        box = Path(tmp, "workspace")
        box.mkdir()
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(box, filter="tar")
        subprocess.run(["sh", "-ec", command], cwd=box, check=True)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(box, arcname="workspace")
    sent = manifest.sent()
    back = read_back(
        iter([buf.getvalue()]), sent, max_bytes=10**7, max_entries=1000, keep_bytes=10**6
    )
    changes = diff(sent, back)
    apply_changes(changes, back, RW, root, owner=None)
    # A path deleted and created again (a directory become a link) is listed twice.
    return {c.rel: (c.change, c.applied, c.note) for c in changes if c.change != "deleted"}


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    (tmp_path / "outside_secret.txt").write_text(SECRET)
    root = tmp_path / "ws"
    root.mkdir()
    return root


def test_the_two_call_reproduction_leaves_nothing_pointing_outside(ws: Path) -> None:
    first = _call(ws, "ln -s y/.. x && ln -s x/outside_secret.txt leak")
    assert first["x"][1] is False and "climbs back" in str(first["x"][2])
    assert not os.path.lexists(ws / "x")
    second = _call(ws, "ln -s . y")
    assert second["y"][1] is True
    _assert_every_link_inside(str(ws))
    with pytest.raises(FileNotFoundError):
        (ws / "leak").read_text()


def test_a_directory_later_replaced_by_a_link_leads_nowhere_outside(ws: Path) -> None:
    first = _call(ws, "mkdir d && ln -s d/.. x && ln -s x/outside_secret.txt leak")
    assert first["x"][1] is False and not os.path.lexists(ws / "x")
    second = _call(ws, "rm -r d && ln -s . d")
    assert second["d"][1] is True
    _assert_every_link_inside(str(ws))


def test_a_new_link_never_sends_an_older_one_through_a_host_link_to_outside(ws: Path) -> None:
    """The user's own `to_root -> /` is left alone; no link of the sandbox's may reach it."""
    (ws / "to_root").symlink_to("/")
    first = _call(ws, "mkdir -p d/to_root/etc && ln -s d/to_root/etc/passwd leak")
    assert first["leak"][1] is True  # `d` is a directory: inside
    second = _call(ws, "rm -r d && ln -s . d")
    assert second["d"][1] is False and "older link" in str(second["d"][2])
    assert not os.path.lexists(ws / "d")
    assert os.path.realpath(ws / "leak") == str(ws / "d" / "to_root" / "etc" / "passwd")


def test_links_made_together_are_checked_again_once_all_are_there(ws: Path) -> None:
    """Checked alone against the tree before the call, `e -> .` and `leak -> e/up/...` both
    pass while `e` is missing; together they reach the user's `up -> ..`."""
    (ws / "up").symlink_to("..")
    got = _call(ws, "ln -s . e && ln -s e/up/outside_secret.txt leak")
    assert got["e"][1] is True
    assert got["leak"][1] is False and "outside" in str(got["leak"][2])
    assert not os.path.lexists(ws / "leak")


def test_a_new_link_into_a_protected_path_through_an_older_one_is_removed(ws: Path) -> None:
    (ws / ".git" / "hooks").mkdir(parents=True)
    (ws / "git").symlink_to(".git")
    first = _call(ws, "mkdir -p d/git && ln -s d/git/hooks hooks")
    assert first["hooks"][1] is True
    second = _call(ws, "rm -r d && ln -s . d")
    assert second["d"][1] is False and "protected" in str(second["d"][2])
    assert not os.path.realpath(ws / "hooks").startswith(str(ws / ".git"))


def test_a_link_in_a_directory_made_private_is_still_checked_later(ws: Path) -> None:
    """A directory the sandbox makes stays listable to it, so its links are in the next
    copy and checked again: `chmod 700 h` once hid `h/leak` from every later check."""
    (ws / "up").symlink_to("..")
    first = _call(ws, "mkdir -p d/up h && chmod 700 h && ln -s ../d/up/outside_secret.txt h/leak")
    assert first["h/leak"][1] is True
    assert stat.S_IMODE((ws / "h").stat().st_mode) == 0o755
    second = _call(ws, "rm -r d && ln -s . d")
    assert second["d"][1] is False and "older link" in str(second["d"][2])
    assert _inside(os.path.realpath(ws / "h" / "leak"), str(ws))


def test_nothing_is_written_into_a_directory_hidden_from_the_sandbox(ws: Path) -> None:
    (ws / "hidden").mkdir(mode=0o700)  # root's: uid 65534 cannot list it, nor get it copied
    got = _call(ws, "mkdir -p hidden/sub && ln -s ../up hidden/leak && echo x > hidden/f")
    assert got["hidden"][1] is False  # the host has a directory there
    for rel in ("hidden/sub", "hidden/leak", "hidden/f"):
        assert got[rel][1] is False and got[rel][2] == "its directory was not applied", got
    assert os.listdir(ws / "hidden") == []
