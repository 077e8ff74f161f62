"""mcp-sandbox's egress proxy: the only way out of an "egress" sandbox.

Standard library only; every decision is a function of ``egress_policy`` (copied in beside
this file at image build). One process, asyncio, no TLS termination:

- ``CONNECT host:port``: the name must be allowlisted and the port a TLS port. The proxy
  resolves the name once, checks every address, answers 200, reads the ClientHello, checks
  that its SNI is the same host, and only then connects to the checked address.
- ``GET http://host[:port]/...``: the same checks for HTTP ports; one request per
  connection, re-written to origin-form with our own Host header.
- Every request must carry a live per-call credential (``run_id:password`` in the proxy
  URL), so each decision is attributed to the call that made it and no other container can
  use the proxy. The server takes a call's tally over the control socket (``docker exec``
  of ``egress_proxy.py ctl take RUN DEADLINE``), which also closes the credential.

Run: ``egress_proxy.py serve`` (config in MCP_SANDBOX_EGRESS_CONFIG, key in
MCP_SANDBOX_EGRESS_KEY) or ``egress_proxy.py ctl ping|take RUN DEADLINE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import egress_policy as ep

CONTROL_SOCKET = "/run/egress/control.sock"
HEAD_TIMEOUT_S = 15.0
HELLO_TIMEOUT_S = 15.0
RESOLVE_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 120.0
MAX_CONNECTIONS = 1024
MAX_CONNECTIONS_PER_RUN = 64
# Before a request is read it has no credential; its peer address stands for its call (each
# call has a network of its own), so one sandbox cannot hold every slot with idle sockets.
MAX_CONNECTIONS_PER_PEER = 128
MAX_DENIALS_KEPT = 20
CHUNK = 65_536


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Tally:
    deadline: int
    allowed: int = 0
    denied: list[str] = field(default_factory=list)
    more_denied: int = 0
    active: int = 0

    def deny(self, entry: str) -> None:
        if entry in self.denied:
            return
        if len(self.denied) < MAX_DENIALS_KEPT:
            self.denied.append(entry)
        else:
            self.more_denied += 1

    def report(self) -> dict[str, object]:
        denied = list(self.denied)
        if self.more_denied:
            denied.append(f"... and {self.more_denied} more")
        return {"allowed": self.allowed, "denied": denied}


class Refused(Exception):
    """A policy refusal: attributed to the call, answered 403 (or the tunnel is cut)."""

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(f"{target} ({reason})")


class Proxy:
    def __init__(self, rules: ep.ProxyRules, key: bytes) -> None:
        self.rules = rules
        self.key = key
        self.tallies: dict[str, Tally] = {}
        self.closed: dict[str, int] = {}
        self.active = 0
        self.per_peer: dict[str, int] = {}

    # --- control ---------------------------------------------------------------------

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            words = (await asyncio.wait_for(reader.readline(), 5)).decode().split()
            if words == ["ping"]:
                reply: dict[str, object] = {"ok": True}
            elif len(words) == 3 and words[0] == "take" and words[2].isdigit():
                reply = self.take(words[1], int(words[2]))
            else:
                reply = {"error": "unknown command"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, OSError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    def take(self, run_id: str, deadline: int) -> dict[str, object]:
        """The call's tally; from now on its credential is refused."""
        now = time.time()
        self.closed = {r: d for r, d in self.closed.items() if d >= now}
        self.closed[run_id] = max(deadline, self.closed.get(run_id, 0))
        tally = self.tallies.pop(run_id, None)
        # Tallies of calls whose server never came back for them.
        for stale in [r for r, t in self.tallies.items() if t.deadline < now - 3600]:
            del self.tallies[stale]
        return tally.report() if tally else {"allowed": 0, "denied": []}

    # --- requests --------------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str((writer.get_extra_info("peername") or ("?",))[0])
        if self.active >= MAX_CONNECTIONS or self.per_peer.get(peer, 0) >= MAX_CONNECTIONS_PER_PEER:
            writer.close()
            return
        self.active += 1
        self.per_peer[peer] = self.per_peer.get(peer, 0) + 1
        tally: Tally | None = None
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
            req = ep.parse_request_head(head)
            tally = self.authenticate(req)
            if tally is None:
                await self.answer(
                    writer,
                    407,
                    "Proxy Authentication Required",
                    extra='Proxy-Authenticate: Basic realm="mcp-sandbox"\r\n',
                )
                return
            if tally.active >= MAX_CONNECTIONS_PER_RUN:
                await self.answer(writer, 503, "Service Unavailable", "too many connections")
                return
            tally.active += 1
            try:
                if req.method == "CONNECT":
                    await self.tunnel(req, tally, reader, writer)
                else:
                    await self.forward(req, tally, reader, writer)
            finally:
                tally.active -= 1
        except Refused as e:
            assert tally is not None
            tally.deny(str(e))
            log(f"deny {e}")
            with contextlib.suppress(OSError, RuntimeError):
                await self.answer(writer, 403, "Forbidden", f"egress refused: {e}")
        except ep.BadRequest as e:
            with contextlib.suppress(OSError, RuntimeError):
                await self.answer(writer, 400, "Bad Request", str(e))
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.active -= 1
            self.per_peer[peer] -= 1
            if not self.per_peer[peer]:
                del self.per_peer[peer]
            writer.close()

    def authenticate(self, req: ep.ProxyRequest) -> Tally | None:
        value = req.header("proxy-authorization")
        creds = ep.basic_credentials(value) if value else None
        if creds is None:
            return None
        checked = ep.check_credentials(self.key, creds[0], creds[1], time.time())
        if checked is None or checked[0] in self.closed:
            return None
        run_id, deadline = checked
        tally = self.tallies.get(run_id)
        if tally is None:
            tally = self.tallies[run_id] = Tally(deadline)
        return tally

    async def answer(
        self, writer: asyncio.StreamWriter, code: int, reason: str, body: str = "", extra: str = ""
    ) -> None:
        data = (body + "\n").encode("ascii", "replace")
        writer.write(
            f"HTTP/1.1 {code} {reason}\r\n{extra}Content-Type: text/plain\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        await writer.drain()

    async def checked_addresses(self, req: ep.ProxyRequest, *, tls: bool) -> tuple[str, list[str]]:
        """The canonical host and the addresses checked for it. Raises Refused."""
        target = ep.display_target(req.host, req.port)
        refusal = self.rules.target_refusal(req.host, req.port, tls=tls)
        if refusal is not None:
            raise Refused(target, refusal)
        host = ep.normalize_host(req.host)
        assert host is not None
        addresses = await self.resolve(host, req.port)
        if not addresses:
            raise Refused(target, "does not resolve")
        for address in addresses:
            refusal = ep.address_refusal(address, self.rules.opened)
            if refusal is not None:
                raise Refused(target, refusal)
        return host, addresses

    async def resolve(self, host: str, port: int) -> list[str]:
        """Resolve once; the caller checks and connects to exactly these addresses."""
        static = self.rules.hosts.get(host)
        if static is not None:
            return [static]
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP),
                RESOLVE_TIMEOUT_S,
            )
        except (TimeoutError, OSError):
            return []
        seen: list[str] = []
        for family, *_, sockaddr in infos:
            if family in (socket.AF_INET, socket.AF_INET6) and sockaddr[0] not in seen:
                seen.append(str(sockaddr[0]))
        return seen

    async def connect(
        self, addresses: list[str], port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for address in addresses:
            try:
                return await asyncio.wait_for(
                    asyncio.open_connection(address, port, limit=CHUNK), CONNECT_TIMEOUT_S
                )
            except (TimeoutError, OSError):
                continue
        return None

    async def tunnel(
        self,
        req: ep.ProxyRequest,
        tally: Tally,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        host, addresses = await self.checked_addresses(req, tls=True)
        target = ep.display_target(host, req.port)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        hello = b""
        try:
            async with asyncio.timeout(HELLO_TIMEOUT_S):
                while (name := ep.client_hello_server_name(hello)) is None:
                    chunk = await reader.read(CHUNK)
                    if not chunk:
                        return
                    hello += chunk
        except ep.HelloRefused as e:
            self.cut(tally, target, str(e))
            return
        if name != host:
            self.cut(tally, target, f"TLS SNI names {name}")
            return
        upstream = await self.connect(addresses, req.port)
        tally.allowed += 1
        if upstream is None:
            log(f"allow {target}: upstream unreachable")
            return
        log(f"allow {target}")
        up_reader, up_writer = upstream
        up_writer.write(hello)
        await self.splice(reader, writer, up_reader, up_writer, tally.deadline)

    def cut(self, tally: Tally, target: str, reason: str) -> None:
        entry = f"{target} ({reason})"
        tally.deny(entry)
        log(f"deny {entry}")

    async def forward(
        self,
        req: ep.ProxyRequest,
        tally: Tally,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        host, addresses = await self.checked_addresses(req, tls=False)
        target = ep.display_target(host, req.port)
        refusal = ep.host_header_refusal(req, host)
        if refusal is not None:
            raise Refused(target, refusal)
        body_left = ep.request_body_length(req)
        upstream = await self.connect(addresses, req.port)
        tally.allowed += 1
        if upstream is None:
            log(f"allow {target}: upstream unreachable")
            await self.answer(writer, 502, "Bad Gateway", f"{target} did not answer")
            return
        log(f"allow {target}")
        up_reader, up_writer = upstream
        try:
            up_writer.write(ep.upstream_head(req, host, body_left))
            while body_left:
                chunk = await asyncio.wait_for(reader.read(min(body_left, CHUNK)), IDLE_TIMEOUT_S)
                if not chunk:
                    return
                body_left -= len(chunk)
                up_writer.write(chunk)
                await up_writer.drain()
            # One request per connection: the client's further bytes are never read.
            while chunk := await asyncio.wait_for(up_reader.read(CHUNK), IDLE_TIMEOUT_S):
                writer.write(chunk)
                await writer.drain()
        finally:
            up_writer.close()

    async def splice(
        self,
        a_reader: asyncio.StreamReader,
        a_writer: asyncio.StreamWriter,
        b_reader: asyncio.StreamReader,
        b_writer: asyncio.StreamWriter,
        deadline: int,
    ) -> None:
        last = time.monotonic()

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            nonlocal last
            with contextlib.suppress(OSError):
                while chunk := await r.read(CHUNK):
                    last = time.monotonic()
                    w.write(chunk)
                    await w.drain()
                if w.can_write_eof():
                    w.write_eof()

        async def watchdog() -> None:
            # Polls a clock, not an event: idleness is the absence of events.
            while time.monotonic() - last < IDLE_TIMEOUT_S and time.time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(5)

        pipes = asyncio.gather(pipe(a_reader, b_writer), pipe(b_reader, a_writer))
        dog = asyncio.ensure_future(watchdog())
        try:
            await asyncio.wait({pipes, dog}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            pipes.cancel()
            dog.cancel()
            b_writer.close()
            with contextlib.suppress(BaseException):
                await pipes


async def serve() -> None:
    rules = ep.ProxyRules.from_json(json.loads(os.environ["MCP_SANDBOX_EGRESS_CONFIG"]))
    key = bytes.fromhex(os.environ["MCP_SANDBOX_EGRESS_KEY"])
    proxy = Proxy(rules, key)
    os.makedirs(os.path.dirname(CONTROL_SOCKET), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(CONTROL_SOCKET)
    control = await asyncio.start_unix_server(proxy.control, path=CONTROL_SOCKET)
    server = await asyncio.start_server(
        proxy.handle,
        host="0.0.0.0",
        port=ep.PROXY_PORT,
        limit=ep.MAX_HEAD_BYTES,
        family=socket.AF_INET,
        backlog=256,
    )
    log(f"egress proxy ready on :{ep.PROXY_PORT}; allow {', '.join(rules.allow) or 'nothing'}")
    async with control, server:
        await server.serve_forever()


def ctl(words: list[str]) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        try:
            s.connect(CONTROL_SOCKET)
            s.sendall((" ".join(words) + "\n").encode())
            data = b""
            while chunk := s.recv(CHUNK):
                data += chunk
        except OSError as e:
            print(json.dumps({"error": str(e)}))
            return 1
    sys.stdout.write(data.decode())
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["ctl"]:
        return ctl(argv[1:])
    if argv[:1] in ([], ["serve"]):
        asyncio.run(serve())
        return 0
    print("usage: egress_proxy.py serve | ctl ping | ctl take RUN DEADLINE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
