"""The proxy's decisions, as pure functions: names, addresses, credentials, requests, SNI."""

from __future__ import annotations

import functools
import ipaddress
import ssl
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_sandbox.config.egress import EgressSettings
from mcp_sandbox.egress.link import EgressLink
from mcp_sandbox.policy import egress_rules as ep

# --- names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host"),
    [
        ("PyPI.org", "pypi.org"),
        ("files.pythonhosted.org.", "files.pythonhosted.org"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("localhost", None),  # one label
        ("127.0.0.1", None),
        ("127.1", None),
        ("0x7f.1", None),
        ("a.0x1f", None),
        ("2130706433", None),
        ("a..b", None),
        ("-a.org", None),
        ("a_b.org", None),
        ("bücher.example", None),
        ("", None),
        ("a." * 127 + "org", None),  # over 253
    ],
)
def test_normalize_host(text: str, host: str | None) -> None:
    assert ep.normalize_host(text) == host


@given(st.ip_addresses())
def test_every_ip_address_is_a_literal_and_never_a_host(ip: ipaddress._BaseAddress) -> None:
    for text in (str(ip), f"[{ip}]" if ip.version == 6 else str(ip)):
        assert ep.is_ip_literal(text)
        assert ep.normalize_host(text) is None


@pytest.mark.parametrize("text", ["2130706433", "0x7f000001", "127.1", "1.2.3.0x4", "[::1]"])
def test_inet_aton_forms_are_literals(text: str) -> None:
    assert ep.is_ip_literal(text)


def test_a_name_is_not_a_literal() -> None:
    assert not ep.is_ip_literal("pypi.org") and not ep.is_ip_literal("1.pypi.org")


@pytest.mark.parametrize(
    ("pattern", "host", "allowed"),
    [
        ("pypi.org", "pypi.org", True),
        ("pypi.org", "www.pypi.org", False),
        ("*.pythonhosted.org", "files.pythonhosted.org", True),
        ("*.pythonhosted.org", "a.b.pythonhosted.org", True),
        ("*.pythonhosted.org", "pythonhosted.org", False),
        ("*.pythonhosted.org", "evilpythonhosted.org", False),
        ("*.pythonhosted.org", "pythonhosted.org.evil.test", False),
    ],
)
def test_host_allowed(pattern: str, host: str, allowed: bool) -> None:
    assert ep.host_allowed(host, [ep.parse_pattern(pattern)]) is allowed


@pytest.mark.parametrize("bad", ["*", "*.org", "a.*.org", "*pypi.org", "10.0.0.1", "[::1]", "x"])
def test_bad_patterns_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        ep.parse_pattern(bad)


def test_display_target_keeps_only_name_characters() -> None:
    assert ep.display_target("EVIL\x1b[31m.test\n" + "a" * 200, 443).startswith("evil?[31m.test?")
    assert len(ep.display_target("a" * 500, 1)) <= 82


# --- addresses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.17.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.251",
        "239.255.255.250",
        "255.255.255.255",
        "240.0.0.1",
        "192.0.2.1",
        "198.18.0.1",
        "::",
        "::1",
        "fe80::1",
        "fc00::1",
        "fd12::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "2002:7f00:1::1",  # 6to4 around 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 around 10.0.0.1
        "64:ff9b:1::1",
        "2001:db8::1",
        "2001::1",  # Teredo
        "100::1",
        "fec0::1",
        "not-an-ip",
    ],
)
def test_special_addresses_are_refused(address: str) -> None:
    assert ep.address_refusal(address) is not None


@pytest.mark.parametrize("address", ["151.101.0.223", "2a04:4e42::223", "::ffff:151.101.0.223"])
def test_public_unicast_addresses_pass(address: str) -> None:
    assert ep.address_refusal(address) is None


@given(st.ip_addresses(v=4, network="10.0.0.0/8") | st.ip_addresses(v=4, network="172.16.0.0/12"))
def test_an_opened_cidr_opens_exactly_its_addresses(ip: ipaddress.IPv4Address) -> None:
    opened = [ep.parse_cidr("172.20.0.0/16")]
    assert (ep.address_refusal(str(ip), opened) is None) == (ip in opened[0])


@pytest.mark.parametrize(
    "cidr", ["0.0.0.0/0", "::/0", "127.0.0.0/8", "127.0.0.1/32", "169.254.169.254/32", "::1/128"]
)
def test_loopback_link_local_and_everything_are_never_opened(cidr: str) -> None:
    with pytest.raises(ValueError):
        ep.parse_cidr(cidr)


def test_a_loopback_address_stays_refused_whatever_is_opened() -> None:
    opened = [ep.parse_cidr("10.0.0.0/8"), ep.parse_cidr("fc00::/7")]
    assert ep.address_refusal("127.0.0.1", opened) is not None
    assert ep.address_refusal("169.254.169.254", opened) is not None
    assert ep.address_refusal("::ffff:10.0.0.1", opened) is None


# --- credentials ------------------------------------------------------------------------

KEY = b"k" * 32


def test_a_credential_names_its_run_until_its_deadline() -> None:
    password = ep.make_password(KEY, "0123456789ab", 2_000)
    assert ep.check_credentials(KEY, "0123456789ab", password, 1_000) == ("0123456789ab", 2_000)
    assert ep.check_credentials(KEY, "0123456789ab", password, 2_001) is None  # expired
    assert ep.check_credentials(KEY, "0123456789ac", password, 1_000) is None  # other run
    assert ep.check_credentials(b"x" * 32, "0123456789ab", password, 1_000) is None
    later = password.replace("2000.", "9999.")
    assert ep.check_credentials(KEY, "0123456789ab", later, 1_000) is None  # deadline moved
    assert ep.check_credentials(KEY, "../etc", password, 1_000) is None


def test_basic_credentials() -> None:
    assert ep.basic_credentials("Basic dXNlcjpwYTpzcw==") == ("user", "pa:ss")
    assert ep.basic_credentials("Bearer dXNlcjpwYXNz") is None
    assert ep.basic_credentials("Basic !!!") is None
    assert ep.basic_credentials("Basic dXNlcg==") is None  # no colon


def test_the_link_sets_both_cases_of_every_proxy_variable() -> None:
    env = EgressLink("net", "http://a:b@10.0.0.2:3128").env()
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert env[name] == "http://a:b@10.0.0.2:3128"
    assert env["NO_PROXY"] == env["no_proxy"] == ep.NO_PROXY


# --- requests ---------------------------------------------------------------------------


def _head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_connect_and_absolute_form_parse() -> None:
    req = ep.parse_request_head(_head("CONNECT pypi.org:443 HTTP/1.1", "Host: pypi.org:443"))
    assert (req.method, req.host, req.port, req.path) == ("CONNECT", "pypi.org", 443, "")
    req = ep.parse_request_head(_head("GET http://Pypi.org/simple/?q=1 HTTP/1.1"))
    assert (req.host, req.port, req.path) == ("Pypi.org", 80, "/simple/?q=1")
    req = ep.parse_request_head(_head("GET http://[::1]:8080 HTTP/1.0"))
    assert (req.host, req.port, req.path) == ("[::1]", 8080, "/")


@pytest.mark.parametrize(
    "head",
    [
        b"GET http://a.test/ HTTP/1.1\n\r\n\r\n",
        _head("GET http://a.test/  HTTP/1.1"),
        _head("GET / HTTP/1.1"),
        _head("GET https://a.test/ HTTP/1.1"),
        _head("GET http://user@a.test/ HTTP/1.1"),
        _head("GET http://a.test/#frag HTTP/1.1"),
        _head("GET http://a.test:99999/ HTTP/1.1"),
        _head("GET http://a.test:/ HTTP/1.1"),
        _head("CONNECT a.test HTTP/1.1"),
        _head("CONNECT a.test:443 HTTP/2"),
        _head("GET http://a.test/ HTTP/1.1", " folded: header"),
        _head("GET http://a.test/ HTTP/1.1", "Bad Header: x"),
        _head("GET http://a.test/ HTTP/1.1", "X: a\rb"),
        _head("GET http://a.test/é HTTP/1.1"),
        b"GET http://a.test/ HTTP/1.1\r\n",
    ],
)
def test_malformed_heads_are_bad_requests(head: bytes) -> None:
    with pytest.raises(ep.BadRequest):
        ep.parse_request_head(head)


def test_the_upstream_head_is_ours() -> None:
    req = ep.parse_request_head(
        _head(
            "POST http://a.test:8080/p HTTP/1.1",
            "Host: a.test:8080",
            "Proxy-Authorization: Basic eDp5",
            "Proxy-Connection: keep-alive",
            "Connection: keep-alive, X-Secret",
            "X-Secret: 1",
            "Content-Length: 3",
            "Accept: */*",
        )
    )
    head = ep.upstream_head(req, "a.test", ep.request_body_length(req)).decode()
    assert head == (
        "POST /p HTTP/1.1\r\nHost: a.test:8080\r\nAccept: */*\r\nContent-Length: 3\r\n"
        "Connection: close\r\n\r\n"
    )
    assert ep.request_body_length(req) == 3


@pytest.mark.parametrize(
    "connection", ["Content-Length", "close, content-length", "Host, Content-Length, Connection"]
)
def test_connection_cannot_drop_the_framing_so_a_body_stays_a_body(connection: str) -> None:
    """A body that is itself a request must reach upstream as the body of the first one."""
    smuggled = b"GET /admin HTTP/1.1\r\nHost: internal.test\r\n\r\n"
    req = ep.parse_request_head(
        _head(
            "POST http://a.test/p HTTP/1.1",
            f"Connection: {connection}",
            f"Content-Length: {len(smuggled)}",
        )
    )
    head = ep.upstream_head(req, "a.test", ep.request_body_length(req)).decode()
    lines = head.split("\r\n")
    assert lines[:2] == ["POST /p HTTP/1.1", "Host: a.test"]
    assert [ln for ln in lines if ln.lower().startswith("content-length:")] == [
        f"Content-Length: {len(smuggled)}"
    ]
    assert ep.request_body_length(req) == len(smuggled)


def test_the_content_length_written_is_the_one_forwarded() -> None:
    def upstream(*headers: str) -> str:
        req = ep.parse_request_head(_head("POST http://a.test/ HTTP/1.1", *headers))
        return ep.upstream_head(req, "a.test", ep.request_body_length(req)).decode()

    assert "Content-Length: 7\r\n" in upstream("Content-Length: 007")
    assert "Content-Length: 0\r\n" in upstream("Content-Length: 0")
    assert "content-length" not in upstream("Accept: */*").lower()  # no body, none written
    with pytest.raises(ep.BadRequest):
        upstream("Transfer-Encoding: chunked", "Connection: Transfer-Encoding")


def test_bodies_are_content_length_only() -> None:
    chunked = ep.parse_request_head(
        _head("POST http://a.test/ HTTP/1.1", "Transfer-Encoding: chunked")
    )
    with pytest.raises(ep.BadRequest):
        ep.request_body_length(chunked)
    twice = ep.parse_request_head(
        _head("POST http://a.test/ HTTP/1.1", "Content-Length: 1", "Content-Length: 2")
    )
    with pytest.raises(ep.BadRequest):
        ep.request_body_length(twice)


def test_the_host_header_must_name_the_target() -> None:
    def refusal(*headers: str) -> str | None:
        req = ep.parse_request_head(_head("GET http://a.test/ HTTP/1.1", *headers))
        return ep.host_header_refusal(req, "a.test")

    assert refusal() is None and refusal("Host: A.test") is None
    assert refusal("Host: a.test:80") is None
    assert refusal("Host: b.test") is not None
    with pytest.raises(ep.BadRequest):
        refusal("Host: a.test", "host: b.test")


# --- TLS --------------------------------------------------------------------------------


@functools.cache
def client_hello(server_name: str | None) -> bytes:
    """The ClientHello Python's ssl writes, made in memory: no socket involved."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        return outgoing.read()
    raise AssertionError("a handshake cannot finish without a server")


def refragment(hello: bytes, size: int) -> bytes:
    """The same handshake in records of ``size`` bytes, as TLS allows."""
    body = hello[5 : 5 + int.from_bytes(hello[3:5], "big")]
    out = b""
    for i in range(0, len(body), size):
        piece = body[i : i + size]
        out += bytes([22]) + hello[1:3] + len(piece).to_bytes(2, "big") + piece
    return out


def test_the_server_name_of_a_real_client_hello() -> None:
    hello = client_hello("Allowed.Test")
    assert ep.client_hello_server_name(hello) == "allowed.test"
    assert ep.client_hello_server_name(refragment(hello, 7)) == "allowed.test"


@given(st.data())
def test_a_cut_hello_asks_for_more(data: st.DataObject) -> None:
    hello = client_hello("pypi.org")
    cut = data.draw(st.integers(0, len(hello) - 1))
    assert ep.client_hello_server_name(hello[:cut]) is None


def test_a_hello_without_a_name_is_refused() -> None:
    with pytest.raises(ep.HelloRefused, match="no TLS SNI"):
        ep.client_hello_server_name(client_hello(None))


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x80\x2e\x01\x03\x01",  # SSLv2-style hello
        b"\x16\x03\x01\x00\x00",
        b"\x17\x03\x03\x00\x05hello",
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a ServerHello
    ],
)
def test_what_is_not_a_client_hello_is_refused(data: bytes) -> None:
    with pytest.raises(ep.HelloRefused):
        ep.client_hello_server_name(data)


def _with_extension(hello: bytes, kind: int, payload: bytes) -> bytes:
    """``hello`` with one more extension appended, every length fixed up."""
    record = bytearray(hello[: 5 + int.from_bytes(hello[3:5], "big")])
    body = record[9:]
    c = 2 + 32
    c += 1 + body[c]
    c += 2 + int.from_bytes(body[c : c + 2], "big")
    c += 1 + body[c]
    ext_len = int.from_bytes(body[c : c + 2], "big")
    extra = struct.pack(">HH", kind, len(payload)) + payload
    body[c : c + 2] = (ext_len + len(extra)).to_bytes(2, "big")
    body += extra
    return (
        bytes([22])
        + bytes(record[1:3])
        + (len(body) + 4).to_bytes(2, "big")
        + bytes([1])
        + len(body).to_bytes(3, "big")
        + bytes(body)
    )


def _sni_payload(*names: bytes) -> bytes:
    entries = b"".join(b"\x00" + len(n).to_bytes(2, "big") + n for n in names)
    return len(entries).to_bytes(2, "big") + entries


def test_a_second_server_name_extension_is_refused() -> None:
    hello = _with_extension(client_hello("allowed.test"), 0, _sni_payload(b"blocked.test"))
    with pytest.raises(ep.HelloRefused, match="repeated"):
        ep.client_hello_server_name(hello)


def test_two_names_in_one_extension_are_refused() -> None:
    hello = _with_extension(client_hello(None), 0, _sni_payload(b"allowed.test", b"b.test"))
    with pytest.raises(ep.HelloRefused, match="exactly one"):
        ep.client_hello_server_name(hello)


def test_an_encrypted_client_hello_is_refused() -> None:
    hello = _with_extension(client_hello("allowed.test"), 0xFE0D, b"\x00" * 8)
    with pytest.raises(ep.HelloRefused, match="encrypted"):
        ep.client_hello_server_name(hello)


def test_an_ip_as_server_name_is_refused() -> None:
    hello = _with_extension(client_hello(None), 0, _sni_payload(b"10.0.0.1"))
    with pytest.raises(ep.HelloRefused, match="not a host name"):
        ep.client_hello_server_name(hello)


# --- the proxy's rules ------------------------------------------------------------------


def test_the_rules_the_server_hands_over_are_the_rules_the_proxy_reads() -> None:
    settings = EgressSettings(
        allow=("pypi.org", "*.pythonhosted.org"),
        opened_cidrs=("172.30.0.0/16",),
        hosts={"Mirror.Test": "172.30.0.5"},
    )
    rules = ep.ProxyRules.from_json(settings.proxy_rules())
    assert rules.allow == ("pypi.org", "*.pythonhosted.org")
    assert rules.hosts == {"mirror.test": "172.30.0.5"}
    assert rules.target_refusal("pypi.org", 443, tls=True) is None
    assert rules.target_refusal("pypi.org", 80, tls=False) is None
    assert rules.target_refusal("pypi.org", 22, tls=True) == "port not allowed for CONNECT"
    assert rules.target_refusal("pypi.org", 443, tls=False) == "port not allowed for plain HTTP"
    assert rules.target_refusal("evil.test", 443, tls=True) == "not in allowlist"
    assert rules.target_refusal("151.101.0.223", 443, tls=True) == "IP literal"
    assert rules.target_refusal("[2a04:4e42::223]", 443, tls=True) == "IP literal"
    assert rules.target_refusal("a_b.org", 443, tls=True) == "not a host name"


@pytest.mark.parametrize(
    "bad",
    [
        {"allow": "pypi.org"},
        {"allow": ["*"]},
        {"tls_ports": [0]},
        {"opened_cidrs": ["127.0.0.0/8"]},
        {"hosts": {"x": "1.2.3.4"}},
        {"hosts": {"a.test": "nope"}},
    ],
)
def test_malformed_rules_stop_the_proxy(bad: dict[str, object]) -> None:
    data = {**EgressSettings().proxy_rules(), **bad}
    with pytest.raises((ValueError, TypeError)):
        ep.ProxyRules.from_json(data)
