"""The HTTP gate in front of the SDK: tokens, per-token limits, the access log, exposure."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import anyio
import pytest
from starlette.types import Message, Receive, Scope, Send

from mcp_sandbox.config.http import HttpSettings, is_loopback
from mcp_sandbox.config.settings import Settings
from mcp_sandbox.errors import ConfigError
from mcp_sandbox.transport.auth import TokenSet, hash_entry, parse_entry
from mcp_sandbox.transport.http_gate import (
    AccessLog,
    Gate,
    build_app,
    check_exposure,
    rpc_summary,
    transport_security,
)
from mcp_sandbox.transport.launcher import LauncherClient

ALICE = "alice-token-" + "a" * 30
BOB = "bob-token-" + "b" * 30
TOKENS = TokenSet([parse_entry(hash_entry("alice", ALICE), "x"), parse_entry(f"bob:{BOB}", "y")])
CALL = json.dumps(
    {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "shell"}}
).encode()


class FakeApp:
    """Stands for the SDK's app: answers 200, or waits for ``release`` first."""

    def __init__(self) -> None:
        self.seen: list[Scope] = []
        self.release = anyio.Event()
        self.block = False
        self.entered = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append(scope)
        self.entered += 1
        while (await receive()).get("more_body"):
            pass
        if self.block:
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


async def request(
    gate: Gate,
    token: str | None = None,
    *,
    method: str = "POST",
    path: str = "/mcp",
    body: bytes = CALL,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[Message] = []
    hdrs = list(headers or [])
    if token is not None:
        hdrs.append((b"authorization", f"Bearer {token}".encode()))
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": hdrs,
        "client": ("127.0.0.1", 5555),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await gate(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body_out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body_out


def _gate(app: FakeApp, limit: int = 2, log: AccessLog | None = None) -> Gate:
    return Gate(app, tokens=TOKENS, max_concurrent_per_token=limit, access_log=log)


async def test_no_token_is_401_with_a_bearer_challenge() -> None:
    app = FakeApp()
    status, headers, body = await request(_gate(app))
    assert status == 401
    assert headers[b"www-authenticate"] == b'Bearer realm="mcp-sandbox"'
    assert json.loads(body)["error"]["message"] == "missing or invalid bearer token"
    assert app.seen == []


@pytest.mark.parametrize("token", ["wrong-" + "x" * 40, ALICE[:-1], ALICE + "a", ""])
async def test_a_wrong_token_is_401_invalid_token(token: str) -> None:
    app = FakeApp()
    status, headers, _ = await request(_gate(app), token)
    assert status == 401 and app.seen == []
    if token:
        assert b'error="invalid_token"' in headers[b"www-authenticate"]


async def test_a_valid_token_reaches_the_app_as_its_name() -> None:
    app = FakeApp()
    assert (await request(_gate(app), ALICE))[0] == 200
    assert (await request(_gate(app), BOB))[0] == 200
    assert [s["user"].username for s in app.seen] == ["alice", "bob"]


async def test_health_needs_no_token_and_reveals_nothing() -> None:
    app = FakeApp()
    status, _, body = await request(_gate(app), method="GET", path="/healthz", body=b"")
    assert (status, body) == (200, b'{"status":"ok"}') and app.seen == []


async def test_past_its_limit_a_token_gets_429_and_other_tokens_do_not() -> None:
    app = FakeApp()
    app.block = True
    gate = _gate(app, limit=2)
    results: list[int] = []

    async def call(token: str) -> None:
        results.append((await request(gate, token))[0])

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, ALICE)
        tg.start_soon(call, ALICE)
        with anyio.fail_after(5):
            while app.entered < 2:  # noqa: ASYNC110  # the fake app counts entries
                await anyio.sleep(0.01)
        status, headers, body = await request(gate, ALICE)
        assert status == 429 and headers[b"retry-after"] == b"1"
        assert "2 requests in flight" in json.loads(body)["error"]["message"]
        tg.start_soon(call, BOB)  # another token is not held back
        with anyio.fail_after(5):
            while app.entered < 3:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        app.release.set()
    assert results == [200, 200, 200]
    assert gate.in_flight == {}
    assert (await request(gate, ALICE))[0] == 200  # the slots came back


async def _wait_entered(app: FakeApp, n: int) -> None:
    with anyio.fail_after(5):
        while app.entered < n:  # noqa: ASYNC110  # the fake app counts entries
            await anyio.sleep(0.01)


async def test_get_streams_have_their_own_limit_beside_requests_in_flight() -> None:
    app = FakeApp()
    app.block = True
    gate = Gate(app, tokens=TOKENS, max_concurrent_per_token=1, max_streams_per_token=2)
    get = functools.partial(request, gate, method="GET", body=b"")
    async with anyio.create_task_group() as tg:
        tg.start_soon(get, ALICE)
        tg.start_soon(get, ALICE)
        await _wait_entered(app, 2)
        with anyio.fail_after(5):  # a third stream let through would wait for release
            status, headers, body = await get(ALICE)
        assert status == 429 and headers[b"retry-after"] == b"1"
        assert "2 GET streams open" in json.loads(body)["error"]["message"]
        tg.start_soon(request, gate, ALICE)  # a call still fits beside the streams
        tg.start_soon(get, BOB)  # and another token's stream
        await _wait_entered(app, 4)
        assert gate.streams == {"alice": 2, "bob": 1} and gate.in_flight == {"alice": 1}
        app.release.set()
    assert gate.streams == {} and gate.in_flight == {}
    assert (await get(ALICE))[0] == 200  # the slots came back


@pytest.mark.parametrize("method", ["DELETE", "PUT", "HEAD"])
async def test_every_other_method_counts_as_a_request_in_flight(method: str) -> None:
    app = FakeApp()
    app.block = True
    gate = _gate(app, limit=1)
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(request, gate, ALICE, method=method, body=b""))
        await _wait_entered(app, 1)
        with anyio.fail_after(5):  # a request let through would wait for release
            assert (await request(gate, ALICE))[0] == 429
        app.release.set()


@pytest.mark.parametrize(
    "host",
    [
        b"127.0.0.1:18765@evil.example",
        b"127.0.0.1:1.evil.example",
        b"localhost:80/x",
        b"localhost:",
        b"evil.example:80 127.0.0.1:80",
        b"[::1]:8000@evil.example",
    ],
)
async def test_a_host_header_with_more_than_a_port_is_421(host: bytes) -> None:
    app = FakeApp()
    status, _, body = await request(_gate(app), ALICE, headers=[(b"host", host)])
    assert status == 421 and app.seen == []
    assert json.loads(body)["error"]["message"] == "invalid Host header"


@pytest.mark.parametrize(
    "host", [b"127.0.0.1:8000", b"localhost", b"[::1]:8000", b"mcp.example.com", b"a_b.test:1"]
)
async def test_a_plain_host_header_reaches_the_app(host: bytes) -> None:
    app = FakeApp()
    assert (await request(_gate(app), ALICE, headers=[(b"host", host)]))[0] == 200


async def test_the_access_log_names_the_caller_never_the_token(tmp_path: Path) -> None:
    access_log = AccessLog(tmp_path / "logs" / "access.jsonl")
    gate = _gate(FakeApp(), log=access_log)
    await request(gate, ALICE)
    await request(gate, "wrong-" + ALICE)
    await request(gate, None)
    access_log.close()
    text = (tmp_path / "logs" / "access.jsonl").read_text()
    assert ALICE not in text and "wrong-" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [(r["caller"], r["status"]) for r in lines] == [("alice", 200), (None, 401), (None, 401)]
    assert lines[0]["rpc"] == "tools/call" and lines[0]["tool"] == "shell"
    assert "rpc" not in lines[1]  # an unauthenticated body is not even read


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (CALL, {"rpc": "tools/call", "tool": "shell"}),
        (b'{"method":"initialize","params":{"name":"x"}}', {"rpc": "initialize"}),
        (b"[1,2]", {}),
        (b"not json", {}),
        (b"[" * 50_000, {}),
        (b'{"method": 5}', {}),
        (json.dumps({"method": "m" * 500}).encode(), {"rpc": "m" * 80}),
    ],
)
def test_the_log_reads_only_the_method_and_tool(body: bytes, expected: dict[str, str]) -> None:
    assert rpc_summary(body) == expected


# --- where it may listen ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("localhost.example.com", False),
        ("example.com", False),
    ],
)
def test_what_counts_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_loopback_needs_nothing_more() -> None:
    check_exposure(HttpSettings(), None, None)


@pytest.mark.parametrize(
    ("tokens", "hosts", "launcher", "missing"),
    [
        (None, ("mcp.example.com:*",), Path("/l.sock"), "bearer tokens"),
        (TOKENS, (), Path("/l.sock"), "allowed_hosts"),
        (TOKENS, ("mcp.example.com:*",), None, "launcher_socket"),
        (None, (), None, "bearer tokens"),
    ],
)
def test_beyond_loopback_tokens_hosts_and_a_launcher_are_required(
    tokens: TokenSet | None, hosts: tuple[str, ...], launcher: Path | None, missing: str
) -> None:
    http = HttpSettings(host="0.0.0.0", allowed_hosts=hosts)
    with pytest.raises(ConfigError, match=missing):
        check_exposure(http, tokens, launcher)


def test_beyond_loopback_with_all_three_it_listens() -> None:
    http = HttpSettings(host="0.0.0.0", allowed_hosts=("mcp.example.com:*",))
    check_exposure(http, TOKENS, Path("/l.sock"))


def test_the_app_refuses_to_build_on_an_open_address_without_tokens() -> None:
    settings = Settings(http=HttpSettings(host="0.0.0.0", allowed_hosts=("h:*",)))
    with pytest.raises(ConfigError, match=r"refusing to listen on 0\.0\.0\.0"):
        build_app(settings, LauncherClient(Path("/nonexistent.sock")))


def test_host_and_origin_checks_are_always_explicit() -> None:
    local = transport_security(HttpSettings())
    assert local.enable_dns_rebinding_protection
    assert "127.0.0.1:*" in local.allowed_hosts and local.allowed_origins == []
    public = transport_security(
        HttpSettings(
            host="0.0.0.0",
            allowed_hosts=("mcp.example.com",),
            allowed_origins=("https://app.example.com",),
        )
    )
    assert public.enable_dns_rebinding_protection
    assert public.allowed_hosts == ["mcp.example.com"]
    assert public.allowed_origins == ["https://app.example.com"]
