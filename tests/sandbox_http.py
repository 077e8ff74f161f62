"""How tests reach the sandbox over streamable HTTP: real processes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from sandbox_client import server_params

SERVE_HTTP = (sys.executable, "-m", "mcp_sandbox", "serve", "--transport", "http")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Process:
    proc: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass(frozen=True)
class HttpServer(Process):
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"


def wait_until(check: object, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll ``check()`` for up to 30 s; fail with the process's log if it dies or never is."""
    assert callable(check)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited {proc.returncode}:\n{log.read_text()}")
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} never came up:\n{log.read_text()}")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status) == 200
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def http_server(
    workdir: Path, env: Mapping[str, str] | None = None, args: Sequence[str] = ()
) -> Iterator[HttpServer]:
    """`mcp-sandbox serve --transport http` on a free loopback port, until the block ends."""
    port = free_port()
    log = workdir / f"server-{port}.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [*SERVE_HTTP, "--port", str(port), *args],
            env={**(server_params().env or {}), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        wait_until(
            lambda: healthy(f"http://127.0.0.1:{port}/healthz"), "the HTTP server", proc, log
        )
        yield HttpServer(proc, log, port)
    finally:
        _stop(proc)


@contextlib.contextmanager
def launcher(workdir: Path, env: Mapping[str, str] | None = None) -> Iterator[Path]:
    """`mcp-sandbox launcher serve` on a socket in ``workdir``; yields the socket path."""
    sock = workdir / "launcher.sock"
    log = workdir / "launcher.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mcp_sandbox", "launcher", "serve", "--socket", str(sock)],
            env={**(server_params().env or {}), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        wait_until(sock.exists, "the launcher", proc, log)
        yield sock
    finally:
        _stop(proc)


@contextlib.asynccontextmanager
async def http_client(
    url: str,
    token: str | None = None,
    *,
    mode: str = "auto",
    headers: Mapping[str, str] | None = None,
) -> AsyncIterator[Client]:
    """The SDK's Client over streamable HTTP, with a bearer token header."""
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    timeout = httpx2.Timeout(30, read=300)
    async with httpx2.AsyncClient(headers=all_headers, timeout=timeout) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode) as client:
            yield client
