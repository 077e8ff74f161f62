"""PURE, standard library only: every decision of the egress proxy, as plain functions.

The proxy image ships a copy of this file (``images.py`` puts it in the build context), so
the server's unit tests check the very code that runs in the proxy. Nothing here does I/O.

- Names: a host is allowed when it equals an exact entry of the allowlist or ends with the
  suffix of a ``*.`` entry (``*.pythonhosted.org`` matches ``files.pythonhosted.org``, not
  ``pythonhosted.org``). IP literals are never names.
- Addresses: the proxy connects only to an address it checked, and only to a public unicast
  one, unless it lies in an explicitly configured CIDR (tests, air-gapped mirrors).
- TLS: the ClientHello's server name (SNI) must be the CONNECT line's host.
- Attribution: each call gets a credential ``run_id:deadline.mac`` in its proxy URL.
- Credentials: a sandbox sees a placeholder per call and credential; the real header value
  goes only in the configured header of requests to that entry's exact host, and a
  placeholder anywhere else is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

PROXY_PORT = 3128
NO_PROXY = "localhost,127.0.0.1,::1"
MAX_HEAD_BYTES = 16_384
MAX_HELLO_BYTES = 65_536

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
# The last label must start with a letter: "127.1", "0x7f.1" and "2130706433" are addresses
# to inet_aton and to browsers, never names.
_TOP_LABEL = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)\Z")
_RUN_ID = re.compile(r"[0-9a-f]{12}\Z")
_TOKEN_CHARS = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_DISPLAY_DROP = re.compile(r"[^a-z0-9.:\[\]_*-]")

# IANA special-purpose registries, written out so the verdict does not change with the
# Python version's idea of ``is_private``.
_SPECIAL_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local: cloud metadata lives here
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.31.196.0/24",
        "192.52.193.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "192.175.48.0/24",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and broadcast
    )
)
_SPECIAL_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard
        "2001::/23",  # IETF protocol assignments (Teredo's embedded address is checked too)
        "2001:db8::/32",
        "3fff::/20",
        "5f00::/16",
    )
)
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# An exception may open a private range, never these: the proxy's own loopback, the cloud
# metadata range, "this host".
_NEVER_OPENED = tuple(
    ipaddress.ip_network(n)
    for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "::/128", "::1/128", "fe80::/10")
)


class BadRequest(ValueError):
    """The proxy request is malformed; the proxy answers 400 and attributes nothing."""


class HelloRefused(ValueError):
    """The bytes after CONNECT are not a ClientHello naming one acceptable server."""


def normalize_host(text: str) -> str | None:
    """``text`` as a canonical DNS host name (lower case, no final dot), or None.

    A host name has at least two labels and a last label that starts with a letter.
    """
    if not text.isascii():
        return None
    host = text.lower()
    if host.endswith("."):
        host = host[:-1]
    if not host or len(host) > 253:
        return None
    labels = host.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        return None
    return host if _TOP_LABEL.match(labels[-1]) else None


def is_ip_literal(text: str) -> bool:
    """Whether ``text`` names an address rather than a host: ``1.2.3.4``, ``[::1]``, ``127.1``."""
    t = text.strip().lower()
    if t.startswith("[") and t.endswith("]"):
        t = t[1:-1]
    try:
        ipaddress.ip_address(t.split("%", 1)[0])
        return True
    except ValueError:
        pass
    if ":" in t:
        return True  # no host name has a colon
    last = t.rstrip(".").rsplit(".", 1)[-1]
    return bool(_NUMERIC_LABEL.match(last))


def parse_pattern(text: str) -> str:
    """An allowlist entry, canonical: ``pypi.org`` or ``*.pythonhosted.org``.

    Raises ValueError saying what is allowed.
    """
    if text.startswith("*."):
        suffix = normalize_host(text[2:])
        if suffix is None:
            raise ValueError(f"{text!r}: after '*.' comes a host name like pythonhosted.org")
        return "*." + suffix
    if "*" in text:
        raise ValueError(f"{text!r}: a wildcard may only be a leading '*.' (*.example.org)")
    if is_ip_literal(text):
        raise ValueError(f"{text!r}: IP literals are never allowed; name a host")
    host = normalize_host(text)
    if host is None:
        raise ValueError(f"{text!r} is not a host name like pypi.org")
    return host


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    """Whether canonical ``host`` matches one of the canonical ``patterns``."""
    for p in patterns:
        if p.startswith("*."):
            if host.endswith(p[1:]):
                return True
        elif host == p:
            return True
    return False


def display_target(host_text: str, port: int) -> str:
    """``host:port`` for a report: only name-ish characters, bounded length."""
    shown = _DISPLAY_DROP.sub("?", host_text.lower())[:80] or "?"
    return f"{shown}:{port}"


def parse_cidr(text: str) -> IpNetwork:
    """A CIDR that may be opened for the proxy. Raises ValueError saying why not."""
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not a CIDR like 172.30.0.0/16") from None
    if net.prefixlen == 0:
        raise ValueError(f"{text!r} opens every address; list the ranges you mean")
    for never in _NEVER_OPENED:
        if (
            net.version == never.version
            and int(net.network_address) <= int(never.broadcast_address)
            and int(never.network_address) <= int(net.broadcast_address)
        ):
            raise ValueError(f"{text!r} overlaps {never}, which is never opened")
    return net


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_refusal(address: str, opened: Sequence[IpNetwork] = ()) -> str | None:
    """Why the proxy must not connect to ``address``; None when it may.

    Only public unicast addresses pass, unless ``address`` lies in one of ``opened``.
    """
    try:
        ip: IpAddress = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an address"
    if any(ip.version == net.version and ip in net for net in opened):
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None:
            refusal = address_refusal(str(inner), opened)
            if refusal is not None or ip.ipv4_mapped is not None:
                return refusal
        if ip not in _GLOBAL_UNICAST_V6 or any(ip in net for net in _SPECIAL_V6):
            return "resolves to a non-public address"
    elif any(ip in net for net in _SPECIAL_V4):
        return "resolves to a non-public address"
    if not ip.is_global or ip.is_multicast:
        return "resolves to a non-public address"
    return None


def _mac(key: bytes, run_id: str, deadline: int) -> str:
    return hmac.new(key, f"{run_id}|{deadline}".encode(), hashlib.sha256).hexdigest()[:32]


def make_password(key: bytes, run_id: str, deadline: int) -> str:
    """The proxy password of ``run_id``: good until ``deadline`` (unix seconds)."""
    return f"{deadline}.{_mac(key, run_id, deadline)}"


def check_credentials(key: bytes, user: str, password: str, now: float) -> tuple[str, int] | None:
    """``(run_id, deadline)`` when ``user:password`` is a live credential of ours, else None."""
    if not _RUN_ID.match(user):
        return None
    deadline_text, _, mac = password.partition(".")
    if not deadline_text.isdigit() or len(deadline_text) > 12:
        return None
    deadline = int(deadline_text)
    if deadline < now or not hmac.compare_digest(mac, _mac(key, user, deadline)):
        return None
    return user, deadline


def basic_credentials(value: str) -> tuple[str, str] | None:
    """``(user, password)`` from a ``Proxy-Authorization: Basic ...`` value, or None."""
    scheme, _, encoded = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


@dataclass(frozen=True)
class ProxyRequest:
    """A request to the proxy: ``CONNECT host:port`` or ``GET http://host[:port]/path``."""

    method: str
    host: str  # as written, unchecked
    port: int
    path: str  # origin-form for plain HTTP; "" for CONNECT
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        """The one value of header ``name``. Raises BadRequest when it is repeated."""
        found = [v for k, v in self.headers if k.lower() == name]
        if len(found) > 1:
            raise BadRequest(f"repeated {name} header")
        return found[0] if found else None


def _split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise BadRequest("unclosed [")
        host, rest = authority[: end + 1], authority[end + 1 :]
    else:
        host, colon, port_text = authority.partition(":")
        rest = colon + port_text
    if rest:
        if not rest.startswith(":") or not rest[1:].isdigit() or len(rest) > 6:
            raise BadRequest("bad port")
        port = int(rest[1:])
    elif default_port is None:
        raise BadRequest("CONNECT needs host:port")
    else:
        port = default_port
    if not host or not 0 < port < 65536:
        raise BadRequest("bad authority")
    return host, port


def parse_request_head(head: bytes) -> ProxyRequest:
    """Parse a request head ending in CRLF CRLF. Raises BadRequest.

    Strict on purpose: one space between the parts, no obsolete line folding, no bare LF,
    no user info in the target, a token for every header name.
    """
    if len(head) > MAX_HEAD_BYTES or not head.endswith(b"\r\n\r\n"):
        raise BadRequest("head too long or unterminated")
    try:
        text = head[:-4].decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("non-ASCII head") from None
    lines = text.split("\r\n")
    if any("\n" in ln or "\r" in ln or "\x00" in ln for ln in lines):
        raise BadRequest("bare CR or LF")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest("bad request line")
    method, target, _ = parts
    if not _TOKEN_CHARS.match(method) or not target.isprintable():
        raise BadRequest("bad request line")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN_CHARS.match(name):
            raise BadRequest("bad header line")
        headers.append((name, value.strip(" \t")))
    if len(headers) > 100:
        raise BadRequest("too many headers")
    if method == "CONNECT":
        host, port = _split_authority(target, None)
        return ProxyRequest(method, host, port, "", tuple(headers))
    if target[:7].lower() != "http://":
        raise BadRequest("a plain HTTP request names an absolute http:// URL")
    rest = target[7:]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:]
    if "@" in authority or "#" in path:
        raise BadRequest("user info or fragment in the target")
    host, port = _split_authority(authority, 80)
    if not path.startswith("/"):
        path = "/" + path
    return ProxyRequest(method, host, port, path, tuple(headers))


_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)


def host_header_refusal(req: ProxyRequest, host: str) -> str | None:
    """Why the request's Host header disagrees with its target ``host``; None if it agrees."""
    value = req.header("host")
    if value is None:
        return None
    named, _ = _split_authority(value, req.port)
    return None if normalize_host(named) == host else "Host header names another host"


def upstream_head(
    req: ProxyRequest,
    host: str,
    length: int,
    *,
    headers: Sequence[tuple[str, str]] | None = None,
    default_port: int = 80,
) -> bytes:
    """The head sent upstream: origin-form, our Host, no hop-by-hop headers, one request.

    Host, Content-Length and Connection are ours, whatever the client's Connection header
    names: the Content-Length written is ``length``, the body bytes the proxy forwards
    (``request_body_length``), so they are exactly one request's body. ``headers``: the
    request's headers after credential substitution (default: as received).
    """
    dropped = {*_HOP_BY_HOP, "content-length"}
    for value in (req.header("connection") or "").split(","):
        dropped.add(value.strip().lower())
    authority = host if req.port == default_port else f"{host}:{req.port}"
    lines = [f"{req.method} {req.path} HTTP/1.1", f"Host: {authority}"]
    sent = req.headers if headers is None else headers
    lines += [f"{k}: {v}" for k, v in sent if k.lower() not in dropped]
    if req.header("content-length") is not None:
        lines.append(f"Content-Length: {length}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def request_body_length(req: ProxyRequest) -> int:
    """Bytes of body after the head. Raises BadRequest for chunked or ambiguous bodies."""
    if req.header("transfer-encoding") is not None:
        raise BadRequest("chunked request bodies are not supported")
    value = req.header("content-length")
    if value is None:
        return 0
    if not value.isdigit() or len(value) > 12:
        raise BadRequest("bad Content-Length")
    return int(value)


_EXT_SERVER_NAME = 0
_EXT_ECH = {0xFE0D, 0xFFCE}  # encrypted ClientHello, and its draft ancestor ESNI


def client_hello_server_name(data: bytes) -> str | None:
    """The SNI host of the TLS ClientHello that ``data`` starts with; None: need more bytes.

    Raises HelloRefused when ``data`` is not a TLS handshake, the hello has no server name
    or more than one, repeats an extension, or encrypts its real hello (ECH).
    """
    handshake = bytearray()
    pos = 0
    while True:
        if len(data) - pos < 5:
            _check_hello_size(data)
            return None
        ctype, major = data[pos], data[pos + 1]
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if ctype != 22 or major != 3 or not 0 < length <= 16_384:
            raise HelloRefused("not a TLS handshake")
        if len(data) - pos - 5 < length:
            _check_hello_size(data)
            return None
        handshake += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(handshake) >= 4:
            if handshake[0] != 1:
                raise HelloRefused("not a TLS ClientHello")
            need = int.from_bytes(handshake[1:4], "big")
            if need > MAX_HELLO_BYTES:
                raise HelloRefused("TLS ClientHello too long")
            if len(handshake) >= 4 + need:
                return _hello_server_name(bytes(handshake[4 : 4 + need]))


def _check_hello_size(data: bytes) -> None:
    if len(data) > MAX_HELLO_BYTES + 1024:
        raise HelloRefused("TLS ClientHello too long")


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise HelloRefused("malformed TLS ClientHello")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def number(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, size_bytes: int) -> bytes:
        return self.take(self.number(size_bytes))

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _hello_server_name(body: bytes) -> str:
    c = _Cursor(body)
    c.take(2 + 32)  # legacy version, random
    if len(c.vector(1)) > 32:
        raise HelloRefused("malformed TLS ClientHello")
    c.vector(2)  # cipher suites
    c.vector(1)  # compression methods
    if c.left == 0:
        raise HelloRefused("no TLS SNI")
    extensions = _Cursor(c.vector(2))
    if c.left:
        raise HelloRefused("malformed TLS ClientHello")
    seen: set[int] = set()
    name: str | None = None
    while extensions.left:
        kind = extensions.number(2)
        data = extensions.vector(2)
        if kind in seen:
            raise HelloRefused("repeated TLS extension")
        seen.add(kind)
        if kind in _EXT_ECH:
            raise HelloRefused("TLS encrypted ClientHello")
        if kind == _EXT_SERVER_NAME:
            name = _server_name(data)
    if name is None:
        raise HelloRefused("no TLS SNI")
    return name


def _server_name(data: bytes) -> str:
    c = _Cursor(data)
    entries = _Cursor(c.vector(2))
    if c.left:
        raise HelloRefused("malformed TLS SNI")
    names = []
    while entries.left:
        kind = entries.number(1)
        value = entries.vector(2)
        names.append((kind, value))
    if len(names) != 1 or names[0][0] != 0:
        raise HelloRefused("TLS SNI must name exactly one host")
    try:
        host = normalize_host(names[0][1].decode("ascii"))
    except UnicodeDecodeError:
        host = None
    if host is None:
        raise HelloRefused("TLS SNI is not a host name")
    return host


@dataclass(frozen=True)
class ProxyRules:
    """What the proxy enforces, as the server hands it over (JSON in its environment)."""

    allow: tuple[str, ...]
    tls_ports: frozenset[int]
    http_ports: frozenset[int]
    opened: tuple[IpNetwork, ...]
    hosts: Mapping[str, str]

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> ProxyRules:
        """Raises ValueError or TypeError on anything malformed: the proxy will not start."""

        def strings(key: str) -> list[str]:
            value = data[key]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise TypeError(f"{key} must be a list of strings")
            return value

        def ports(key: str) -> frozenset[int]:
            value = data[key]
            if not isinstance(value, list) or not all(
                isinstance(p, int) and 0 < p < 65536 for p in value
            ):
                raise TypeError(f"{key} must be a list of ports")
            return frozenset(value)

        hosts = data["hosts"]
        if not isinstance(hosts, dict):
            raise TypeError("hosts must be an object")
        checked_hosts = {}
        for name, ip in hosts.items():
            host = normalize_host(str(name))
            if host is None:
                raise ValueError(f"hosts: {name!r} is not a host name")
            checked_hosts[host] = str(ipaddress.ip_address(str(ip)))
        return cls(
            allow=tuple(parse_pattern(p) for p in strings("allow")),
            tls_ports=ports("tls_ports"),
            http_ports=ports("http_ports"),
            opened=tuple(parse_cidr(c) for c in strings("opened_cidrs")),
            hosts=checked_hosts,
        )

    def target_refusal(self, host_text: str, port: int, *, tls: bool) -> str | None:
        """Why a request for ``host_text:port`` is refused before any lookup; None if not."""
        if is_ip_literal(host_text):
            return "IP literal"
        host = normalize_host(host_text)
        if host is None:
            return "not a host name"
        if port not in (self.tls_ports if tls else self.http_ports):
            return "port not allowed for " + ("CONNECT" if tls else "plain HTTP")
        if not host_allowed(host, self.allow):
            return "not in allowlist"
        return None


# --- credentials: placeholders the sandbox sees, real values only the proxy holds --------

CREDENTIAL_ENV_PREFIX = "MCP_SANDBOX_CREDENTIAL_"
PLACEHOLDER_PREFIX = "mcpsbx-cred-"
# Lower case hex only, so one case-folded scan finds it in a header, a URL or a host name;
# 57 characters, so it even fits one DNS label.
_PLACEHOLDER = re.compile(r"mcpsbx-cred-[0-9a-f]{12}-[0-9a-f]{32}")
_BASIC = re.compile(r"\s*basic\s+([A-Za-z0-9+/=]+)\s*\Z", re.IGNORECASE)
PLACEHOLDER_REFUSAL = "credential placeholder to another host"
# Bytes of a request body the proxy holds back and looks at before anything goes upstream.
BODY_SCAN_BYTES = 65_536
# Never a credential's header: the proxy writes or drops these itself.
RESERVED_HEADERS = frozenset({*_HOP_BY_HOP, "content-length"})


def make_placeholder(key: bytes, run_id: str, name: str) -> str:
    """What the sandbox of ``run_id`` sees instead of credential ``name``: random per call
    (the proxy's key is), useless outside it, recognised by the proxy without any state."""
    mac = hmac.new(key, f"credential|{run_id}|{name}".encode(), hashlib.sha256).hexdigest()
    return f"{PLACEHOLDER_PREFIX}{run_id}-{mac[:32]}"


@dataclass(frozen=True)
class CredentialRule:
    """One credential as the proxy holds it: where it goes and the header value it sends."""

    name: str
    host: str  # canonical, exact
    header: str  # lower case
    value: str  # the whole header value, e.g. "Bearer <token>"
    plain_http: bool  # also put it in plain-HTTP requests (sent in the clear upstream)
    secret: str = ""  # the bare value inside ``value``: masked in answers too

    @property
    def masked(self) -> tuple[str, ...]:
        """What is masked in the answers of this credential's host."""
        return tuple(v for v in (self.value, self.secret) if v)

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> CredentialRule:
        """Raises ValueError or TypeError on anything malformed: the proxy will not start."""
        name, host, header, value = (data[k] for k in ("name", "host", "header", "value"))
        if not all(isinstance(v, str) for v in (name, host, header, value)):
            raise TypeError("credential fields are strings")
        assert isinstance(name, str) and isinstance(host, str)
        assert isinstance(header, str) and isinstance(value, str)
        canonical = normalize_host(host)
        if canonical is None:
            raise ValueError(f"credential {name}: {host!r} is not a host name")
        if not _TOKEN_CHARS.match(header) or header.lower() in RESERVED_HEADERS:
            raise ValueError(f"credential {name}: header {header!r} cannot carry a credential")
        secret = data.get("secret", "")
        if not isinstance(secret, str):
            raise TypeError("credential fields are strings")
        for text in (value, secret):
            if not text.isascii() or not text.isprintable():
                raise ValueError(f"credential {name}: the value is not printable ASCII")
        plain = bool(data.get("plain_http", False))
        return cls(name, canonical, header.lower(), value, plain, secret)


class PlaceholderRefused(ValueError):
    """A request carries a placeholder where it must not go; the proxy refuses it."""


@dataclass(frozen=True)
class Injected:
    """A request's headers after substitution, and the credentials put in them."""

    headers: tuple[tuple[str, str], ...]
    used: tuple[str, ...]


def _basic_secret(value: str) -> str:
    """The decoded ``user:password`` of a Basic value ("" when it is not one)."""
    m = _BASIC.match(value)
    if m is None:
        return ""
    try:
        return base64.b64decode(m.group(1), validate=True).decode("latin-1")
    except (binascii.Error, ValueError):
        return ""


def placeholders_in(text: str) -> set[str]:
    """Every placeholder-shaped string in ``text``, in any case, and inside a Basic value."""
    return set(_PLACEHOLDER.findall(text.lower())) | set(
        _PLACEHOLDER.findall(_basic_secret(text).lower())
    )


def inject_credentials(
    key: bytes,
    run_id: str,
    host: str,
    *,
    tls: bool,
    headers: Sequence[tuple[str, str]],
    seen_elsewhere: Iterable[str],
    credentials: Sequence[CredentialRule],
) -> Injected:
    """Put the real value of each of ``credentials`` in its header, for its host only.

    A credential of ``host`` is substituted only in its configured header, only when that
    header carries this call's placeholder for it (plainly, or as a Basic password): the
    whole header becomes the configured value. Over plain HTTP only when the entry allows
    it. Anywhere else (another header, the URL, the body, ``seen_elsewhere``) a placeholder
    of ``host`` passes unchanged: it is not the secret. A placeholder-shaped string that is
    not this call's placeholder of a credential of ``host`` (another host's, another call's,
    a forgery) raises PlaceholderRefused, wherever it is.
    """
    mine = {make_placeholder(key, run_id, c.name): c for c in credentials if c.host == host}
    out: list[tuple[str, str]] = []
    used: list[str] = []
    found: set[str] = set()
    for text in seen_elsewhere:
        found |= placeholders_in(text)
    for name, value in headers:
        here = placeholders_in(value)
        found |= here
        lower = name.lower()
        hits = [c for p, c in mine.items() if p in here and c.header == lower]
        hits = [c for c in hits if tls or c.plain_http]
        if hits:
            if hits[0].name in used:
                raise BadRequest(f"repeated {lower} header")
            used.append(hits[0].name)
            out.append((name, hits[0].value))
        else:
            out.append((name, value))
    if found - mine.keys():
        raise PlaceholderRefused(PLACEHOLDER_REFUSAL)
    for c in credentials:
        if c.name in used and sum(k.lower() == c.header for k, _ in out) > 1:
            raise BadRequest(f"repeated {c.header} header")
    if mine:
        # Uncompressed answers, so that ResponseMask can find a value the host reflects.
        out = [(k, v) for k, v in out if k.lower() != "accept-encoding"]
        out.append(("Accept-Encoding", "identity"))
    return Injected(tuple(out), tuple(used))


class ResponseMask:
    """Masks known values in a byte stream cut anywhere, each by as many ``*``.

    The length stays, so a Content-Length stays true. ``feed`` holds back the last bytes that
    could start a value cut in two; ``end`` gives them up.
    """

    def __init__(self, values: Iterable[str]) -> None:
        found = {v.encode("ascii") for v in values if v}
        self._values = sorted(found, key=len, reverse=True)
        self._keep = max((len(v) for v in self._values), default=1) - 1
        self._carry = b""

    def feed(self, chunk: bytes) -> bytes:
        if not self._values:
            return chunk
        data = self._carry + chunk
        for value in self._values:
            data = data.replace(value, b"*" * len(value))
        cut = max(len(data) - self._keep, 0)
        out, self._carry = data[:cut], data[cut:]
        return out

    def end(self) -> bytes:
        out, self._carry = self._carry, b""
        return out


def placeholder_refusal(
    texts: Iterable[str],
    host: str,
    key: bytes,
    run_id: str,
    credentials: Sequence[CredentialRule],
) -> str | None:
    """Why bytes the proxy sees on the way to ``host`` (a CONNECT head, a SNI) are refused:
    they hold a placeholder that is not this call's for a credential of ``host``."""
    mine = {make_placeholder(key, run_id, c.name) for c in credentials if c.host == host}
    found: set[str] = set()
    for text in texts:
        found |= placeholders_in(text)
    return PLACEHOLDER_REFUSAL if found - mine else None


def parse_origin_request_head(head: bytes, host: str, port: int) -> ProxyRequest:
    """A request inside a TLS connection the proxy terminated for ``host:port``.

    Origin-form only (``GET /path HTTP/1.1``): the target is the tunnel's, never the
    request's. Otherwise as strict as ``parse_request_head``. Raises BadRequest.
    """
    line_end = head.find(b"\r\n")
    parts = head[:line_end].split(b" ") if line_end > 0 else []
    if len(parts) != 3 or parts[0] == b"CONNECT" or not parts[1].startswith(b"/"):
        raise BadRequest("a request inside the tunnel names an origin-form path")
    absolute = b" ".join([parts[0], f"http://{host}:{port}".encode() + parts[1], parts[2]])
    req = parse_request_head(absolute + head[line_end:])
    return ProxyRequest(req.method, host, port, req.path, req.headers)
