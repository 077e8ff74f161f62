"""Links an `rw` sandbox writes back, over several calls, through a real server.

A link is checked when it is written; a later call may then turn a name its target passes
through into a link. Each test ends by resolving every link in the workspace on the host.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from mcp import Client

from sandbox_client import call, connect, workspace_changes

SECRET = "outside-secret-4e1b7a"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The workspace, with a secret next to it: what an escaping link would reach."""
    base = Path(os.path.realpath(tmp_path_factory.mktemp("rw-links")))
    (base / "outside_secret.txt").write_text(SECRET)
    ws = base / "ws"
    ws.mkdir()
    return ws


@pytest.fixture(scope="module")
async def rw(root: Path) -> AsyncIterator[Client]:
    env = {
        "MCP_SANDBOX_WORKSPACE": str(root),
        "MCP_SANDBOX_WORKSPACE_POLICY__MODES": '["ro", "copy", "rw"]',
        "MCP_SANDBOX_APPROVAL__RW": "allow",  # asking a human is test_approval's
    }
    async with connect("auto", env=env) as c:
        yield c


def _inside(path: str, root: Path) -> bool:
    return path == str(root) or path.startswith(f"{root}/")


def _escaping_links(root: Path) -> list[tuple[str, str, str]]:
    """Every link in the workspace that lands outside it, as the host resolves it."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                continue
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    continue
                landed = os.path.realpath(path)  # missing a name: where it would land
            else:
                try:
                    landed = os.readlink(f"/proc/self/fd/{fd}")
                finally:
                    os.close(fd)
            if not _inside(landed, root):
                out.append((os.path.relpath(path, root), os.readlink(path), landed))
    return out


async def _shell(rw: Client, command: str) -> dict[str, dict[str, object]]:
    result = await call(rw, "shell", command=command, workspace="rw")
    assert result["exit_code"] == 0, result
    return workspace_changes(result)


async def test_the_two_call_reproduction_plants_no_escaping_link(rw: Client, root: Path) -> None:
    first = await _shell(rw, "ln -s y/.. x && ln -s x/outside_secret.txt leak")
    assert first["x"]["applied"] is False, first["x"]
    assert "climbs back" in str(first["x"]["note"]) and "removed" in str(first["x"]["note"])
    assert not (root / "x").is_symlink()
    second = await _shell(rw, "ln -s . y")
    assert second["y"]["applied"] is True, second["y"]
    assert await anyio.to_thread.run_sync(_escaping_links, root) == []
    with pytest.raises(FileNotFoundError):
        (root / "leak").read_text()


async def test_a_directory_later_replaced_by_a_link_leads_nowhere_outside(
    rw: Client, root: Path
) -> None:
    first = await _shell(rw, "mkdir d && ln -s d/.. x2 && ln -s x2/outside_secret.txt leak2")
    assert first["x2"]["applied"] is False and not (root / "x2").is_symlink()
    second = await _shell(rw, "rm -r d && ln -s . d")
    assert second["d"]["applied"] is True, second["d"]
    assert await anyio.to_thread.run_sync(_escaping_links, root) == []


async def test_no_new_link_sends_an_older_one_through_a_host_link_to_outside(
    rw: Client, root: Path
) -> None:
    """The user's own `up -> ..` stays; no link of the sandbox's may come to pass through it."""
    (root / "up").symlink_to("..")
    try:
        first = await _shell(rw, "mkdir -p e/up && ln -s e/up/outside_secret.txt leak3")
        assert first["leak3"]["applied"] is True  # `e` is a directory: inside
        second = await _shell(rw, "rm -r e && ln -s . e")
        assert second["e"]["applied"] is False and "older link" in str(second["e"]["note"])
        # Made together, the two links are checked again once both are there.
        both = await _shell(rw, "ln -s . f && ln -s f/up/outside_secret.txt leak4")
        assert both["leak4"]["applied"] is False and "outside" in str(both["leak4"]["note"])
        escaping = await anyio.to_thread.run_sync(_escaping_links, root)
        assert escaping == [("up", "..", str(root.parent))]  # the user's, and only it
    finally:
        (root / "up").unlink()
