"""The workspace through real servers: ro, copy and rw, masks, escapes and limits.

Every workspace lives under a pytest tmp dir; each server is started on one with
``MCP_SANDBOX_WORKSPACE``. Nothing outside the tmp dirs is touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest
from mcp import Client

from sandbox_client import (
    INITIALIZE,
    INITIALIZED,
    MODES,
    RUNTIME,
    TEST_RUN_ID,
    TEST_RUN_LABEL,
    call,
    call_error,
    connect,
    eventually,
    labelled_volumes,
    server_params,
    workspace_changes,
)

SAMPLE = Path(__file__).resolve().parents[1] / "sample_project"
ENV_CANARY = "env-canary-5b0e9d7c41"
KEY_CANARY = "key-canary-a7c3e1f9"
HOST_CANARY = "host-canary-03f2aa61"
ALL_MODES = json.dumps(["ro", "copy", "rw"])


def tree_digest(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path below ``root`` with its type, mode, owner and content: equal means unchanged."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", st.st_mode, st.st_uid)
            else:
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                out[rel] = ("file", st.st_mode, st.st_uid, st.st_gid, digest)
    return out


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A host file next to, never inside, any workspace."""
    path = tmp_path_factory.mktemp("outside") / "host-secret.txt"
    path.write_text(HOST_CANARY)
    return path


def plant_secrets(root: Path) -> None:
    (root / ".env").write_text(f"API_TOKEN={ENV_CANARY}\n")
    (root / ".env.local").write_text(f"X={ENV_CANARY}\n")
    (root / "certs").mkdir()
    (root / "certs" / "server.pem").write_text(KEY_CANARY)
    (root / ".ssh").mkdir()
    (root / ".ssh" / "id_ed25519").write_text(KEY_CANARY)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(SAMPLE, root, dirs_exist_ok=True)
    plant_secrets(root)
    return root


@pytest.fixture(scope="module")
async def ws(project: Path) -> AsyncIterator[Client]:
    async with connect("auto", env={"MCP_SANDBOX_WORKSPACE": str(project)}) as c:
        yield c


# --- the sample project, read-only and copied ---------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_pytest_in_ro_reports_one_pass_one_fail(project: Path, mode: str) -> None:
    before = tree_digest(project)
    async with connect(mode, env={"MCP_SANDBOX_WORKSPACE": str(project)}) as c:
        result = await call(c, "shell", command="python -m pytest -q")
    assert result["exit_code"] == 1, result
    assert "1 failed, 1 passed" in result["stdout"]
    assert "test_mean_of_nothing_fails_on_purpose" in result["stdout"]
    assert result["workspace"]["mode"] == "ro" and result["workspace"]["changes_total"] == 0
    assert tree_digest(project) == before  # no cache, no bytecode left behind


async def test_node_test_runs_in_ro(ws: Client) -> None:
    result = await call(ws, "shell", command="node --test")
    assert result["exit_code"] == 0, result
    assert "pass 1" in result["stdout"]


@pytest.mark.walls
async def test_pytest_in_copy_gives_the_same_verdict(ws: Client, project: Path) -> None:
    before = tree_digest(project)
    result = await call(ws, "shell", command="python -m pytest -q", workspace="copy")
    assert result["exit_code"] == 1 and "1 failed, 1 passed" in result["stdout"], result
    assert result["workspace"]["changes_total"] == 0
    assert tree_digest(project) == before


@pytest.mark.walls
async def test_a_write_in_ro_fails_clearly(ws: Client, project: Path) -> None:
    before = tree_digest(project)
    result = await call(ws, "shell", command="echo x > new.txt; echo y >> sample/__init__.py")
    assert result["exit_code"] != 0
    new, edit = result["stderr"].splitlines()
    # gVisor checks the directory's owner before the read-only mount: EACCES, not EROFS.
    ro = "Read-only file system" if RUNTIME == "runc" else "Permission denied"
    assert new.endswith(f"cannot create new.txt: {ro}")
    # The host's file is not the sandbox user's: permission is checked before the mount.
    assert edit.endswith(("Read-only file system", "Permission denied"))
    assert tree_digest(project) == before


async def test_the_workspace_bind_is_read_only_and_the_cwd(ws: Client) -> None:
    result = await call(ws, "shell", command="pwd; grep ' /workspace ' /proc/self/mounts")
    cwd, mount = result["stdout"].splitlines()
    assert cwd == "/workspace" and mount.split()[3].startswith("ro,")


async def test_workdir_sets_the_working_directory(ws: Client) -> None:
    result = await call(ws, "shell", command="pwd; ls", workdir="sample")
    assert result["stdout"].splitlines()[0] == "/workspace/sample"
    assert result["workspace"]["workdir"] == "sample"


@pytest.mark.walls
async def test_copy_writes_freely_and_the_host_tree_stays_byte_for_byte(
    ws: Client, project: Path
) -> None:
    before = tree_digest(project)
    script = (
        "echo hello > new.txt && mkdir -p build/out && head -c 5000 /dev/zero > build/out/blob"
        " && echo '# edited' >> sample/__init__.py && rm sum.js && chmod +x test_sample.py"
        " && ln -s /etc/passwd escape && echo done"
    )
    result = await call(ws, "shell", command=script, workspace="copy")
    assert result["exit_code"] == 0 and result["stdout"] == "done\n", result
    assert tree_digest(project) == before
    changes = {(c["path"], c["change"]): c for c in result["workspace"]["changes"]}
    assert changes[("new.txt", "created")]["size"] == 6
    assert changes[("build/out/blob", "created")]["size"] == 5000
    assert ("sample/__init__.py", "changed") in changes
    assert ("test_sample.py", "changed") in changes  # mode only
    assert changes[("sum.js", "deleted")]["size"] == (SAMPLE / "sum.js").stat().st_size
    assert changes[("escape", "created")]["kind"] == "symlink"
    assert result["workspace"]["changes_total"] == 6
    assert all(c["applied"] is None for c in result["workspace"]["changes"])


async def test_each_copy_starts_from_the_host_tree(ws: Client) -> None:
    await call(ws, "shell", command="echo one > left.txt", workspace="copy")
    result = await call(ws, "shell", command="ls left.txt 2>&1; true", workspace="copy")
    assert "No such file" in result["stdout"]


async def test_the_change_list_is_bounded(project: Path) -> None:
    env = {
        "MCP_SANDBOX_WORKSPACE": str(project),
        "MCP_SANDBOX_WORKSPACE_POLICY__CHANGES_LISTED": "5",
    }
    async with connect("auto", env=env) as c:
        result = await call(
            c, "shell", command="for i in $(seq 1 40); do : > f$i; done", workspace="copy"
        )
    ws = result["workspace"]
    assert ws["changes_total"] == 40 and len(ws["changes"]) == 5


async def test_long_changed_paths_keep_a_result_under_its_size(ws: Client) -> None:
    """120 files with 650-character paths, and output past its budget: the change list once
    took the result to 75,000 characters."""
    code = (
        "import os\n"
        'd = "/workspace/" + "/".join(["D" * 200, "E" * 200])\n'
        "os.makedirs(d)\n"
        "for i in range(120):\n"
        '    open(os.path.join(d, "f%03d_" % i + "F" * 240), "w").close()\n'
        'print("x" * 30000)\n'
    )
    reply = await ws.call_tool(
        "run_code", {"language": "python", "code": code, "workspace": "copy"}
    )
    result = reply.structured_content
    assert result is not None and not reply.is_error, reply.content
    assert result["exit_code"] == 0 and result["truncated"], result["stderr"]
    wire = len(reply.model_dump_json(by_alias=True, exclude_none=True))  # text block too
    assert wire < 40_000, wire
    changes = result["workspace"]["changes"]
    assert result["workspace"]["changes_total"] == 120 and 10 <= len(changes) < 100
    for c in changes:  # the start and the end of each, the middle cut out
        assert len(c["path"]) <= 200 and "[…]" in c["path"], c["path"]
        assert c["path"].startswith("D" * 50) and c["path"].endswith("F" * 100), c["path"]


async def test_serve_workspace_option_wins_over_the_environment(
    project: Path, tmp_path: Path
) -> None:
    (tmp_path / "other.txt").write_text("other")
    params = server_params({"MCP_SANDBOX_WORKSPACE": str(tmp_path)})
    params.args += ["--workspace", str(project)]
    async with Client(params) as c:
        result = await call(c, "shell", command="ls")
    assert "test_sample.py" in result["stdout"] and "other.txt" not in result["stdout"]


async def test_a_server_started_in_slash_has_no_workspace() -> None:
    params = server_params()
    params.cwd = "/"
    async with Client(params) as c:
        result = await call(c, "shell", command="pwd; ls -A; grep -c ' /workspace ' /proc/mounts")
        assert result["stdout"].split() == ["/workspace", "1"]  # an empty scratch tmpfs
        assert result["workspace"] is None
        message = await call_error(c, "shell", command="true", workdir="etc")
        assert "no workspace" in message and "--workspace" in message


# --- masks ----------------------------------------------------------------------------------------


@pytest.mark.walls
@pytest.mark.parametrize("mode", ["ro", "copy"])
async def test_masked_files_are_unreadable_and_never_in_output(ws: Client, mode: str) -> None:
    probe = (
        "cat .env .env.local certs/server.pem .ssh/id_ed25519 2>&1; ls -la . .ssh certs 2>&1;"
        " grep -r -e canary . 2>&1; tar cf - . 2>/dev/null | strings | grep canary; true"
    )
    result = await call(ws, "shell", command=probe, workspace=mode)
    text = json.dumps(result)
    assert ENV_CANARY not in text and KEY_CANARY not in text
    if mode == "copy":
        assert "No such file" in result["stdout"]  # never copied: not even the names


@pytest.mark.parametrize("mode", ["ro", "copy"])
async def test_what_the_sandbox_user_cannot_read_stays_unread_in_every_mode(
    tmp_path: Path, mode: str
) -> None:
    """A copy is made by the server, which may read a 0600 file; the sandbox gets no more
    than its own user (65534) could read in ro."""
    root = tmp_path / "perm"
    (root / "private").mkdir(parents=True)
    root.chmod(0o755)
    (root / "open.txt").write_text("open\n")
    (root / "creds.txt").write_text(f"{ENV_CANARY}\n")
    (root / "creds.txt").chmod(0o600)
    (root / "private" / "db.json").write_text(f"{KEY_CANARY}\n")
    (root / "private").chmod(0o700)
    probe = "cat open.txt creds.txt private/db.json 2>&1; grep -r canary . 2>&1; true"
    async with connect("auto", env={"MCP_SANDBOX_WORKSPACE": str(root)}) as c:
        result = await call(c, "shell", command=probe, workspace=mode)
    text = json.dumps(result)
    assert result["stdout"].startswith("open\n")
    assert ENV_CANARY not in text and KEY_CANARY not in text
    if mode == "copy":
        assert "2 paths the sandbox's user cannot read" in str(result["workspace"]["note"])


async def test_masked_paths_are_empty_and_read_only_in_ro(ws: Client) -> None:
    result = await call(
        ws,
        "shell",
        command="wc -c < .env; ls -A .ssh | wc -l; echo x > .env 2>&1; touch .ssh/k 2>&1; true",
    )
    lines = result["stdout"].splitlines()
    assert lines[:2] == ["0", "0"]
    assert all("Read-only file system" in line for line in lines[2:]), lines


async def test_a_workdir_inside_a_mask_is_refused(ws: Client) -> None:
    message = await call_error(ws, "shell", command="ls", workdir=".ssh")
    assert "masked" in message


# --- special files: live through a bind, so masked in ro, never copied -----------------------

SPECIAL_PROBE = """
import os, socket, stat
for name in ("db.sock", "run/pipe", "null-dev"):
    try:
        print(name, stat.filemode(os.lstat(name).st_mode))
    except OSError as e:
        print(name, "absent", e.strerror)
s = socket.socket(socket.AF_UNIX)
s.settimeout(3)
try:
    s.connect("db.sock")
    s.sendall(b"from-sandbox")
    print("CONNECTED")
except OSError as e:
    print("connect:", e.strerror)
try:
    fd = os.open("run/pipe", os.O_WRONLY | os.O_NONBLOCK)
    os.write(fd, b"from-sandbox")
    print("PIPE WRITTEN")
except OSError as e:
    print("pipe:", e.strerror)
try:
    fd = os.open("null-dev", os.O_WRONLY)
    os.write(fd, b"from-sandbox")
    print("DEVICE WRITTEN")
except OSError as e:
    print("device:", e.strerror)
"""


def _identity(path: Path) -> tuple[int, ...]:
    st = path.lstat()
    return st.st_mode, st.st_ino, st.st_rdev, st.st_uid, st.st_mtime_ns, st.st_ctime_ns


@pytest.fixture
def specials(tmp_path: Path) -> Iterator[tuple[Path, list[bytes]]]:
    """A workspace holding a Unix socket a host thread serves, a FIFO a host thread reads
    and a world-writable device node (/dev/null's numbers, never a real console)."""
    root = tmp_path / "specials"
    (root / "run").mkdir(parents=True)
    root.chmod(0o755)
    (root / "run").chmod(0o755)
    (root / "plain.txt").write_text("plain\n")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(root / "db.sock"))
    listener.listen()
    listener.settimeout(0.1)
    (root / "db.sock").chmod(0o777)  # unmasked, the sandbox user could connect
    os.mkfifo(root / "run" / "pipe", 0o666)
    (root / "run" / "pipe").chmod(0o666)
    os.mknod(root / "null-dev", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (root / "null-dev").chmod(0o666)
    # The read end is held open, so a writer in the sandbox would not wait for one.
    reader = os.open(root / "run" / "pipe", os.O_RDONLY | os.O_NONBLOCK)
    reached: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                pass
            else:
                with conn:
                    conn.settimeout(1)
                    reached.append(b"connection:" + conn.recv(100))
            try:
                data = os.read(reader, 100)
            except BlockingIOError:
                data = b""
            if data:
                reached.append(b"pipe:" + data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield root, reached
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        os.close(reader)


@pytest.mark.parametrize("mode", ["ro", "copy"])
async def test_special_files_never_reach_the_host_from_a_sandbox(
    specials: tuple[Path, list[bytes]], mode: str
) -> None:
    root, reached = specials
    paths = [root / "db.sock", root / "run" / "pipe", root / "null-dev"]
    before = {p: _identity(p) for p in paths}
    async with connect("auto", env={"MCP_SANDBOX_WORKSPACE": str(root)}) as c:
        result = await call(c, "run_code", language="python", code=SPECIAL_PROBE, workspace=mode)
        listed = await call(c, "shell", command="ls -A . run", workspace=mode)
    out = result["stdout"]
    assert result["exit_code"] == 0, result
    assert "CONNECTED" not in out and "WRITTEN" not in out, out
    if mode == "ro":  # each overmounted by the empty read-only file, like a secret
        for name in ("db.sock", "run/pipe", "null-dev"):
            assert f"{name} -r--r--r--" in out, out
        # The blank is root's and 0444: permission is checked before the read-only mount.
        for what in ("pipe", "device"):
            assert f"{what}: Permission denied" in out or f"{what}: Read-only file" in out, out
        assert sorted(listed["stdout"].split()) == sorted(
            [".:", "db.sock", "null-dev", "plain.txt", "run", "run:", "pipe"]
        )
    else:  # never copied: not even the names
        assert out.count("absent No such file") == 3, out
        assert sorted(listed["stdout"].split()) == [".:", "plain.txt", "run", "run:"]
    await anyio.sleep(0.3)  # the host thread polls every 0.1 s
    assert reached == []
    assert {p: _identity(p) for p in paths} == before  # the host's files, untouched
    assert stat.S_ISSOCK(before[paths[0]][0]) and stat.S_ISFIFO(before[paths[1]][0])
    assert stat.S_ISCHR(before[paths[2]][0]) and before[paths[2]][2] == os.makedev(1, 3)


# --- escapes --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def escapes(tmp_path_factory: pytest.TempPathFactory, outside: Path) -> AsyncIterator[Client]:
    base = tmp_path_factory.mktemp("escapes")
    root = base / "root"
    (root / "inner").mkdir(parents=True)
    (base / "sibling").mkdir()
    (base / "sibling" / "secret.txt").write_text(HOST_CANARY)
    (root / "to_root").symlink_to("/")
    (root / "to_sibling").symlink_to("../sibling")
    (root / "inner" / "up").symlink_to("../../sibling")
    (root / "to_inner").symlink_to("inner")
    (root / "peek").symlink_to(outside)
    (root / "file.txt").write_text("x")
    env = {
        "MCP_SANDBOX_WORKSPACE": str(root),
        "MCP_SANDBOX_WORKSPACE_POLICY__MODES": ALL_MODES,
        "MCP_SANDBOX_APPROVAL__RW": "allow",  # asking a human is test_approval's
    }
    async with connect("auto", env=env) as c:
        yield c


@pytest.mark.parametrize(
    ("workdir", "needle"),
    [
        ("../..", "'..'"),
        ("..", "'..'"),
        ("inner/../..", "'..'"),
        ("/etc", "relative"),
        ("/", "relative"),
        ("~", "relative"),
        ("to_root", "outside the workspace"),
        ("to_root/etc", "outside the workspace"),
        ("to_sibling", "outside the workspace"),
        ("inner/up", "outside the workspace"),
        ("missing", "does not exist"),
        ("file.txt", "not a directory"),
        ("inner\x00", "NUL"),
        ("a" * 5000, "workdir"),
    ],
)
@pytest.mark.parametrize("mode", ["ro", "copy", "rw"])
async def test_escaping_workdirs_are_refused_before_any_container(
    escapes: Client, workdir: str, needle: str, mode: str
) -> None:
    message = await call_error(escapes, "shell", command="pwd", workdir=workdir, workspace=mode)
    assert needle in message
    assert HOST_CANARY not in message


async def test_a_link_inside_the_root_is_a_fine_workdir(escapes: Client) -> None:
    result = await call(escapes, "shell", command="pwd", workdir="to_inner")
    assert result["stdout"] == "/workspace/inner\n"


@pytest.mark.parametrize("mode", ["ro", "copy"])
async def test_links_to_host_paths_resolve_inside_the_container(escapes: Client, mode: str) -> None:
    result = await call(
        escapes,
        "shell",
        command="cat peek to_sibling/secret.txt inner/up/secret.txt 2>&1; ls to_root/",
        workspace=mode,
    )
    assert HOST_CANARY not in json.dumps(result)
    assert result["stdout"].count("No such file") == 3
    assert "sbin" in result["stdout"]  # the container's own /, not the host's


async def test_bad_workspace_arguments_are_one_line(ws: Client) -> None:
    assert "workspace" in await call_error(ws, "shell", command="true", workspace="host")
    assert "workdir" in await call_error(ws, "shell", command="true", workdir=7)
    message = await call_error(ws, "shell", command="true", workspace="rw")
    assert "'rw' is not enabled" in message and "ro, copy" in message


# --- limits on copies ---------------------------------------------------------------------------


async def test_a_workspace_above_copy_max_is_refused_clearly(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    root = tmp_path_factory.mktemp("big")
    (root / "data.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    (root / "node_modules").mkdir()
    (root / "node_modules" / "huge.bin").write_bytes(b"\0" * (3 * 1024 * 1024))
    env = {
        "MCP_SANDBOX_WORKSPACE": str(root),
        "MCP_SANDBOX_WORKSPACE_POLICY__COPY_MAX_MIB": "1",
    }
    async with connect("auto", env=env) as c:
        message = await call_error(c, "shell", command="true", workspace="copy")
        assert "more than 1 MiB" in message and "exclude" in message
        (root / "data.bin").unlink()
        # Excluded trees are not copied, so they do not count.
        result = await call(c, "shell", command="ls -A", workspace="copy")
        assert result["stdout"] == ""


# --- rw -----------------------------------------------------------------------------------------

RW_OWNER = (4321, 4322)


@pytest.fixture(scope="module")
def rw_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rw")
    (root / ".git" / "hooks").mkdir(parents=True)
    (root / ".git" / "config").write_text("[core]\n")
    (root / ".mcp.json").write_text("{}\n")
    (root / ".env").write_text(f"TOKEN={ENV_CANARY}\n")
    if os.geteuid() == 0:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [".", *dirnames, *filenames]:
                os.chown(os.path.join(dirpath, name), *RW_OWNER)
    return root


@pytest.fixture(scope="module")
async def rw(rw_root: Path) -> AsyncIterator[Client]:
    env = {
        "MCP_SANDBOX_WORKSPACE": str(rw_root),
        "MCP_SANDBOX_WORKSPACE_POLICY__MODES": ALL_MODES,
        "MCP_SANDBOX_WORKSPACE_POLICY__RW_QUOTA_MIB": "2",
        "MCP_SANDBOX_APPROVAL__RW": "allow",  # asking a human is test_approval's
    }
    async with connect("auto", env=env) as c:
        yield c


async def test_rw_writes_land_owned_by_the_workspace_owner(rw: Client, rw_root: Path) -> None:
    result = await call(
        rw,
        "shell",
        command="mkdir -p made/deep && echo hi > made/deep/new.txt && id -u",
        workspace="rw",
    )
    assert result["exit_code"] == 0 and result["stdout"] == "65534\n"
    new = rw_root / "made" / "deep" / "new.txt"
    assert new.read_text() == "hi\n"
    assert workspace_changes(result)["made/deep/new.txt"]["applied"] is True
    assert result["workspace"]["applied"] == 1
    if os.geteuid() == 0:
        for p in (new, new.parent, new.parent.parent):
            assert (p.stat().st_uid, p.stat().st_gid) == RW_OWNER


@pytest.mark.walls
async def test_rw_changes_and_deletes(rw: Client, rw_root: Path) -> None:
    (rw_root / "edit.txt").write_text("old\n")
    (rw_root / "gone.txt").write_text("bye\n")
    result = await call(rw, "shell", command="echo new > edit.txt && rm gone.txt", workspace="rw")
    assert (rw_root / "edit.txt").read_text() == "new\n"
    assert not (rw_root / "gone.txt").exists()
    changes = workspace_changes(result)
    assert changes["edit.txt"]["change"] == "changed" and changes["edit.txt"]["applied"]
    assert changes["gone.txt"]["change"] == "deleted" and changes["gone.txt"]["applied"]


async def test_rw_a_hard_link_never_costs_the_original(rw: Client, rw_root: Path) -> None:
    (rw_root / "normal.txt").write_text("keep me\n")
    await call(rw, "shell", command="ln normal.txt hl && ln normal.txt a0", workspace="rw")
    assert (rw_root / "normal.txt").read_text() == "keep me\n"


async def test_rw_refuses_names_that_drive_a_terminal(rw: Client, rw_root: Path) -> None:
    cmd = 'touch "$(printf "x\\033]0;t\\007")" "$(printf "\\342\\200\\256gnp.exe")" plain'
    result = await call(rw, "shell", command=cmd, workspace="rw")
    names = await anyio.to_thread.run_sync(lambda: [p.name for p in rw_root.iterdir()])
    assert "plain" in names
    assert not any("\x1b" in n or "\u202e" in n for n in names)
    assert any(
        "control, bidirectional" in (c.get("note") or "") for c in result["workspace"]["changes"]
    )


@pytest.mark.walls
async def test_rw_escaping_links_are_reported_and_removed(rw: Client, rw_root: Path) -> None:
    result = await call(
        rw,
        "shell",
        command="mkdir links && cd links && ln -s /etc/passwd abs && ln -s ../../.. up"
        " && ln -s ../.env secret && ln -s ../made ok",
        workspace="rw",
    )
    changes = workspace_changes(result)
    for name in ("abs", "up", "secret"):
        assert changes[f"links/{name}"]["applied"] is False
        assert "removed" in str(changes[f"links/{name}"]["note"])
        assert not (rw_root / "links" / name).is_symlink()
    assert changes["links/ok"]["applied"] is True
    assert os.readlink(rw_root / "links" / "ok") == "../made"


async def test_rw_links_named_like_protected_directories_are_removed(
    rw: Client, rw_root: Path
) -> None:
    """`.claude -> cfg` would be the agent's own settings directory on the host."""
    result = await call(
        rw,
        "shell",
        command="mkdir cfg && echo '{}' > cfg/settings.json && ln -s cfg .claude"
        " && ln -s cfg .venv && ln -s cfg .husky",
        workspace="rw",
    )
    changes = workspace_changes(result)
    assert changes["cfg/settings.json"]["applied"] is True
    for name in (".claude", ".venv", ".husky"):
        assert changes[name]["applied"] is False, changes[name]
        assert not (rw_root / name).is_symlink()


async def test_rw_strips_setuid_and_setgid(rw: Client, rw_root: Path) -> None:
    result = await call(
        rw,
        "shell",
        command="cp /bin/true suid && chmod 6755 suid && stat -c %a suid",
        workspace="rw",
    )
    assert result["stdout"] == "6755\n"  # inside, the copy may hold it (nosuid tmpfs)
    mode = stat.S_IMODE((rw_root / "suid").stat().st_mode)
    assert mode & 0o6000 == 0 and mode & 0o111
    assert "setuid" in str(workspace_changes(result)["suid"]["note"])


@pytest.mark.walls
async def test_rw_never_writes_hooks_or_agent_config(rw: Client, rw_root: Path) -> None:
    before = tree_digest(rw_root / ".git"), (rw_root / ".mcp.json").read_bytes()
    result = await call(
        rw,
        "shell",
        command="echo evil > .git/hooks/pre-commit; echo '{\"x\":1}' > .mcp.json;"
        " rm -f .mcp.json; echo '{\"mcpServers\":{}}' > .mcp.json; mkdir -p sub/.git/hooks .claude;"
        " echo evil > sub/.git/hooks/post-checkout; echo '{}' > .claude/settings.json;"
        " echo 'rm -rf ~' > .bashrc; echo TOKEN=x > .env; echo fine > fine.txt; true",
        workspace="rw",
    )
    assert "Permission denied" in result["stderr"]  # the protected copy is read-only inside
    after = tree_digest(rw_root / ".git"), (rw_root / ".mcp.json").read_bytes()
    assert after == before
    for p in ("sub/.git", ".claude", ".bashrc"):
        assert not (rw_root / p).exists()
    assert (rw_root / ".env").read_text() == f"TOKEN={ENV_CANARY}\n"
    assert (rw_root / "fine.txt").read_text() == "fine\n"
    changes = workspace_changes(result)
    for path in (".mcp.json", "sub/.git/hooks/post-checkout", ".claude/settings.json", ".bashrc"):
        assert changes[path]["applied"] is False, path
        assert "protected" in str(changes[path]["note"])
    assert "masked" in str(changes[".env"]["note"])
    assert ENV_CANARY not in json.dumps(result)


@pytest.mark.walls
async def test_rw_past_the_quota_writes_nothing(rw: Client, rw_root: Path) -> None:
    before = tree_digest(rw_root)
    result = await call(
        rw,
        "shell",
        command="for i in 1 2 3; do head -c 1048576 /dev/urandom > big$i; done; echo small > s",
        workspace="rw",
    )
    assert result["workspace"]["applied"] == 0
    assert "rw_quota_mib" in result["workspace"]["note"]
    assert tree_digest(rw_root) == before


async def test_rw_many_small_files_in_a_bind_mount_style_flood_are_bounded(
    rw: Client, rw_root: Path
) -> None:
    # The flood that once wrote 1 GiB into a bind mount: here it hits the copy's tmpfs size.
    before = tree_digest(rw_root)
    result = await call(
        rw,
        "shell",
        command="i=0; while head -c 8388608 /dev/zero > f$i 2>/dev/null; do i=$((i+1)); done;"
        " echo wrote $i",
        workspace="rw",
        timeout_s=60,
    )
    assert int(result["stdout"].split()[1]) < 16  # stopped by the volume size, not 1 GiB
    assert result["workspace"]["applied"] == 0
    assert tree_digest(rw_root) == before


# --- what a dead server leaves ------------------------------------------------------------


def _owned_by(pid: int) -> list[str]:
    """Containers and volumes whose owner label names server process ``pid``."""
    found = []
    for kind in ("container", "volume"):
        cmd = ["docker", kind, "ls", "-q"] + (["-a"] if kind == "container" else [])
        names = subprocess.run(
            [*cmd, "--filter", f"label={TEST_RUN_LABEL}={TEST_RUN_ID}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        for name in names:
            owner = subprocess.run(
                [
                    "docker",
                    kind,
                    "inspect",
                    "-f",
                    '{{index .Config.Labels "mcp-sandbox.owner"}}'
                    if kind == "container"
                    else '{{index .Labels "mcp-sandbox.owner"}}',
                    name,
                ],
                capture_output=True,
                text=True,
            ).stdout.strip()
            if f":{pid}:" in owner:
                found.append(name)
    return found


def _kill_mid_copy(root: Path) -> int:
    """A server killed (SIGKILL: no clean-up) while a `copy` run holds its keeper and volume."""
    params = server_params({"MCP_SANDBOX_WORKSPACE": str(root)})
    args = {"command": "sleep 60", "workspace": "copy", "timeout_s": 60}
    messages = [
        INITIALIZE,
        INITIALIZED,
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "shell", "arguments": args},
        },
    ]
    with subprocess.Popen(
        [params.command, *params.args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=dict(params.env or {}),
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        for message in messages:
            proc.stdin.write((json.dumps(message) + "\n").encode())
            proc.stdin.flush()
        try:
            assert b'"id":1' in proc.stdout.readline()
            deadline = time.monotonic() + 30
            while not labelled_volumes() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert labelled_volumes(), "the copy run never made its volume"
        finally:
            proc.kill()
    return proc.pid


async def test_a_dead_servers_volume_and_keeper_are_reaped_at_start(project: Path) -> None:
    pid = await anyio.to_thread.run_sync(_kill_mid_copy, project)
    assert await anyio.to_thread.run_sync(_owned_by, pid)
    # Other servers of the suite keep warm sandboxes: only the dead server's things count.
    env = {"MCP_SANDBOX_WORKSPACE": str(project), "MCP_SANDBOX_POOL__ENABLED": "false"}
    async with connect("auto", env=env):
        await eventually(lambda: not _owned_by(pid), timeout_s=40)
