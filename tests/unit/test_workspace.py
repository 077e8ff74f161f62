"""The workspace without Docker: path rules, workdir checks, masks, copies and write-backs."""

from __future__ import annotations

import io
import os
import stat
import struct
import tarfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from mcp_sandbox.config.workspace import WorkspacePolicy, check_root, default_root
from mcp_sandbox.errors import RequestRejected
from mcp_sandbox.output.result import WorkspaceReport
from mcp_sandbox.output.scrubber import Scrubber
from mcp_sandbox.policy.limits import Limits, RunPlan
from mcp_sandbox.policy.paths import DEFAULT_MASK, DEFAULT_PROTECT, MAX_MASKS, PathRules
from mcp_sandbox.sandbox.spec import Mount, build_spec, with_workspace
from mcp_sandbox.workspace.changes import (
    LISTED_CHARS,
    MAX_SHOWN_PATH,
    PATH_CUT,
    Change,
    diff,
    listing,
    shown_path,
)
from mcp_sandbox.workspace.copy_scan import sandbox_may_read, scan_copy
from mcp_sandbox.workspace.mask_scan import MaskScanner
from mcp_sandbox.workspace.read_back import Readback, read_back
from mcp_sandbox.workspace.tar_out import container_link, tar_stream
from mcp_sandbox.workspace.workdir import resolve_workdir
from mcp_sandbox.workspace.write_back import apply_changes
from special_files import SPECIALS, make_special

RW = WorkspacePolicy(modes=("ro", "copy", "rw"))

# --- rules ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "is_dir", "masked"),
    [
        (".env", False, True),
        ("app/.env.production", False, True),
        ("certs/server.pem", False, True),
        ("home/.ssh", True, True),
        ("home/.ssh/known_hosts", False, False),  # the directory is what matches
        (".ssh", False, False),  # `.ssh/` matches directories only
        ("x/.docker/config.json", False, True),
        (".docker/other.json", False, False),
        ("id_rsa.pub", False, True),
        ("src/environment.py", False, False),
        (".ENV", False, True),  # hosts that ignore case would show it as .env
        ("server.PEM.", False, True),  # Windows drops the trailing dot
        # Where credentials live besides: direnv, backups, package tools, submodules.
        (".envrc", False, True),
        ("app/.env~", False, True),
        ("pip.conf", False, True),
        (".yarnrc.yml", False, True),
        (".git/config.worktree", False, True),
        (".git/modules/lib/config", False, True),
        (".git/modules/third_party/foo/config", False, True),
        (".git/modules/a/modules/b/config", False, True),
        (".git/modules/lib/HEAD", False, False),
        ("src/modules/auth/config", True, False),
        # Added after a red-team pass: credentials, state and deeper submodule names.
        (".pgpass", False, True),
        ("infra/terraform.tfstate", False, True),
        ("infra/terraform.tfstate.backup", False, True),
        ("infra/main.tf", False, False),
        (".git/worktrees/feature/config.worktree", False, True),
        (".git/worktrees/feature/HEAD", False, False),
        ("mirror/foo.git/config", False, True),  # a bare repository
        ("foo.git/HEAD", False, False),
        (".hg/hgrc", False, True),
        (".git/modules/vendor/github.com/org/repo/config", False, True),
        (".git/modules/a/b/c/d/e/config", False, True),
        (".git/modules/a/b/c/d/e/f/config", False, True),
        (".git/modules/a/b/c/d/e/f/g/config", False, False),  # past six: see the comment
    ],
)
def test_mask_rules_match_names_at_any_depth(path: str, is_dir: bool, masked: bool) -> None:
    assert PathRules(DEFAULT_MASK).matches(tuple(path.split("/")), is_dir) is masked


@pytest.mark.parametrize(
    "path",
    [
        ".git/hooks/pre-commit",
        ".GIT/hooks/pre-commit",
        "sub/.git",
        ".git",
        ".mcp.json",
        ".claude/settings.json",
        ".vscode/tasks.json",
        ".hus\u212ay/pre-commit",  # KELVIN SIGN: `k` on a normalising filesystem
        ".bashrc",
        "deep/er/.envrc",
        ".hg/hgrc",
        ".zed/settings.json",
        "AGENTS.md",
        "pkg/AGENTS.md",
        ".gemini/settings.json",
        ".cargo/config.toml",
        "gradlew",
        "gradlew.bat",
        "mvnw",
        "mvnw.cmd",
        "gradle/wrapper/gradle-wrapper.jar",
        "sub/gradle/wrapper/gradle-wrapper.properties",
        ".mvn/wrapper/maven-wrapper.properties",
        ".mvn/jvm.config",
        ".pylintrc",
        "pylintrc",
        ".bazelrc",
        "mise.toml",
        ".mise.toml",
        ".tool-versions",
        ".github/workflows/ci.yml",
        ".gitlab-ci.yml",
    ],
)
def test_protected_paths_cover_their_contents(path: str) -> None:
    assert PathRules(DEFAULT_PROTECT).covers(tuple(path.split("/")), False)


@pytest.mark.parametrize(
    "path", ["gradle/libs.versions.toml", "build.gradle", "docs/github.md", "src/cargo.rs"]
)
def test_neighbours_of_protected_paths_stay_writable(path: str) -> None:
    assert not PathRules(DEFAULT_PROTECT).covers(tuple(path.split("/")), False)


@given(st.lists(st.booleans(), min_size=4, max_size=4))
def test_case_never_gets_past_a_protect_rule(upper: list[bool]) -> None:
    name = "." + "".join(c.upper() if u else c for c, u in zip("git", upper, strict=False))
    assert PathRules(DEFAULT_PROTECT).covers((name, "hooks", "x"), False)


def test_anchored_patterns_match_at_the_root_only() -> None:
    rules = PathRules(["/build/", "secrets/*.txt"])
    assert rules.covers(("build", "x"), False) and not rules.covers(("a", "build", "x"), False)
    assert rules.matches(("a", "secrets", "k.txt"), False)


@pytest.mark.parametrize("bad", ["", "/", "a/../b", "**/x", "a//b", "x\x00"])
def test_bad_patterns_are_config_errors(bad: str) -> None:
    with pytest.raises(ValidationError):
        WorkspacePolicy(mask=(bad,))


def test_the_default_mode_must_be_allowed() -> None:
    with pytest.raises(ValidationError, match="not in modes"):
        WorkspacePolicy(mode="rw")
    assert WorkspacePolicy().modes == ("ro", "copy")


# --- the root and the workdir ---------------------------------------------------------------


def test_root_and_home_are_never_workspaces(tmp_path: Path) -> None:
    for path in (Path("/"), Path.home()):
        with pytest.raises(ValueError, match="cannot be the workspace"):
            check_root(path)
    with pytest.raises(ValueError, match="not a directory"):
        check_root(tmp_path / "missing")
    assert check_root(tmp_path) == tmp_path.resolve()


def test_a_server_started_in_slash_gets_no_workspace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    assert default_root(None) is None


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (tmp_path / "sibling").mkdir()
    (root / "to_root").symlink_to("/")
    (root / "to_sibling").symlink_to("../sibling")
    (root / "a" / "up").symlink_to("../../sibling")
    (root / "to_b").symlink_to("a/b")
    (root / "file").write_text("x")
    return root


@pytest.mark.parametrize(
    ("workdir", "needle"),
    [
        ("..", "'..'"),
        ("a/../..", "'..'"),
        ("/etc", "relative"),
        ("~root", "relative"),
        ("to_root", "outside"),
        ("to_root/tmp", "outside"),
        ("to_sibling", "outside"),
        ("a/up", "outside"),
        ("nope", "does not exist"),
        ("file", "not a directory"),
        ("a\x00", "NUL"),
    ],
)
def test_escaping_workdirs_are_refused(tree: Path, workdir: str, needle: str) -> None:
    with pytest.raises(RequestRejected, match=needle):
        resolve_workdir(tree, workdir)


def test_workdirs_resolve_to_real_parts(tree: Path) -> None:
    assert resolve_workdir(tree, ".") == ()
    assert resolve_workdir(tree, "a/b/") == ("a", "b")
    assert resolve_workdir(tree, "to_b") == ("a", "b")


# --- ro masks ---------------------------------------------------------------------------------


def test_masks_are_found_and_links_left_alone(tmp_path: Path) -> None:
    (tmp_path / "app" / ".ssh").mkdir(parents=True)
    (tmp_path / "app" / ".ssh" / "id_rsa").write_text("k")
    (tmp_path / ".env").write_text("s")
    (tmp_path / "app" / "tls.key").write_text("k")
    (tmp_path / ".env.link").symlink_to(".env")
    masks = MaskScanner(tmp_path, PathRules(DEFAULT_MASK), reuse=False).scan(max_entries=100)
    assert masks.files == (".env", "app/tls.key")
    assert masks.dirs == ("app/.ssh",)


def test_special_files_are_masked_whatever_their_name(tmp_path: Path) -> None:
    """Through the read-only bind (no nodev) a socket reaches a host daemon, a FIFO a host
    reader and a device node its device: each is overmounted like a secret."""
    (tmp_path / "run" / "deep").mkdir(parents=True)
    for kind in SPECIALS:
        make_special(tmp_path / f"{kind}.x", kind)
        make_special(tmp_path / "run" / "deep" / kind, kind)
    (tmp_path / "plain.txt").write_text("x")
    (tmp_path / "to_fifo").symlink_to("fifo.x")  # resolves in the container: to the mask
    masks = MaskScanner(tmp_path, PathRules(()), reuse=False).scan(max_entries=100)
    assert masks.files == tuple(
        sorted([f"{k}.x" for k in SPECIALS] + [f"run/deep/{k}" for k in SPECIALS])
    )
    assert masks.dirs == ()


def test_special_files_count_against_the_mount_bound_like_secrets(tmp_path: Path) -> None:
    for i in range(MAX_MASKS // 2):
        (tmp_path / f"k{i}.pem").write_text("k")
    for i in range(MAX_MASKS - MAX_MASKS // 2):
        os.mkfifo(tmp_path / f"p{i}")
    rules = PathRules(DEFAULT_MASK)
    assert len(MaskScanner(tmp_path, rules, reuse=False).scan(max_entries=1000).files) == MAX_MASKS
    os.mkfifo(tmp_path / "one-more")
    with pytest.raises(RequestRejected, match=f"at most {MAX_MASKS}: use workspace='copy'"):
        MaskScanner(tmp_path, rules, reuse=False).scan(max_entries=1000)


def test_a_huge_tree_is_refused_not_walked_forever(tmp_path: Path) -> None:
    for i in range(20):
        (tmp_path / f"f{i}").write_text("")
    with pytest.raises(RequestRejected, match="more than 10 entries"):
        MaskScanner(tmp_path, PathRules(DEFAULT_MASK), reuse=False).scan(max_entries=10)


# --- copies -------------------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "p"
    (root / "src").mkdir(parents=True)
    (root / "src" / "m.py").write_text("x = 1\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / ".env").write_text("SECRET=1\n")
    (root / "node_modules" / "pkg").mkdir(parents=True)
    (root / "node_modules" / "pkg" / "i.js").write_text("")
    (root / ".git" / "hooks").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "link").symlink_to("src/m.py")
    (root / "climb").symlink_to("../outside")
    (root / "dev").mkdir()
    for kind in SPECIALS:
        make_special(root / "dev" / kind, kind)
    return root


def _acl(*entries: tuple[int, int, int]) -> bytes:
    """A POSIX access ACL as its xattr holds it: version 2, then (tag, perm, id) entries."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


ANY = 0xFFFFFFFF
# user::rw- user:nobody:--- group::r-- mask::r-- other::r-- (setfacl -m u:nobody:0 on a 0644)
NOBODY_DENIED = _acl(
    (0x01, 6, ANY), (0x02, 0, 65534), (0x04, 4, ANY), (0x10, 4, ANY), (0x20, 4, ANY)
)


def test_a_copy_leaves_out_what_an_acl_keeps_from_the_sandbox_user(project: Path) -> None:
    secret = project / "src" / "acl-denied.txt"
    secret.write_text("not for nobody\n")
    secret.chmod(0o644)
    try:
        os.setxattr(secret, "system.posix_acl_access", NOBODY_DENIED)
    except OSError as e:
        pytest.skip(f"this filesystem keeps no ACL: {e.strerror}")
    manifest = scan_copy(project, RW, lock_protected=True)
    assert "src/acl-denied.txt" not in {e.rel for e in manifest.entries}
    assert manifest.unreadable == 1


@pytest.mark.parametrize(
    ("uid", "gid", "acl", "readable"),
    [
        (0, 0, NOBODY_DENIED, False),  # a named entry for nobody, whatever `other` says
        (0, 0, _acl((0x01, 6, ANY), (0x04, 4, ANY), (0x20, 0, ANY)), False),  # other: none
        (
            0,
            0,
            _acl((0x01, 6, ANY), (0x02, 4, 65534), (0x04, 0, ANY), (0x10, 0, ANY), (0x20, 0, ANY)),
            False,
        ),  # granted, but the mask takes it away
        (
            0,
            0,
            _acl((0x01, 6, ANY), (0x08, 4, 65534), (0x04, 0, ANY), (0x10, 4, ANY), (0x20, 0, ANY)),
            True,
        ),  # a named group entry for nogroup
        (65534, 0, _acl((0x01, 0, ANY), (0x04, 4, ANY), (0x20, 4, ANY)), False),  # owner: none
        (0, 0, b"\x01\x00\x00\x00", True),  # not an ACL we read: the mode decides
    ],
)
def test_acl_decides_as_the_kernel_does(uid: int, gid: int, acl: bytes, readable: bool) -> None:
    st = os.stat_result((stat.S_IFREG | 0o644, 0, 0, 1, uid, gid, 0, 0, 0, 0))
    assert sandbox_may_read(st, acl) is readable


def test_a_copy_leaves_out_masks_excludes_and_special_files(project: Path) -> None:
    manifest = scan_copy(project, RW, lock_protected=True)
    rels = {e.rel: e for e in manifest.entries}
    assert set(rels) == {
        "src",
        "src/m.py",
        "run.sh",
        ".git",
        ".git/HEAD",
        ".git/hooks",
        "link",
        "climb",
        "dev",  # its socket, FIFO and device nodes are left out
    }
    assert rels[".git"].locked and rels[".git/hooks"].locked and not rels["src/m.py"].locked
    order = [e.rel for e in manifest.entries]
    assert order.index("src") < order.index("src/m.py")


@pytest.mark.parametrize(
    ("policy", "needle"),
    [
        (WorkspacePolicy(copy_max_files=2), "more than 2 files"),
        (WorkspacePolicy(scan_max_entries=100, copy_max_mib=1), None),
    ],
)
def test_copy_bounds(project: Path, policy: WorkspacePolicy, needle: str | None) -> None:
    if needle is None:
        (project / "big").write_bytes(b"\0" * (1024 * 1024 + 1))
        needle = "more than 1 MiB"
    with pytest.raises(RequestRejected, match=needle):
        scan_copy(project, policy, lock_protected=False)


def _members(chunks: Iterator[bytes]) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    data = b"".join(chunks)
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            f = tar.extractfile(m) if m.isreg() else None
            out[m.name] = (m, f.read() if f else b"")
    return out


def test_the_tar_stream_is_owned_by_the_sandbox_and_locks_protected_paths(project: Path) -> None:
    manifest = scan_copy(project, RW, lock_protected=True)
    members = _members(tar_stream(manifest))
    m, data = members["src/m.py"]
    assert (m.uid, m.gid, data) == (65534, 65534, b"x = 1\n")
    assert members["run.sh"][0].mode & 0o111
    assert members[".git/HEAD"][0].uid == 0 and not members[".git/HEAD"][0].mode & 0o222
    assert members["climb"][0].linkname == "/outside"  # the daemon refuses `../outside`
    assert members["link"][0].linkname == "src/m.py"
    assert all(e.sent for e in manifest.entries)


def test_container_links_keep_their_meaning() -> None:
    assert container_link(("a", "l"), "../b") == "../b"
    assert container_link(("l",), "../x") == "/x"
    assert container_link(("a", "l"), "../../../etc") == "/etc"
    assert container_link(("l",), "/abs") == "/abs"


# --- what came back -----------------------------------------------------------------------------


def _archive(project: Path, edit: dict[str, bytes | str | None], **kw: int) -> bytes:
    """The copy of ``project`` as the daemon would return it, after ``edit``.

    A bytes value writes a file, a str makes a link, None deletes; ``kw`` sets modes.
    """
    manifest = scan_copy(project, RW, lock_protected=True)
    members = _members(tar_stream(manifest))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        root = tarfile.TarInfo("workspace")
        root.type = tarfile.DIRTYPE
        tar.addfile(root)
        for name, (m, data) in members.items():
            if name in edit:
                continue
            m.name = f"workspace/{name}"
            tar.addfile(m, io.BytesIO(data))
        for name, value in edit.items():
            if value is None:
                continue
            info = tarfile.TarInfo(f"workspace/{name}")
            info.mode = kw.get(name.replace("/", "_").replace(".", "_"), 0o644)
            if isinstance(value, str):
                info.type, info.linkname = tarfile.SYMTYPE, value
                tar.addfile(info)
            else:
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
    return buf.getvalue()


def _changes(project: Path, archive: bytes, keep: int = 10**6) -> tuple[list[Change], Readback]:
    manifest = scan_copy(project, RW, lock_protected=True)
    for _ in tar_stream(manifest):
        pass
    sent = manifest.sent()
    back = read_back(iter([archive]), sent, max_bytes=10**7, max_entries=1000, keep_bytes=keep)
    return diff(sent, back), back


def test_the_diff_lists_created_changed_and_deleted(project: Path) -> None:
    archive = _archive(project, {"src/m.py": b"x = 2\n", "new.txt": b"hi", "run.sh": None})
    changes, back = _changes(project, archive)
    assert back.complete
    got = {(c.rel, c.change) for c in changes}
    assert got == {("src/m.py", "changed"), ("new.txt", "created"), ("run.sh", "deleted")}


def test_a_read_back_past_its_bound_is_incomplete_and_lists_no_deletion(project: Path) -> None:
    archive = _archive(project, {"big": b"\0" * 100_000, "run.sh": None})
    manifest = scan_copy(project, RW, lock_protected=True)
    for _ in tar_stream(manifest):
        pass
    back = read_back(
        iter([archive]), manifest.sent(), max_bytes=50_000, max_entries=100, keep_bytes=0
    )
    assert not back.complete and "list incomplete" in str(back.note)
    assert all(c.change != "deleted" for c in diff(manifest.sent(), back))


def test_a_hard_link_to_an_untouched_file_is_a_new_file_of_its_size(project: Path) -> None:
    buf = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(_archive(project, {}))) as src,
        tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for m in src:
            tar.addfile(m, src.extractfile(m) if m.isreg() else None)
        info = tarfile.TarInfo("workspace/again")
        info.type, info.linkname = tarfile.LNKTYPE, "workspace/src/m.py"
        tar.addfile(info)
    changes, _ = _changes(project, buf.getvalue())
    assert [(c.rel, c.change, c.kind, c.size) for c in changes] == [("again", "created", "file", 6)]


@pytest.mark.parametrize("char", ["F", "\U0001f600"])
def test_a_long_change_list_is_bounded_in_size_not_only_in_count(project: Path, char: str) -> None:
    """120 files with 650-character paths once made a 75,000-character result (190 KB of
    emoji), past the 40,000 a whole result promises."""
    deep = "D" * 200 + "/" + "E" * 200
    edit: dict[str, bytes | str | None] = {f"{deep}/f{i:03d}_{char * 60}": b"" for i in range(120)}
    edit["A.txt"] = b"first by path"
    changes, _ = _changes(project, _archive(project, edit))
    listed = [c for c in changes if c.kind != "dir"]
    shown = listing(listed, most=100)
    report = WorkspaceReport(mode="copy", workdir=".", changes_total=len(listed), changes=shown)
    assert report.changes_total == 121 and 10 <= len(shown) < 100
    assert len(report.model_dump_json()) <= LISTED_CHARS + 200
    fewer = listing(listed, most=100, budget=3_000)
    assert (
        0 < len(fewer) < len(shown)
        and len(f"[{','.join(c.model_dump_json() for c in fewer)}]") <= 3_000
    )
    assert shown[0].path == "A.txt"  # the first by path
    for c, i in zip(shown[1:], range(120), strict=False):
        assert len(c.path) == MAX_SHOWN_PATH and PATH_CUT in c.path
        assert c.path.startswith("D" * 50) and c.path.endswith(f"/f{i:03d}_" + char * 60)


def test_the_change_list_is_in_path_order_and_stops_at_its_count(project: Path) -> None:
    edit: dict[str, bytes | str | None] = {name: b"" for name in ("b-c", "b/c", "a", "b.d")}
    changes, _ = _changes(project, _archive(project, {**edit, "run.sh": "src/m.py"}))
    files = [c for c in changes if c.kind != "dir"]
    paths = [c.path for c in listing(files, most=6)]
    assert paths == ["a", "b/c", "b-c", "b.d", "run.sh", "run.sh"]  # parts compare; gone first
    assert [c.change for c in listing(files, most=6)][-2:] == ["deleted", "created"]
    assert [c.path for c in listing(files, most=2)] == ["a", "b/c"]


SECRET = "Zq9fakeS3cr3tV4lu3xy"


def test_a_path_is_scrubbed_before_it_is_cut() -> None:
    """A cut made first left part of a secret that crossed it (`EEEEZq9fakeS3`), which the
    scrubber no longer recognised."""
    scrub = Scrubber({"PATH_TOKEN": SECRET}).scrub
    # Every alignment: wherever a cut falls, in one of them it splits a copy of the secret.
    rels = ["E" * pad + f"/{SECRET}" * 30 for pad in range(len(SECRET) + 1)]
    assert all(len(shown_path(rel)) == MAX_SHOWN_PATH for rel in rels)
    shown = [shown_path(rel, scrub) for rel in rels]
    shown += [c.path for c in listing(map(_created, rels), most=len(rels), scrub=scrub)]
    for path in shown:
        assert not any(SECRET[i : i + 4] in path for i in range(len(SECRET) - 3)), path
    assert all(len(path) <= MAX_SHOWN_PATH and PATH_CUT in path for path in shown)


def _created(rel: str) -> Change:
    return Change(rel, "created", "file", 0, None, None)


def test_reading_back_keeps_no_tar_header_per_entry() -> None:
    """A stream's TarFile kept every member it read: 50,000 long names cost ~125 MB."""
    if tracemalloc.is_tracing():
        pytest.skip("tracemalloc is already in use")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(3000):
            tar.addfile(tarfile.TarInfo(f"workspace/{'D' * 200}/f{i:04d}_{'F' * 240}"))
    data = buf.getvalue()
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    tracemalloc.start()
    try:
        back = read_back(iter(chunks), {}, max_bytes=len(data), max_entries=10**4, keep_bytes=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert back.complete and len(back.seen) == 3000
    assert peak < 3000 * 1600, peak  # about 1,100 bytes an entry: its name and what it was


def _apply(project: Path, edit: dict[str, bytes | str | None], **kw: int) -> dict[str, Change]:
    changes, back = _changes(project, _archive(project, edit, **kw))
    apply_changes(changes, back, RW, project, owner=None)
    return {c.rel: c for c in changes}


def test_rw_applies_inside_and_refuses_the_rest(project: Path, tmp_path: Path) -> None:
    (tmp_path / "outside").write_text("host")
    got = _apply(
        project,
        {
            "src/m.py": b"x = 2\n",
            "out": "/etc/passwd",
            "up": "../outside",
            "hidden": ".env",
            "hook": ".git/hooks",
            "ok": "src/m.py",
            ".git/hooks/pre-commit": b"evil",
            ".GIT/config": b"evil",
            ".env": b"SECRET=overwritten",
            "node_modules/pkg/i.js": b"evil",
            "suid": b"#!/bin/sh\n",
        },
        suid=0o6755,
    )
    assert (project / "src" / "m.py").read_text() == "x = 2\n" and got["src/m.py"].applied
    for name in ("out", "up", "hidden", "hook"):
        assert not got[name].applied and "symbolic link" in str(got[name].note), name
        assert not os.path.lexists(project / name)
    assert got["ok"].applied and os.readlink(project / "ok") == "src/m.py"
    for name in (".git/hooks/pre-commit", ".GIT/config"):
        assert "protected" in str(got[name].note)
    assert "masked" in str(got[".env"].note) and (project / ".env").read_text() == "SECRET=1\n"
    assert "excluded" in str(got["node_modules/pkg/i.js"].note)
    assert not (project / ".git" / "hooks" / "pre-commit").exists()
    mode = stat.S_IMODE((project / "suid").stat().st_mode)
    assert mode == 0o755 and "setuid" in str(got["suid"].note)
    assert (tmp_path / "outside").read_text() == "host"


def test_rw_refuses_links_that_are_protected_or_excluded_directories(project: Path) -> None:
    """A link named like a directory rule is that directory to whoever follows it: `.claude
    -> src` would give the host a `.claude/settings.json` the agent runs hooks from."""
    (project / "git").symlink_to(".git")  # the host's own link, there before the call
    got = _apply(
        project,
        {
            ".claude": "src",
            ".vscode": "src",
            ".venv": "src",
            "node_modules2": "src",  # no rule: allowed
            "via_host_link": "git/hooks",
        },
    )
    for name, why in ((".claude", "protected"), (".vscode", "protected"), (".venv", "excluded")):
        assert not got[name].applied and why in str(got[name].note), name
        assert not os.path.lexists(project / name)
    assert "protected or masked" in str(got["via_host_link"].note)
    assert not os.path.lexists(project / "via_host_link")
    assert got["node_modules2"].applied


def test_rw_never_follows_a_host_link_while_writing(project: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    changes, back = _changes(project, _archive(project, {"src/new.py": b"y"}))
    # The host directory becomes a link to outside during the run.
    os.rename(project / "src", tmp_path / "src-moved")
    (project / "src").symlink_to(outside)
    apply_changes(changes, back, RW, project, owner=None)
    [new] = [c for c in changes if c.rel == "src/new.py"]
    assert not new.applied and "not a directory" in str(new.note)
    assert list(outside.iterdir()) == []


def test_rw_refuses_a_change_the_host_made_meanwhile(project: Path) -> None:
    changes, back = _changes(project, _archive(project, {"src/m.py": b"sandbox"}))
    (project / "src" / "m.py").write_text("user edit, longer than before\n")
    apply_changes(changes, back, RW, project, owner=None)
    assert (project / "src" / "m.py").read_text() == "user edit, longer than before\n"
    [c] = [c for c in changes if c.rel == "src/m.py"]
    assert "changed on the host" in str(c.note)


def test_rw_past_the_quota_writes_nothing(project: Path) -> None:
    archive = _archive(project, {"a": b"x" * 3000, "b": b"y"})
    changes, back = _changes(project, archive, keep=2000)
    applied, note = apply_changes(changes, back, RW, project, owner=None)
    assert applied == 0 and "rw_quota_mib" in str(note)
    assert not (project / "b").exists()


def test_rw_keeps_a_directory_holding_files_the_sandbox_did_not_see(project: Path) -> None:
    (project / "conf").mkdir()
    (project / "conf" / "app.pem").write_text("secret")
    (project / "conf" / "a.txt").write_text("a")
    got = _apply(project, {"conf/a.txt": None, "conf": None})
    assert got["conf/a.txt"].applied and not got["conf"].applied
    assert (project / "conf" / "app.pem").read_text() == "secret"


# --- the spec ------------------------------------------------------------------------------------


def test_a_workspace_mount_replaces_the_scratch_tmpfs() -> None:
    plan = RunPlan(argv=("true",), limits=Limits(), stdin=None)
    spec = build_spec(
        plan, image="i", run_id="r", owner="o", seccomp_json="{}", extra_env={}, runtime=None
    )
    mounts = (
        Mount("bind", "/home/u/p", "/workspace", read_only=True),
        Mount("bind", "/tmp/m/file", "/workspace/.env", read_only=True),
    )
    host = with_workspace(spec, mounts, "/workspace/src").host_config_kwargs()
    assert set(host["tmpfs"]) == {"/tmp"}
    assert all(m["ReadOnly"] and m["BindOptions"]["NonRecursive"] for m in host["mounts"])
    assert with_workspace(spec, mounts, "/workspace/src").create_kwargs()["working_dir"] == (
        "/workspace/src"
    )
    volume = Mount("volume", "v", "/workspace", read_only=False).engine()
    assert volume["VolumeOptions"] == {"NoCopy": True}


def test_a_directory_we_cannot_list_is_masked_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "locked").mkdir()
    (tmp_path / "open").mkdir()
    real_scandir = os.scandir

    def scandir(path: str) -> object:
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    masks = MaskScanner(tmp_path, PathRules(DEFAULT_MASK), reuse=False).scan(max_entries=100)
    assert masks.dirs == ("locked",) and masks.files == ()


def test_blanks_of_dead_servers_are_swept_and_live_ones_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from mcp_sandbox.workspace import session as workspace_session

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / "mcp-sandbox-mask-999999999-abc"
    live = tmp_path / f"mcp-sandbox-mask-{os.getpid()}-abc"
    dead.mkdir()
    live.mkdir()
    workspace_session.sweep_dead_blanks()
    assert not dead.exists() and live.exists()


def test_a_shown_path_makes_invisible_characters_visible() -> None:
    assert shown_path("a\u200bb/c\ufe01\U000e0041.txt") == "a\ufffdb/c\ufffd\ufffd.txt"
