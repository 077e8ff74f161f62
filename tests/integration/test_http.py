"""Streamable HTTP through a real server on 127.0.0.1, with bearer tokens, and real Docker."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from mcp_sandbox.transport.auth import hash_entry
from mcp_sandbox.transport.http_gate import MAX_STREAMS_PER_TOKEN
from sandbox_client import INITIALIZE, MODES, call, server_params
from sandbox_http import HttpServer, http_client, http_server

ALICE = "alice-" + "A1b2C3d4" * 6
BOB = "bob-" + "Z9y8X7w6" * 6
SERVE_HTTP = (sys.executable, "-m", "mcp_sandbox", "serve", "--transport", "http")
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    """One server for the module: alice's token hashed at rest, bob's in plain text."""
    tmp = tmp_path_factory.mktemp("http")
    tokens = tmp / "tokens"
    tokens.write_text(f"# test tokens\n{hash_entry('alice', ALICE)}\nbob:{BOB}\n")
    env = {
        "MCP_SANDBOX_HTTP__TOKENS_FILE": str(tokens),
        "MCP_SANDBOX_HTTP__MAX_CONCURRENT_PER_TOKEN": "2",
        "MCP_SANDBOX_HTTP__ACCESS_LOG": str(tmp / "access.jsonl"),
        "MCP_SANDBOX_MAX_CONCURRENT": "4",
        # Everything the SDK and we would log, to prove no token is among it.
        "MCP_SANDBOX_LOG_LEVEL": "DEBUG",
    }
    with http_server(tmp, env) as s:
        yield s


@pytest.mark.parametrize("mode", MODES)
async def test_tools_work_with_a_token(server: HttpServer, mode: str) -> None:
    async with http_client(server.url, ALICE, mode=mode) as client:
        result = await call(client, "run_code", language="python", code="print(6*7)")
        assert (result["exit_code"], result["stdout"]) == (0, "42\n")
        result = await call(client, "shell", command="echo out; exit 3")
        assert (result["exit_code"], result["stdout"]) == (3, "out\n")


@pytest.mark.parametrize("token", [None, "wrong-" + "x" * 40, ALICE[:-1], BOB + "x"])
async def test_no_token_or_a_wrong_one_is_401(server: HttpServer, token: str | None) -> None:
    headers = dict(JSON_HEADERS)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx2.AsyncClient() as http:
        response = await http.post(server.url, json=INITIALIZE, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"]["message"] == "missing or invalid bearer token"


async def test_the_sdk_client_without_a_token_cannot_connect(server: HttpServer) -> None:
    refused = pytest.RaisesExc(MCPError, match="missing or invalid bearer token")
    with pytest.RaisesGroup(refused, allow_unwrapped=True, flatten_subgroups=True):
        async with http_client(server.url, None, mode="legacy"):
            pass


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://localhost.evil:1"])
async def test_a_bad_origin_is_refused_even_with_a_token(server: HttpServer, origin: str) -> None:
    headers = {**JSON_HEADERS, "Authorization": f"Bearer {ALICE}", "Origin": origin}
    async with httpx2.AsyncClient() as http:
        response = await http.post(server.url, json=INITIALIZE, headers=headers)
    assert response.status_code == 403


async def test_a_rebound_host_name_is_refused(server: HttpServer) -> None:
    headers = {
        **JSON_HEADERS,
        "Authorization": f"Bearer {ALICE}",
        "Host": f"attacker.example:{server.port}",
    }
    async with httpx2.AsyncClient() as http:
        response = await http.post(server.url, json=INITIALIZE, headers=headers)
    assert response.status_code == 421


@pytest.mark.parametrize("host", ["127.0.0.1:{port}@attacker.example", "localhost:{port}.evil"])
async def test_a_host_with_more_than_a_port_after_the_name_is_refused(
    server: HttpServer, host: str
) -> None:
    """The SDK matches ``127.0.0.1:*`` by prefix; the port must be digits and end the value."""
    headers = {
        **JSON_HEADERS,
        "Authorization": f"Bearer {ALICE}",
        "Host": host.format(port=server.port),
    }
    async with httpx2.AsyncClient() as http:
        response = await http.post(server.url, json=INITIALIZE, headers=headers)
    assert response.status_code == 421


async def _open_stream(
    http: httpx2.AsyncClient, streams: contextlib.AsyncExitStack, url: str, token: str
) -> int:
    """A new session's GET stream, held open until ``streams`` closes; its status."""
    opened = await http.post(
        url, json=INITIALIZE, headers={**JSON_HEADERS, "Authorization": f"Bearer {token}"}
    )
    assert opened.status_code == 200
    headers = {
        "Accept": "text/event-stream",
        "Authorization": f"Bearer {token}",
        "Mcp-Session-Id": opened.headers["mcp-session-id"],
        "Mcp-Protocol-Version": "2025-06-18",
    }
    response = await streams.enter_async_context(http.stream("GET", url, headers=headers))
    if response.status_code != 200:
        await response.aread()
    return int(response.status_code)


async def test_a_token_holds_a_bounded_number_of_streams(server: HttpServer) -> None:
    """Idle GET streams of one token cannot take the server's connections from the others."""
    health = f"http://127.0.0.1:{server.port}/healthz"
    bob = {**JSON_HEADERS, "Authorization": f"Bearer {BOB}"}
    async with httpx2.AsyncClient(timeout=30) as http:
        async with contextlib.AsyncExitStack() as streams:
            for _ in range(MAX_STREAMS_PER_TOKEN):
                assert await _open_stream(http, streams, server.url, ALICE) == 200
            one_more = contextlib.AsyncExitStack()
            async with one_more:
                assert await _open_stream(http, one_more, server.url, ALICE) == 429
            assert (await http.post(server.url, json=INITIALIZE, headers=bob)).status_code == 200
            assert (await http.get(health)).status_code == 200
        # The server sees the streams close and gives their slots back.
        with anyio.fail_after(20):
            while True:
                async with contextlib.AsyncExitStack() as again:
                    if await _open_stream(http, again, server.url, ALICE) == 200:
                        break
                await anyio.sleep(0.2)


async def test_two_clients_at_once_each_get_their_own_results(server: HttpServer) -> None:
    results: dict[str, dict[str, object]] = {}

    async def run(name: str, token: str) -> None:
        async with http_client(server.url, token) as client:
            results[name] = await call(
                client, "shell", command=f"sleep 1; echo I am {name}; echo {name} >&2"
            )

    started = anyio.current_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "alice", ALICE)
        tg.start_soon(run, "bob", BOB)
    elapsed = anyio.current_time() - started
    for name in ("alice", "bob"):
        assert results[name]["stdout"] == f"I am {name}\n"
        assert results[name]["stderr"] == f"{name}\n"
    assert results["alice"]["run_id"] != results["bob"]["run_id"]
    assert elapsed < 4, "the two calls ran one after the other"


async def test_a_token_past_its_limit_is_told_to_retry(server: HttpServer) -> None:
    outcomes: list[str] = []

    async def slow(client: object) -> None:
        assert hasattr(client, "call_tool")
        try:
            result = await client.call_tool("shell", {"command": "sleep 2; echo done"})
            outcomes.append(result.structured_content["stdout"])
        except MCPError as e:
            outcomes.append(str(e))

    async with http_client(server.url, ALICE) as client:
        await client.list_tools()  # so no listing runs beside the calls
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(slow, client)
    assert sorted(outcomes)[:2] == ["done\n", "done\n"], outcomes
    assert "2 requests in flight" in sorted(outcomes)[2]


async def test_a_session_belongs_to_the_token_that_opened_it(server: HttpServer) -> None:
    async with httpx2.AsyncClient() as http:
        alice = {**JSON_HEADERS, "Authorization": f"Bearer {ALICE}"}
        opened = await http.post(server.url, json=INITIALIZE, headers=alice)
        session = opened.headers["mcp-session-id"]
        listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        headers = {
            **JSON_HEADERS,
            "Authorization": f"Bearer {BOB}",
            "Mcp-Session-Id": session,
            "Mcp-Protocol-Version": "2025-06-18",
        }
        response = await http.post(server.url, json=listing, headers=headers)
    assert response.status_code == 404


def test_beyond_loopback_it_refuses_to_start_without_tokens(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*SERVE_HTTP, "--host", "0.0.0.0", "--port", "1"],
        env=dict(server_params().env or {}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "refusing to listen on 0.0.0.0" in proc.stderr
    assert "bearer tokens" in proc.stderr and "launcher_socket" in proc.stderr


def test_tokens_never_reach_the_logs(server: HttpServer) -> None:
    """Runs last in this module: every request above has been logged by now."""
    log = server.log_text()
    access = (Path(server.log).parent / "access.jsonl").read_text()
    assert "DEBUG" in log  # the most talkative level was on
    for token in (ALICE, BOB):
        assert token not in log and token not in access
        assert token[8:30] not in log and token[8:30] not in access
    callers = {json.loads(line)["caller"] for line in access.splitlines()}
    assert callers == {"alice", "bob", None}
