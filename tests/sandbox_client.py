"""How tests reach the sandbox: a real `mcp-sandbox serve` over stdio, the SDK's Client."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import anyio
import psutil
from mcp import Client, StdioServerParameters

# Planted in the server's environment: no sandbox may ever see it.
PLANTED_NAME = "PLANTED_CANARY_API_TOKEN"
PLANTED_VALUE = "canary-7d1f0c55e2b84a43"
MODES = ("legacy", "auto")
# The runtime test servers run their sandboxes under: runc (the daemon's default), or runsc
# for CI's second pass over the tests marked `walls` (`.ci/run`).
RUNTIME = os.environ.get("MCP_SANDBOX_TEST_RUNTIME") or "runc"
# A raw client's handshake, for tests that speak JSON-RPC on the server's pipes themselves.
INITIALIZE: dict[str, Any] = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw-test", "version": "0"},
    },
}
INITIALIZED: dict[str, Any] = {"jsonrpc": "2.0", "method": "notifications/initialized"}
# Every container a test server makes carries this, so checks ignore anything else on the daemon.
TEST_RUN_LABEL = "test.mcp-sandbox.run"
TEST_RUN_ID = uuid.uuid4().hex[:12]
# Test servers write their audit records here, never to the user's state directory.
AUDIT_DIR = tempfile.mkdtemp(prefix="mcp-sandbox-test-audit-")
atexit.register(shutil.rmtree, AUDIT_DIR, True)


def server_params(env: Mapping[str, str] | None = None, *args: str) -> StdioServerParameters:
    """`python -m mcp_sandbox serve` with a planted variable and ``env`` on top."""
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        PLANTED_NAME: PLANTED_VALUE,
        "MCP_SANDBOX_LOG_LEVEL": "WARNING",
        "MCP_SANDBOX_LABELS": json.dumps({TEST_RUN_LABEL: TEST_RUN_ID}),
        "MCP_SANDBOX_AUDIT__PATH": os.path.join(AUDIT_DIR, "audit.jsonl"),
    }
    # PYTHONPATH: a checkout that is not the installed one still runs its own server code.
    if RUNTIME != "runc":
        base["MCP_SANDBOX_RUNTIME"] = RUNTIME
    for key in ("DOCKER_HOST", "DOCKER_CONFIG", "PYTHONPATH"):
        if key in os.environ:
            base[key] = os.environ[key]
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_sandbox", *args, "serve"],
        env={**base, **(env or {})},
    )


@contextlib.asynccontextmanager
async def connect(
    mode: str = "auto", env: Mapping[str, str] | None = None, **kw: Any
) -> AsyncIterator[Client]:
    async with Client(server_params(env), mode=mode, **kw) as client:
        yield client


def _labelled(*listing: str) -> list[str]:
    """IDs in a daemon ``listing`` (`ps -a`, `volume ls`) that this test run labelled."""
    out = subprocess.run(
        ["docker", *listing, "-q", "--filter", f"label={TEST_RUN_LABEL}={TEST_RUN_ID}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def labelled_containers() -> list[str]:
    return _labelled("ps", "-a")


def our_servers() -> set[int]:
    """Pids of the servers this test process started (other modules' may still run)."""
    return {
        p.pid
        for p in psutil.Process().children(recursive=True)
        if "serve" in p.cmdline() and "mcp_sandbox" in p.cmdline()
    }


def containers_of(server_pid: int) -> list[str]:
    """This test run's containers that the server ``server_pid`` made (its owner label)."""
    out = subprocess.run(
        [
            "docker", "ps", "-a", "--filter", f"label={TEST_RUN_LABEL}={TEST_RUN_ID}",
            "--format", '{{.ID}} {{.Label "mcp-sandbox.owner"}}',
        ],
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    return [
        line.split()[0]
        for line in out.stdout.splitlines()
        if f":{server_pid}:" in line.partition(" ")[2]
    ]


def labelled_volumes() -> list[str]:
    return _labelled("volume", "ls")


def workspace_changes(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A result's `workspace.changes` by path (after a deletion there, the creation)."""
    ws = result["workspace"]
    assert isinstance(ws, dict)
    return {str(c["path"]): c for c in ws["changes"]}


async def eventually(
    predicate: Callable[[], bool],
    timeout_s: float = 20.0,
    describe: Callable[[], str] | None = None,
) -> None:
    """Poll ``predicate`` (state of the daemon: there is no event to wait on) until true; past
    ``timeout_s``, fail with what ``describe`` says of the state (what was left, and whose)."""
    try:
        with anyio.fail_after(timeout_s):
            while not predicate():  # noqa: ASYNC110  # polling an outside daemon
                await anyio.sleep(0.05)
    except TimeoutError:
        detail = describe() if describe is not None else "no description"
        raise AssertionError(f"still not true after {timeout_s} s: {detail}") from None


def describe_labelled_containers() -> str:
    """This test run's containers still on the daemon: id, state, image, name and labels."""
    out = subprocess.run(
        [
            "docker",
            "ps",
            "-a",
            "--filter",
            f"label={TEST_RUN_LABEL}={TEST_RUN_ID}",
            "--format",
            "{{.ID}} {{.State}} {{.Image}} {{.Names}} {{.Labels}}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip() or "none"


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    """Call a tool that must succeed; return its structured content."""
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    content: dict[str, Any] = result.structured_content
    return content


async def warm_call(client: Client, **args: Any) -> dict[str, Any]:
    """Call until a warm sandbox serves it (the pool fills in the background)."""
    with anyio.fail_after(60):
        while True:
            result = await call(client, **args)
            if result["pooled"]:
                return result
            await anyio.sleep(0.3)


async def call_error(client: Client, tool: str, **args: Any) -> str:
    """Call a tool that must fail; return its one-line message."""
    result = await client.call_tool(tool, args)
    assert result.is_error, result.structured_content
    text = result.content[0].text  # type: ignore[union-attr]
    assert "\n" not in text and "Traceback" not in text, text
    return text
