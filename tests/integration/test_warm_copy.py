"""`copy` and `rw` calls in warm sandboxes: the same walls, results and write-backs as cold.

Each test gives two servers the same kind of tree under pytest's tmp dir: one with the pool
off (every call cold: a keeper, a volume and the daemon's archive calls), one pooled, whose
copy calls are served by a warm sandbox through its stub once its copy pool has one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from sandbox_client import RUNTIME, call, eventually, server_params

from .test_pool import _exists
from .test_spine import INSIDE
from .test_workspace import tree_digest

COLD = {"MCP_SANDBOX_POOL__ENABLED": "false"}
BOTH_MODES = {
    "MCP_SANDBOX_WORKSPACE_POLICY__MODES": json.dumps(["ro", "copy", "rw"]),
    "MCP_SANDBOX_APPROVAL__RW": "allow",
}


def _project(root: Path) -> Path:
    root.mkdir(mode=0o755)
    (root / "README.md").write_text("# demo\n")
    (root / "pkg").mkdir(mode=0o755)
    (root / "pkg" / "mod.py").write_text("VALUE = 1\n")
    (root / "pkg" / "gone.txt").write_text("delete me\n")
    (root / "data.bin").write_bytes(bytes(range(256)) * 64)
    (root / "link").symlink_to("pkg/mod.py")
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            p.chmod(0o755 if p.is_dir() else 0o644)
    return root


def _client(root: Path, env: dict[str, str] | None = None) -> Client:
    params = server_params({**BOTH_MODES, **(env or {})})
    params.args += ["--workspace", str(root)]
    return Client(params, mode="auto")


async def _warm(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    """The call, once a warm sandbox serves it: the copy pool fills after the first miss."""
    with anyio.fail_after(60):
        while True:
            probe = await call(client, "shell", command="true", workspace=args["workspace"])
            if probe["pooled"]:
                break
            await anyio.sleep(0.5)
        await anyio.sleep(0.8)  # the used one is replaced
        while True:
            result = await call(client, tool, **args)
            if result["pooled"]:
                return result
            await anyio.sleep(0.5)


# Everything a run can do to its copy that the change list and a write-back distinguish.
EDITS = (
    "set -e; echo new > fresh.txt; echo 'VALUE = 2' > pkg/mod.py; rm pkg/gone.txt;"
    " mkdir -p out/deep; echo x > out/deep/x.txt; chmod +x README.md; ln -s ../README.md out/r;"
    " ln pkg/mod.py hard.py; mkfifo pipe; : > empty; printf '\\0\\1' > bin.dat;"
    " echo secret > locked.txt; chmod 000 locked.txt; mkdir shut; echo y > shut/y; chmod 000 shut;"
    " cd pkg && pwd && ls -la /workspace | awk '{print $1, $3, $NF}' | sort"
)


def _comparable(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("exit_code", "stdout", "stderr", "timed_out", "oom_killed", "workspace")
    return {k: result[k] for k in keys}


@pytest.mark.parametrize("mode", ["copy", "rw"])
async def test_a_warm_copy_call_reports_and_writes_back_as_a_cold_one(
    tmp_path: Path, mode: str
) -> None:
    cold_root = _project(tmp_path / "cold")
    warm_root = _project(tmp_path / "warm")
    async with _client(cold_root, COLD) as c:
        cold = await call(c, "shell", command=EDITS, workspace=mode, workdir=".")
    before_warm = tree_digest(warm_root)
    async with _client(warm_root) as w:
        # The probe calls of `_warm` change nothing; the edits run once, warm.
        warm = await _warm(w, "shell", command=EDITS, workspace=mode, workdir=".")
    assert cold["pooled"] is False and warm["pooled"] is True
    assert cold["exit_code"] == 0, cold["stderr"]
    assert _comparable(warm) == _comparable(cold)
    if mode == "rw":
        assert tree_digest(warm_root) == tree_digest(cold_root) != before_warm
    else:
        assert tree_digest(warm_root) == before_warm


@pytest.mark.walls
async def test_a_warm_copy_sandbox_has_the_walls_of_a_cold_one(tmp_path: Path) -> None:
    if RUNTIME != "runc":
        # gVisor has no MADV_WIPEONFORK, so its stub could not keep the nonce: no copy waits.
        await _no_warm_copy_under_gvisor(tmp_path)
        return
    root = _project(tmp_path / "p")
    async with _client(root, COLD) as c:
        cold = json.loads((await call(c, "run_code", language="python", code=INSIDE,
                                      workspace="copy"))["stdout"])  # fmt: skip
    async with _client(root) as w:
        warm = json.loads((await _warm(w, "run_code", language="python", code=INSIDE,
                                       workspace="copy"))["stdout"])  # fmt: skip
    for key in ("uid", "gid", "groups", "capeff", "capprm", "capbnd", "nonewprivs_prctl",
                "seccomp", "nets", "interfaces", "root_writable", "etc_writable", "cwd",
                "cwd_writable", "pid1", "docker_sock", "setid"):  # fmt: skip
        assert warm[key] == cold[key], key
    assert warm["uid"] == 65534 and warm["capeff"] == "0000000000000000"

    def workspace_mount(mounts: str) -> list[str]:
        (line,) = [m for m in mounts.splitlines() if m.split()[1] == "/workspace"]
        # The options, but the size: the room is the same, its tmpfs rounds it in pages.
        return sorted(o for o in line.split()[3].split(",") if not o.startswith("size="))

    assert workspace_mount(warm["mounts"]) == workspace_mount(cold["mounts"])
    assert {"nosuid", "nodev"} <= set(workspace_mount(warm["mounts"]))


async def test_each_warm_copy_is_fresh_and_sees_the_host_tree_as_it_is_now(
    tmp_path: Path,
) -> None:
    root = _project(tmp_path / "p")
    async with _client(root) as w:
        first = await _warm(w, "shell", command="echo left > left.txt; cat pkg/mod.py",
                            workspace="copy")  # fmt: skip
        assert first["stdout"] == "VALUE = 1\n"
        (root / "pkg" / "mod.py").write_text("VALUE = 3\n")
        second = await _warm(w, "shell", command="ls left.txt 2>&1; cat pkg/mod.py",
                             workspace="copy")  # fmt: skip
    assert first["sandbox"] != second["sandbox"]
    assert "No such file" in second["stdout"] and second["stdout"].endswith("VALUE = 3\n")
    assert not (root / "left.txt").exists()


async def test_what_a_warm_run_leaves_running_is_gone_before_its_copy_is_read(
    tmp_path: Path,
) -> None:
    root = _project(tmp_path / "p")
    script = "(sleep 0.5; echo late > late.txt) & echo early > early.txt"
    async with _client(root) as w:
        result = await _warm(w, "shell", command=script, workspace="rw")
        await anyio.sleep(1.5)
    paths = [c["path"] for c in result["workspace"]["changes"]]
    assert paths == ["early.txt"] and result["workspace"]["applied"] == 1
    assert (root / "early.txt").read_text() == "early\n" and not (root / "late.txt").exists()


@pytest.mark.parametrize(
    ("command", "timeout_s"),
    [
        pytest.param("echo x > x.txt; kill -9 $PPID; sleep 5", 30, id="stub-killed"),
        pytest.param("echo x > x.txt; sleep 30", 1, id="timed-out"),
        pytest.param("echo x > x.txt; yes mcp-sandbox-flood", 30, id="flood"),
    ],
)
async def test_a_warm_copy_that_does_not_come_back_whole_writes_nothing(
    tmp_path: Path, command: str, timeout_s: int
) -> None:
    root = _project(tmp_path / "p")
    before = tree_digest(root)
    async with _client(root) as w:
        result = await _warm(w, "shell", command=command, workspace="rw", timeout_s=timeout_s)
        # Its sandbox is removed while the server goes on.
        await eventually(lambda: not _exists(result["sandbox"]), timeout_s=30)
    ws = result["workspace"]
    assert ws["changes_total"] == 0 and not ws["applied"], ws
    assert "could not be read back" in ws["note"]
    assert tree_digest(root) == before


async def test_a_tree_too_large_for_a_warm_copy_runs_cold(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    (root / "big.bin").write_bytes(b"\0" * (17 * 2**20))
    async with _client(root) as w:
        for _ in range(3):
            result = await call(w, "shell", command="wc -c < big.bin", workspace="copy")
            assert result["pooled"] is False and result["stdout"] == f"{17 * 2**20}\n"
            await anyio.sleep(0.5)
    shutil.rmtree(root)


DUMP = (
    "find . -mindepth 1 -printf '%P %y %m %s %l\\n' | sort;"
    " find . -type f -exec md5sum {} + | sort -k2"
)


async def test_a_waiting_copy_is_brought_up_to_the_host_tree_as_the_call_finds_it(
    tmp_path: Path,
) -> None:
    root = _project(tmp_path / "p")
    (root / "old").mkdir(mode=0o755)
    (root / "old" / "inner.txt").write_text("inner\n")
    (root / "ro-dir").mkdir(mode=0o755)
    (root / "ro-dir" / "kept.txt").write_text("kept\n")
    (root / "ro-dir").chmod(0o555)
    # Older than the settling time: the waiting sandbox's copy of these is trusted as sent.
    await anyio.sleep(3.5)
    async with _client(root) as w:
        await _warm(w, "shell", command="true", workspace="copy")
        await anyio.sleep(1.5)  # the next one waits, holding the tree as it was
        (root / "pkg" / "mod.py").write_text("VALUE = 9\n")  # same size, new bytes
        (root / "pkg" / "gone.txt").unlink()
        (root / "added.txt").write_text("added\n")
        (root / "README.md").chmod(0o755)
        (root / "link").unlink()
        (root / "link").symlink_to("README.md")
        shutil.rmtree(root / "old")
        (root / "old").write_text("a file now\n")
        (root / "ro-dir").chmod(0o755)
        (root / "ro-dir" / "kept.txt").write_text("changed\n")
        (root / "ro-dir").chmod(0o555)
        warm = await call(w, "shell", command=DUMP, workspace="copy")
    async with _client(root, COLD) as c:
        cold = await call(c, "shell", command=DUMP, workspace="copy")
    (root / "ro-dir").chmod(0o755)
    assert warm["pooled"] is True and cold["pooled"] is False
    assert warm["exit_code"] == 0, warm["stderr"]
    assert warm["stdout"] == cold["stdout"]
    assert "VALUE = 9" not in warm["stdout"]  # digests only; and the new bytes' digest:
    assert "pkg/mod.py f 644 10" in warm["stdout"] and "old f 644" in warm["stdout"]
    assert warm["workspace"]["changes_total"] == 0


async def _no_warm_copy_under_gvisor(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    async with _client(root) as w:
        for _ in range(3):
            result = await call(w, "shell", command="true", workspace="copy")
            assert result["pooled"] is False
            await anyio.sleep(1)
