"""A server killed with SIGKILL (no code of ours runs) leaves nothing: its undertaker removes
the warm pool and a running call's sandbox, and then leaves too."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import psutil

from sandbox_client import (
    connect,
    containers_of,
    describe_labelled_containers,
    eventually,
    labelled_volumes,
    our_servers,
)


def _undertakers_of(pid: int) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        argv = p.info["cmdline"] or []
        if "mcp_sandbox.undertaker" in argv and any(f":{pid}:" in a for a in argv):
            found.append(p)
    return found


async def test_a_sigkilled_server_leaves_no_sandbox_and_no_process(tmp_path: Path) -> None:
    await anyio.Path(tmp_path).chmod(0o755)  # the sandbox user (65534) enters /workspace
    await anyio.Path(tmp_path / "data.txt").write_text("x\n")
    env = {"MCP_SANDBOX_WORKSPACE": str(tmp_path)}
    before = our_servers()
    async with connect(env=env) as client:
        warm = await client.call_tool("shell", {"command": "true"})
        assert not warm.is_error
        (killed,) = our_servers() - before
        assert len(_undertakers_of(killed)) == 1
        async with anyio.create_task_group() as tg:

            async def long_call() -> None:
                # A copy-mode call: its own volume as well as its container.
                args = {"command": "sleep 60", "timeout_s": 60, "workspace": "copy"}
                with anyio.move_on_after(30):
                    await client.call_tool("shell", args)

            tg.start_soon(long_call)
            await eventually(lambda: len(containers_of(killed)) >= 2)  # the call's and warm
            os.kill(killed, signal.SIGKILL)
            tg.cancel_scope.cancel()
    await eventually(
        lambda: containers_of(killed) == [], timeout_s=30, describe=describe_labelled_containers
    )
    await eventually(lambda: labelled_volumes() == [], timeout_s=10)
    await eventually(lambda: _undertakers_of(killed) == [], timeout_s=10)
