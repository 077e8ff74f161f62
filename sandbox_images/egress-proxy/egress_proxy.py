"""mcp-sandbox's egress proxy: the only way out of an "egress" sandbox.

Standard library only; every decision is a function of ``egress_policy`` (copied in beside
this file at image build). One process, asyncio:

- ``CONNECT host:port``: the name must be allowlisted and the port a TLS port. The proxy
  resolves the name once, checks every address, answers 200, reads the ClientHello, checks
  that its SNI is the same host, and only then connects to the checked address.
- A host with a credential (``egress.credentials``) is the one exception: its CONNECT is
  terminated with a leaf certificate the server minted for that name (the server keeps the
  CA key), one request is read, the placeholder in the configured header is replaced with
  the real value, and the request goes on over TLS verified against the system roots (or
  the configured bundle). Every other host stays a tunnel the proxy cannot see into.
- A placeholder sent anywhere it does not belong (another host, any header, the URL, the
  first bytes of a body) is refused as "credential placeholder to another host".
- ``GET http://host[:port]/...``: the same checks for HTTP ports; one request per
  connection, re-written to origin-form with our own Host header.
- Every request must carry a live per-call credential (``run_id:password`` in the proxy
  URL), so each decision is attributed to the call that made it and no other container can
  use the proxy. The server takes a call's tally over the control socket (``docker exec``
  of ``egress_proxy.py ctl take RUN DEADLINE``), which also closes the credential.

Run: ``egress_proxy.py serve`` (config in MCP_SANDBOX_EGRESS_CONFIG, key in
MCP_SANDBOX_EGRESS_KEY, credentials and certificates in MCP_SANDBOX_EGRESS_SECRETS) or
``egress_proxy.py ctl ping|take RUN DEADLINE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
import sys
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import egress_policy as ep

CONTROL_SOCKET = "/run/egress/control.sock"
SECRETS_DIR = "/run/egress"
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
    run_id: str
    deadline: int
    allowed: int = 0
    denied: list[str] = field(default_factory=list)
    more_denied: int = 0
    active: int = 0
    credentials: set[str] = field(default_factory=set)

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
        return {"allowed": self.allowed, "denied": denied, "credentials": sorted(self.credentials)}


class Refused(Exception):
    """A policy refusal: attributed to the call, answered 403 (or the tunnel is cut)."""

    def __init__(self, target: str, reason: str) -> None:
        super().__init__(f"{target} ({reason})")


def answer_bytes(code: int, reason: str, body: str = "", extra: str = "") -> bytes:
    data = (body + "\n").encode("ascii", "replace")
    return (
        f"HTTP/1.1 {code} {reason}\r\n{extra}Content-Type: text/plain\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
        + data
    )


class TlsStream:
    """TLS over an asyncio stream pair (``ssl.MemoryBIO``), so the ClientHello the proxy
    already read and checked can be fed in first."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        context: ssl.SSLContext,
        *,
        server_hostname: str | None = None,
        first: bytes = b"",
    ) -> None:
        self.reader, self.writer = reader, writer
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(
            self.incoming,
            self.outgoing,
            server_side=server_hostname is None,
            server_hostname=server_hostname,
        )
        self.incoming.write(first)
        self.buffer = b""

    async def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def _fill(self) -> None:
        chunk = await self.reader.read(CHUNK)
        if chunk:
            self.incoming.write(chunk)
        else:
            self.incoming.write_eof()

    async def handshake(self) -> None:
        """Raises ssl.SSLError (a refused certificate among them)."""
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
        await self._flush()

    async def _read_tls(self) -> bytes:
        while True:
            try:
                data = self.tls.read(CHUNK)
                await self._flush()
                return data
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""

    async def read(self, n: int = CHUNK) -> bytes:
        if not self.buffer:
            self.buffer = await self._read_tls()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    async def readuntil(self, separator: bytes, limit: int) -> bytes:
        while separator not in self.buffer:
            if len(self.buffer) > limit:
                raise ep.BadRequest("head too long or unterminated")
            chunk = await self._read_tls()
            if not chunk:
                raise asyncio.IncompleteReadError(self.buffer, None)
            self.buffer += chunk
        end = self.buffer.index(separator) + len(separator)
        head, self.buffer = self.buffer[:end], self.buffer[end:]
        return head

    async def readexactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = await self._read_tls()
            if not chunk:
                raise asyncio.IncompleteReadError(self.buffer, n)
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    async def close(self) -> None:
        """Send close_notify; the peer's is not waited for."""
        with contextlib.suppress(ssl.SSLError):
            self.tls.unwrap()
        with contextlib.suppress(OSError):
            await self._flush()

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self.tls.write(view) :]
        await self._flush()


class Proxy:
    def __init__(
        self,
        rules: ep.ProxyRules,
        key: bytes,
        credentials: tuple[ep.CredentialRule, ...] = (),
        terminated: dict[str, ssl.SSLContext] | None = None,
        upstream_tls: ssl.SSLContext | None = None,
    ) -> None:
        self.rules = rules
        self.key = key
        self.credentials = credentials
        self.terminated = terminated or {}
        self.upstream_tls = upstream_tls
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
            tally = self.tallies[run_id] = Tally(run_id, deadline)
        return tally

    async def answer(
        self, writer: asyncio.StreamWriter, code: int, reason: str, body: str = "", extra: str = ""
    ) -> None:
        writer.write(answer_bytes(code, reason, body, extra))
        await writer.drain()

    def refuse_placeholders(self, req: ep.ProxyRequest, host: str, tally: Tally) -> None:
        """Raises Refused when the request's head holds a placeholder not meant for ``host``."""
        texts = [req.host, req.path, *(v for _, v in req.headers)]
        refusal = ep.placeholder_refusal(texts, host, self.key, tally.run_id, self.credentials)
        if refusal is not None:
            raise Refused(ep.display_target(host, req.port), refusal)

    def mask(self, host: str) -> ep.ResponseMask:
        """A host that reflects what it got must not hand the code its credential."""
        return ep.ResponseMask(v for c in self.credentials if c.host == host for v in c.masked)

    def inject(
        self, req: ep.ProxyRequest, host: str, tally: Tally, *, tls: bool, body_head: bytes
    ) -> ep.Injected:
        """The request's headers with this call's credentials for ``host`` in place.

        Raises Refused for a placeholder where it does not belong; BadRequest.
        """
        try:
            injected = ep.inject_credentials(
                self.key,
                tally.run_id,
                host,
                tls=tls,
                headers=req.headers,
                seen_elsewhere=(req.host, req.path, body_head.decode("latin-1")),
                credentials=self.credentials,
            )
        except ep.PlaceholderRefused as e:
            raise Refused(ep.display_target(host, req.port), str(e)) from None
        tally.credentials.update(injected.used)
        return injected

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
        # Before any lookup: a placeholder in a name would reach a resolver.
        self.refuse_placeholders(req, ep.normalize_host(req.host) or req.host, tally)
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
        context = self.terminated.get(host)
        if context is not None:
            # A credential host is never a blind tunnel: a client that does not trust our
            # certificate gets no connection at all.
            await self.terminate(req, tally, host, addresses, context, hello, reader, writer)
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

    async def terminate(
        self,
        req: ep.ProxyRequest,
        tally: Tally,
        host: str,
        addresses: list[str],
        context: ssl.SSLContext,
        hello: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """One request to a credential host, over TLS on both sides, credential in place."""
        target = ep.display_target(host, req.port)
        client = TlsStream(reader, writer, context, first=hello)
        try:
            async with asyncio.timeout(HELLO_TIMEOUT_S):
                await client.handshake()
        except ssl.SSLError as e:
            log(f"no request {target}: the client refused the proxy's TLS ({e.reason})")
            return
        try:
            await self.after_handshake(req, tally, host, addresses, client)
        finally:
            await client.close()

    async def after_handshake(
        self,
        req: ep.ProxyRequest,
        tally: Tally,
        host: str,
        addresses: list[str],
        client: TlsStream,
    ) -> None:
        """The one request of a terminated connection: checked, credential in, relayed."""
        target = ep.display_target(host, req.port)
        try:
            head = await asyncio.wait_for(
                client.readuntil(b"\r\n\r\n", ep.MAX_HEAD_BYTES), HEAD_TIMEOUT_S
            )
            inner = ep.parse_origin_request_head(head, host, req.port)
            refusal = ep.host_header_refusal(inner, host)
            if refusal is not None:
                raise Refused(target, refusal)
            body_left = ep.request_body_length(inner)
            body_head = await asyncio.wait_for(
                client.readexactly(min(body_left, ep.BODY_SCAN_BYTES)), IDLE_TIMEOUT_S
            )
            injected = self.inject(inner, host, tally, tls=True, body_head=body_head)
        except Refused as e:
            tally.deny(str(e))
            log(f"deny {e}")
            await client.write(answer_bytes(403, "Forbidden", f"egress refused: {e}"))
            return
        except ep.BadRequest as e:
            await client.write(answer_bytes(400, "Bad Request", str(e)))
            return
        upstream = await self.connect(addresses, req.port)
        tally.allowed += 1
        if upstream is None or self.upstream_tls is None:
            log(f"allow {target}: upstream unreachable")
            await client.write(answer_bytes(502, "Bad Gateway", f"{target} did not answer"))
            return
        up_reader, up_writer = upstream
        try:
            server = TlsStream(up_reader, up_writer, self.upstream_tls, server_hostname=host)
            try:
                async with asyncio.timeout(HELLO_TIMEOUT_S):
                    await server.handshake()
            except ssl.SSLError as e:
                # Not the host it claims to be (or no trust for it): the credential stays.
                log(f"allow {target}: upstream TLS not verified ({e.reason}); nothing sent")
                await client.write(
                    answer_bytes(502, "Bad Gateway", f"{target}: its certificate is not trusted")
                )
                return
            used = ",".join(injected.used)
            log(f"allow {target} (terminated" + (f"; credential {used})" if used else ")"))
            await server.write(
                ep.upstream_head(
                    inner, host, body_left, headers=injected.headers, default_port=req.port
                )
                + body_head
            )
            body_left -= len(body_head)
            while body_left:
                chunk = await asyncio.wait_for(client.read(min(body_left, CHUNK)), IDLE_TIMEOUT_S)
                if not chunk:
                    return
                body_left -= len(chunk)
                await server.write(chunk)
            # One request per connection: the client's further bytes are never read.
            mask = self.mask(host)
            while chunk := await asyncio.wait_for(server.read(), IDLE_TIMEOUT_S):
                await client.write(mask.feed(chunk))
            await client.write(mask.end())
        finally:
            up_writer.close()

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
        self.refuse_placeholders(req, ep.normalize_host(req.host) or req.host, tally)
        host, addresses = await self.checked_addresses(req, tls=False)
        target = ep.display_target(host, req.port)
        refusal = ep.host_header_refusal(req, host)
        if refusal is not None:
            raise Refused(target, refusal)
        body_left = ep.request_body_length(req)
        # The first bytes of the body are held back until they are checked for placeholders.
        body_head = await asyncio.wait_for(
            reader.readexactly(min(body_left, ep.BODY_SCAN_BYTES)), IDLE_TIMEOUT_S
        )
        injected = self.inject(req, host, tally, tls=False, body_head=body_head)
        upstream = await self.connect(addresses, req.port)
        tally.allowed += 1
        if upstream is None:
            log(f"allow {target}: upstream unreachable")
            await self.answer(writer, 502, "Bad Gateway", f"{target} did not answer")
            return
        used = ",".join(injected.used)
        log(f"allow {target}" + (f" (credential {used})" if used else ""))
        up_reader, up_writer = upstream
        body_left -= len(body_head)
        try:
            up_writer.write(
                ep.upstream_head(req, host, body_left + len(body_head), headers=injected.headers)
                + body_head
            )
            while body_left:
                chunk = await asyncio.wait_for(reader.read(min(body_left, CHUNK)), IDLE_TIMEOUT_S)
                if not chunk:
                    return
                body_left -= len(chunk)
                up_writer.write(chunk)
                await up_writer.drain()
            # One request per connection: the client's further bytes are never read.
            mask = self.mask(host)
            while chunk := await asyncio.wait_for(up_reader.read(CHUNK), IDLE_TIMEOUT_S):
                writer.write(mask.feed(chunk))
                await writer.drain()
            writer.write(mask.end())
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
    os.makedirs(SECRETS_DIR, exist_ok=True)
    credentials, terminated, upstream_tls = load_secrets(
        json.loads(os.environ.get("MCP_SANDBOX_EGRESS_SECRETS") or "{}")
    )
    proxy = Proxy(rules, key, credentials, terminated, upstream_tls)
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
    for c in credentials:
        log(f"credential {c.name} goes to {c.host} in {c.header}")
    async with control, server:
        await server.serve_forever()


def load_secrets(
    data: dict[str, object],
) -> tuple[tuple[ep.CredentialRule, ...], dict[str, ssl.SSLContext], ssl.SSLContext]:
    """The credentials, a TLS server context per credential host, and the upstream context.

    Raises ValueError, TypeError or ssl.SSLError on anything malformed: no start.
    """
    raw = data.get("credentials", [])
    leaves = data.get("leaves", {})
    upstream_ca = data.get("upstream_ca")
    if not isinstance(raw, list) or not isinstance(leaves, dict):
        raise TypeError("credentials is a list and leaves an object")
    credentials = tuple(ep.CredentialRule.from_json(c) for c in raw)
    terminated = {}
    for host in sorted({c.host for c in credentials}):
        leaf = leaves[host]
        path = os.path.join(SECRETS_DIR, f"leaf-{host}.pem")
        # load_cert_chain reads files only: the key is on the tmpfs for as long as it loads.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(leaf["key"] + leaf["cert"])
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(path)
        finally:
            os.unlink(path)
        context.set_alpn_protocols(["http/1.1"])
        terminated[host] = context
    if upstream_ca is not None and not isinstance(upstream_ca, str):
        raise TypeError("upstream_ca is PEM text")
    upstream_tls = ssl.create_default_context(cadata=upstream_ca)
    upstream_tls.minimum_version = ssl.TLSVersion.TLSv1_2
    upstream_tls.set_alpn_protocols(["http/1.1"])
    return credentials, terminated, upstream_tls


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
