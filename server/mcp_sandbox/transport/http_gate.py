"""Streamable HTTP: the SDK's transport behind a gate (bearer tokens, per-token limits, and
an access log that names each request's token).

The gate runs before the SDK sees a request: ``/healthz`` answers without a token; anything
else needs a valid bearer token (when tokens are configured), gets 401 without one, 421 for a
Host header that is not ``name[:port]``, and 429 past its token's limits: requests in flight
(``max_concurrent_per_token``; every method but GET) and GET streams open (at most
``MAX_STREAMS_PER_TOKEN``; a session holds one while it waits for server messages). Every
request a token makes counts against one of the two, so no token can hold uvicorn's
``limit_concurrency`` slots and lock out the other tokens and ``/healthz``. Then the SDK checks
Host and Origin against explicit transport-security settings: the SDK only checks them by
itself on loopback.
"""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.transport_security import TransportSecuritySettings
from starlette.authentication import AuthCredentials
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_sandbox.config.http import LOOPBACK_HOSTS, HttpSettings, is_loopback
from mcp_sandbox.config.settings import Settings
from mcp_sandbox.errors import ConfigError
from mcp_sandbox.oversight.metrics import CallMetrics, serve_metrics
from mcp_sandbox.transport.auth import TokenSet, bearer_token, load_tokens
from mcp_sandbox.transport.call_runner import CallRunner

log = logging.getLogger("mcp_sandbox.http")

ANONYMOUS = "anonymous"
HEALTH_PATH = "/healthz"
# The SDK refuses bodies above 4 MiB; the access log reads the JSON-RPC method from at most that.
_LOGGED_BODY_BYTES = 4 * 1024 * 1024
_UNAUTHORIZED_MESSAGE = "missing or invalid bearer token"
# uvicorn answers 503 past this many connections, /healthz included.
LIMIT_CONCURRENCY = 1024
# GET streams one token may hold open: the SDK allows one a session. With the largest
# max_concurrent_per_token (256), one token still holds under a third of LIMIT_CONCURRENCY.
MAX_STREAMS_PER_TOKEN = 32
# The SDK matches an allowed ``name:*`` by prefix, so ``127.0.0.1:1@evil.example`` would pass
# it: the port must be digits.
_HOST_HEADER = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::[0-9]{1,5})?\Z")


def check_exposure(http: HttpSettings, tokens: TokenSet | None, launcher: Path | None) -> None:
    """Refuse to listen beyond loopback without what makes that safe. Raises ConfigError."""
    if http.on_loopback:
        return
    missing = []
    if tokens is None:
        missing.append("bearer tokens (http.tokens_file or http.tokens)")
    if not http.allowed_hosts:
        missing.append("http.allowed_hosts (the Host names clients use)")
    if launcher is None:
        missing.append("launcher_socket (the server must not hold the Docker API itself)")
    if missing:
        raise ConfigError(
            f"refusing to listen on {http.host}: beyond loopback the server needs "
            + "; ".join(missing)
        )


def transport_security(http: HttpSettings) -> TransportSecuritySettings:
    """Explicit Host/Origin checks, on every address (the SDK's own only cover loopback)."""
    hosts = list(http.allowed_hosts)
    if http.on_loopback:
        hosts += [h for h in LOOPBACK_HOSTS if h not in hosts]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        allowed_origins=list(http.allowed_origins),
    )


class AccessLog:
    """One JSON line per request: who (the token's name, never the token), what, outcome."""

    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8", buffering=1)
        except OSError as e:
            raise ConfigError(f"cannot open access log {path}: {e.strerror}") from None

    def write(self, record: dict[str, Any]) -> None:
        try:
            self._file.write(json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n")
        except OSError:
            log.exception("cannot write the access log")

    def close(self) -> None:
        self._file.close()


def rpc_summary(body: bytes) -> dict[str, str]:
    """The JSON-RPC method (and tool name) of a request body, for the log; never its args."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    out: dict[str, str] = {}
    method = data.get("method")
    if isinstance(method, str):
        out["rpc"] = method[:80]
    params = data.get("params")
    if method == "tools/call" and isinstance(params, dict) and isinstance(params.get("name"), str):
        out["tool"] = params["name"][:80]
    return out


class Gate:
    """ASGI middleware in front of the SDK's app. See the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        tokens: TokenSet | None,
        max_concurrent_per_token: int,
        max_streams_per_token: int = MAX_STREAMS_PER_TOKEN,
        access_log: AccessLog | None = None,
        metrics: CallMetrics | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics  # served on a listener of its own, never here
        self.tokens = tokens
        self.limit = max_concurrent_per_token
        self.stream_limit = max_streams_per_token
        self.access_log = access_log
        self.in_flight: dict[str, int] = {}  # requests in flight, by token name
        self.streams: dict[str, int] = {}  # GET streams open, by token name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            return  # no websockets: closing without accepting refuses them
        if scope["path"] == HEALTH_PATH and scope["method"] in ("GET", "HEAD"):
            await _respond(send, 200, b'{"status":"ok"}')
            return
        started = time.monotonic()
        body = bytearray()
        status = 0

        async def keep_body() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) <= _LOGGED_BODY_BYTES:
                body.extend(message.get("body", b""))
            return message

        async def watch_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        caller = self._caller(scope)
        try:
            if caller is None:
                await _unauthorized(watch_status, presented=_has_authorization(scope))
                return
            if not _host_well_formed(scope):
                await _respond(watch_status, 421, _jsonrpc_error(-32000, "invalid Host header"))
                return
            if scope["method"] == "GET":
                counts, limit = self.streams, self.stream_limit
                refusal = f"this token already has {limit} GET streams open; end a session first"
            else:
                counts, limit = self.in_flight, self.limit
                refusal = f"this token already has {limit} requests in flight; retry when one ends"
            if counts.get(caller, 0) >= limit:
                await _too_many(watch_status, refusal)
                return
            counts[caller] = counts.get(caller, 0) + 1
            try:
                # The SDK binds a session to the principal that opened it: another token
                # cannot use it.
                user = AuthenticatedUser(AccessToken(token="-", client_id=caller, scopes=[]))
                inner = {**scope, "user": user, "auth": AuthCredentials([])}
                await self.app(inner, keep_body, watch_status)
            finally:
                counts[caller] -= 1
                if not counts[caller]:
                    del counts[caller]
        finally:
            if self.access_log is not None:
                self._log(scope, caller, status, started, bytes(body))

    def _caller(self, scope: Scope) -> str | None:
        if self.tokens is None:
            return ANONYMOUS
        return self.tokens.verify(bearer_token(scope["headers"]))

    def _log(
        self, scope: Scope, caller: str | None, status: int, started: float, body: bytes
    ) -> None:
        assert self.access_log is not None
        client = scope.get("client")
        record: dict[str, Any] = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "caller": caller,
            "client": client[0] if client else None,
            "method": scope["method"],
            "path": str(scope["path"])[:200],
            "status": status,
            "ms": int((time.monotonic() - started) * 1000),
        }
        if body and len(body) <= _LOGGED_BODY_BYTES and caller is not None:
            record.update(rpc_summary(body))
        self.access_log.write(record)


def _has_authorization(scope: Scope) -> bool:
    return any(k.lower() == b"authorization" for k, _ in scope["headers"])


def _host_well_formed(scope: Scope) -> bool:
    """Whether every Host header is ``name[:port]``; a missing one is left to the SDK."""
    return all(
        _HOST_HEADER.match(v.decode("latin-1")) for k, v in scope["headers"] if k.lower() == b"host"
    )


def _jsonrpc_error(code: int, message: str) -> bytes:
    error = {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}
    return json.dumps(error, separators=(",", ":")).encode()


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _unauthorized(send: Send, *, presented: bool) -> None:
    challenge = b'Bearer realm="mcp-sandbox"' + (b', error="invalid_token"' if presented else b"")
    await _respond(
        send,
        401,
        _jsonrpc_error(-32001, _UNAUTHORIZED_MESSAGE),
        [(b"www-authenticate", challenge)],
    )


async def _too_many(send: Send, message: str) -> None:
    await _respond(send, 429, _jsonrpc_error(-32000, message), [(b"retry-after", b"1")])


def build_app(settings: Settings, runner: CallRunner) -> Gate:
    """The whole HTTP app: the SDK's streamable HTTP behind the gate. Raises ConfigError."""
    from mcp_sandbox.transport.tools import build_server

    http = settings.http
    tokens = load_tokens(http.tokens_file, [t.get_secret_value() for t in http.tokens])
    check_exposure(http, tokens, settings.launcher_socket)
    if tokens is not None and tokens.any_plain_at_rest:
        log.warning("some tokens are stored in plain text; prefer NAME:sha256:HEX entries")
    metrics = CallMetrics() if http.metrics_port is not None else None
    if metrics is not None:
        metrics.watch(runner.load)
    app = build_server(runner, metrics).streamable_http_app(
        streamable_http_path=http.path,
        transport_security=transport_security(http),
        host=http.host,
    )
    access_log = AccessLog(http.access_log) if http.access_log is not None else None
    return Gate(
        app,
        tokens=tokens,
        max_concurrent_per_token=http.max_concurrent_per_token,
        access_log=access_log,
        metrics=metrics,
    )


async def serve_http(settings: Settings, runner: CallRunner) -> None:
    """Serve until SIGTERM/SIGINT; the lifespan then removes this server's sandboxes."""
    gate = build_app(settings, runner)
    http = settings.http
    config = uvicorn.Config(
        gate,
        host=http.host,
        port=http.port,
        log_config=None,  # keep our handlers: one format, stderr
        log_level=settings.log_level.lower(),
        access_log=False,  # ours records requests by token name
        server_header=False,
        proxy_headers=False,  # X-Forwarded-* is attacker-written unless a proxy we know sets it
        timeout_graceful_shutdown=5,
        limit_concurrency=LIMIT_CONCURRENCY,
    )
    log.info(
        "serving streamable HTTP on %s:%d%s (%s)",
        http.host,
        http.port,
        http.path,
        "bearer tokens required" if gate.tokens else "no tokens: loopback only",
    )
    listener = None
    if gate.metrics is not None and http.metrics_port is not None:
        if not is_loopback(http.metrics_host):
            log.warning("metrics are served beyond loopback, without a token")
        listener = serve_metrics(gate.metrics, http.metrics_host, http.metrics_port)
        log.info("serving Prometheus metrics on %s:%d/metrics", http.metrics_host, listener.port)
    try:
        await uvicorn.Server(config).serve()
    finally:
        if listener is not None:
            listener.close()
        if gate.access_log is not None:
            gate.access_log.close()
