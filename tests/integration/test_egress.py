"""network="egress", through the real tools, against a fake outside made of our own containers.

Every packet stays on this machine: the "outside" is an internal Docker network of ours
holding a web server answering as allowed.test (plus a package index), another as
blocked.test, and a logging DNS server. The proxy goes out on that network (config
``egress.outbound_network``), finds the names in ``egress.hosts``, may connect to those two
servers only (``egress.opened_cidrs``), and asks our DNS server if it ever resolves.
"""

from __future__ import annotations

import json
import secrets
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from mcp import Client

from outside_host import FAKE, container_ip, docker, wait_ready
from sandbox_client import (
    RUNTIME,
    TEST_RUN_ID,
    TEST_RUN_LABEL,
    call,
    call_error,
    connect,
    eventually,
)

IMAGE = "mcp-sandbox-runtime:0.1"
ALLOWED = ("allowed.test", "allowed-index.test", "gateway.test", "*.wild.test")


@dataclass(frozen=True)
class Outside:
    network: str
    gateway: str
    web_ip: str  # answers as allowed.test (and allowed-index.test)
    blocked_ip: str  # answers as blocked.test
    dns_ip: str
    containers: dict[str, str]

    def events(self, who: str) -> list[str]:
        return docker("logs", self.containers[who]).splitlines()

    def connections(self, who: str) -> list[str]:
        return [e for e in self.events(who) if e.startswith("conn ")]

    def env(self, **extra: str) -> dict[str, str]:
        hosts = {
            "allowed.test": self.web_ip,
            "allowed-index.test": self.web_ip,
            "a.wild.test": self.web_ip,
            "blocked.test": self.blocked_ip,
            # Allowlisted, but its address is the host's side of our network: not opened.
            "gateway.test": self.gateway,
        }
        return {
            "MCP_SANDBOX_EGRESS__ENABLED": "true",
            "MCP_SANDBOX_APPROVAL__EGRESS": "allow",  # asking a human is test_approval's
            "MCP_SANDBOX_EGRESS__ALLOW": json.dumps(ALLOWED),
            "MCP_SANDBOX_EGRESS__HOSTS": json.dumps(hosts),
            "MCP_SANDBOX_EGRESS__OPENED_CIDRS": json.dumps(
                [f"{self.web_ip}/32", f"{self.blocked_ip}/32"]
            ),
            "MCP_SANDBOX_EGRESS__PROXY_DNS": json.dumps([self.dns_ip]),
            "MCP_SANDBOX_EGRESS__OUTBOUND_NETWORK": self.network,
            **extra,
        }


def _labels() -> list[str]:
    return ["--label", "mcp-sandbox.test=egress", "--label", f"{TEST_RUN_LABEL}={TEST_RUN_ID}"]


@pytest.fixture(scope="module")
def outside() -> Iterator[Outside]:
    tag = uuid.uuid4().hex[:8]
    network = f"mcp-sandbox-test-outside-{tag}"
    # internal: nothing on it, the proxy included, has a route off this machine.
    docker("network", "create", "--internal", *_labels(), network)
    names = {role: f"mcp-sandbox-test-{role}-{tag}" for role in ("web", "blocked", "dns")}
    argv = {
        "web": ["web", "allowed.test"],
        "blocked": ["web", "blocked.test"],
        "dns": ["dns"],
    }
    try:
        for role, name in names.items():
            docker(
                "run", "-d", "--name", name, *_labels(), "--network", network,
                "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
                IMAGE, "python3", "-c", FAKE, *argv[role],
            )  # fmt: skip
        wait_ready(names.values())

        gateway = docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", network)
        yield Outside(
            network,
            gateway,
            container_ip(names["web"]),
            container_ip(names["blocked"]),
            container_ip(names["dns"]),
            names,
        )
    finally:
        docker("rm", "-f", *names.values(), check=False)
        docker("network", "rm", network, check=False)


@pytest.fixture(scope="module")
async def eg(outside: Outside) -> AsyncIterator[Client]:
    async with connect("auto", env=outside.env()) as c:
        yield c


async def shell(client: Client, command: str, **kw: object) -> dict[str, Any]:
    return await call(client, "shell", command=command, network="egress", **kw)


# --- the switch -------------------------------------------------------------------------


async def test_egress_is_refused_unless_the_server_enables_it(client: Client) -> None:
    message = await call_error(client, "shell", command="true", network="egress")
    assert "egress.enabled" in message


async def test_an_unknown_network_value_is_one_clear_line(client: Client) -> None:
    message = await call_error(client, "shell", command="true", network="host")
    assert "network" in message and "egress" in message


@pytest.mark.walls
async def test_under_gvisor_egress_is_refused_before_any_container(eg: Client) -> None:
    args = {"command": "true", "network": "egress"}
    if RUNTIME == "runc":
        await call(eg, "shell", **args)
        return
    # runsc does not start on a Docker network here, and a failed start leaves its
    # processes running: no egress sandbox is created at all.
    assert "not available under runsc" in await call_error(eg, "shell", **args)


async def test_network_none_on_an_egress_server_still_has_only_lo(eg: Client) -> None:
    result = await call(
        eg, "shell", command="ls /sys/class/net; env | grep -ci proxy; cat /etc/resolv.conf"
    )
    assert result["stdout"].split("\n")[:2] == ["lo", "0"], result
    assert result["egress_allowed"] == 0 and result["egress_denied"] == []


# --- through the proxy ------------------------------------------------------------------


async def test_http_and_https_to_an_allowed_name_work_and_are_counted(
    eg: Client, outside: Outside
) -> None:
    result = await shell(
        eg,
        "curl -sS --max-time 20 http://allowed.test/x && curl -sSk --max-time 20 https://allowed.test/y",
    )
    assert result["exit_code"] == 0, result
    assert result["stdout"] == (
        "hello from allowed.test host=allowed.test path=/x\n"
        "hello from allowed.test host=allowed.test path=/y\n"
    )
    assert result["egress_allowed"] == 2 and result["egress_denied"] == []


async def test_a_suffix_wildcard_allows_names_under_it(eg: Client) -> None:
    result = await shell(eg, "curl -sS --max-time 20 http://a.wild.test/")
    assert result["stdout"].startswith("hello from allowed.test host=a.wild.test"), result


async def test_a_blocked_name_is_refused_listed_and_never_reached(
    eg: Client, outside: Outside
) -> None:
    before = outside.connections("blocked")
    result = await shell(
        eg,
        "curl -fsS --max-time 10 http://blocked.test/; echo rc=$?; "
        "curl -sSk --max-time 10 https://blocked.test/; echo rc=$?",
    )
    assert "hello" not in result["stdout"] and "rc=0" not in result["stdout"], result
    assert sorted(result["egress_denied"]) == [
        "blocked.test:443 (not in allowlist)",
        "blocked.test:80 (not in allowlist)",
    ]
    assert result["egress_allowed"] == 0
    assert outside.connections("blocked") == before


async def test_pip_installs_a_wheel_through_the_proxy(eg: Client) -> None:
    result = await shell(
        eg,
        "pip install -q --no-cache-dir --disable-pip-version-check --target /tmp/site "
        "--index-url http://allowed-index.test/simple/ --trusted-host allowed-index.test "
        "somepkg && "
        "PYTHONPATH=/tmp/site python3 -c 'import somepkg; print(somepkg.VALUE)'",
        timeout_s=60,
    )
    assert result["exit_code"] == 0, result["stderr"]
    assert result["stdout"].endswith("installed through the proxy\n")
    assert result["egress_allowed"] >= 2 and result["egress_denied"] == []


async def test_a_host_header_naming_another_host_is_refused(eg: Client) -> None:
    result = await shell(eg, "curl -sS --max-time 10 -H 'Host: blocked.test' http://allowed.test/")
    assert "hello" not in result["stdout"]
    assert result["egress_denied"] == ["allowed.test:80 (Host header names another host)"]


RAW_HTTP = r"""
import base64, os, socket, urllib.parse
u = urllib.parse.urlsplit(os.environ["HTTP_PROXY"])
auth = base64.b64encode(f"{u.username}:{u.password}".encode()).decode()
s = socket.create_connection((u.hostname, u.port), 10)
s.sendall(
    f"GET http://allowed.test/first-NONCE HTTP/1.1\r\nProxy-Authorization: Basic {auth}\r\n\r\n"
    "GET http://blocked.test/second-NONCE HTTP/1.1\r\nHost: blocked.test\r\n\r\n"
    "GET /third-NONCE HTTP/1.1\r\nHost: allowed.test\r\n\r\n".encode()
)
data = b""
while chunk := s.recv(65536):
    data += chunk
print(data.count(b"HTTP/1.1 200"), data.decode().rsplit("\r\n\r\n", 1)[-1].strip())
"""


async def test_a_connection_carries_one_request_whatever_follows_it(
    eg: Client, outside: Outside
) -> None:
    nonce = secrets.token_hex(4)
    code = RAW_HTTP.replace("NONCE", nonce)
    result = await call(eg, "run_code", language="python", code=code, network="egress")
    assert result["stdout"] == f"1 hello from allowed.test host=allowed.test path=/first-{nonce}\n"
    seen = [e for e in outside.events("web") + outside.events("blocked") if nonce in e]
    assert seen == [f"req allowed.test /first-{nonce}"]


FLOOD = r"""
import os, socket, time, urllib.parse
u = urllib.parse.urlsplit(os.environ["HTTP_PROXY"])
os.fork()  # two processes: more sockets than one process's nofile, more than the proxy's cap
held = []
for _ in range(700):
    try:
        held.append(socket.create_connection((u.hostname, u.port), 5))
    except OSError:
        break
time.sleep(8)
"""


def _proxy_connections(proxy: str) -> int:
    # Established TCP connections (state 01) in the proxy's namespace.
    table = docker("exec", proxy, "cat", "/proc/net/tcp")
    return sum(1 for line in table.splitlines()[1:] if line.split()[3] == "01")


async def test_idle_connections_of_one_call_do_not_starve_another(eg: Client) -> None:
    await shell(eg, "true")  # the proxy exists
    (proxy,) = _ours("container", "egress-proxy")
    flood: dict[str, object] = {}

    async def hog() -> None:
        flood.update(
            await call(
                eg, "run_code", language="python", code=FLOOD, network="egress", timeout_s=30
            )
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(hog)
        await eventually(lambda: _proxy_connections(proxy) >= 128)
        result = await shell(eg, "curl -sS --max-time 10 http://allowed.test/")
    assert result["stdout"].startswith("hello from allowed.test"), result
    assert flood["timed_out"] is False


# --- TLS: the tunnel carries a handshake for its own host only ---------------------------

TUNNELS = r"""
import base64, json, os, socket, ssl, urllib.parse
u = urllib.parse.urlsplit(os.environ["HTTPS_PROXY"])
auth = base64.b64encode(f"{u.username}:{u.password}".encode()).decode()

def tunnel(target, sni):
    s = socket.create_connection((u.hostname, u.port), 10)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
              f"Proxy-Authorization: Basic {auth}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            return "closed"
        head += chunk
    status = head.split(b" ")[1].decode()
    if status != "200":
        return status
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        t = ctx.wrap_socket(s, server_hostname=sni)
        t.sendall(b"GET / HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n")
        return "tls " + t.recv(4096).decode(errors="replace").split("\r\n\r\n")[-1].strip()
    except (OSError, ssl.SSLError) as e:
        return "cut"

print(json.dumps({
    "matching": tunnel("allowed.test:443", "allowed.test"),
    "other_sni": tunnel("allowed.test:443", "blocked.test"),
    "no_sni": tunnel("allowed.test:443", None),
    "port_22": tunnel("allowed.test:22", "allowed.test"),
    "ip_literal": tunnel("WEB_IP:443", None),
    "ipv6_literal": tunnel("[::1]:443", None),
    "decimal_ip": tunnel("2130706433:443", None),
    "gateway": tunnel("gateway.test:443", "gateway.test"),
    "unresolvable": tunnel("nothing.wild.test:443", "nothing.wild.test"),
}))
"""


async def test_the_tls_handshake_must_name_the_tunnels_host(eg: Client, outside: Outside) -> None:
    web_before = outside.connections("web")
    blocked_before = outside.connections("blocked")
    code = TUNNELS.replace("WEB_IP", outside.web_ip)
    result = await call(eg, "run_code", language="python", code=code, network="egress")
    got = json.loads(result["stdout"])
    assert got == {
        "matching": "tls hello from allowed.test host=allowed.test path=/",
        "other_sni": "cut",
        "no_sni": "cut",
        "port_22": "403",
        "ip_literal": "403",
        "ipv6_literal": "403",
        "decimal_ip": "403",
        "gateway": "403",
        "unresolvable": "403",
    }, result
    assert sorted(result["egress_denied"]) == sorted(
        [
            "allowed.test:443 (TLS SNI names blocked.test)",
            "allowed.test:443 (no TLS SNI)",
            "allowed.test:22 (port not allowed for CONNECT)",
            f"{outside.web_ip}:443 (IP literal)",
            "[::1]:443 (IP literal)",
            "2130706433:443 (IP literal)",
            "gateway.test:443 (resolves to a non-public address)",
            "nothing.wild.test:443 (does not resolve)",
        ]
    )
    assert result["egress_allowed"] == 1
    # The cut tunnels never reached a server: one new connection, the matching one.
    assert len(outside.connections("web")) == len(web_before) + 1
    assert outside.connections("blocked") == blocked_before


async def test_resolve_tricks_and_doh_go_nowhere(eg: Client, outside: Outside) -> None:
    blocked_before = outside.connections("blocked")
    result = await shell(
        eg,
        # Through the proxy, the proxy resolves: --resolve cannot point it elsewhere.
        f"curl -sSk --max-time 10 --resolve allowed.test:443:{outside.blocked_ip} "
        "https://allowed.test/r; "
        # Around the proxy, there is no route.
        f"curl -sSk --max-time 5 --noproxy '*' --resolve allowed.test:443:{outside.blocked_ip} "
        "https://allowed.test/; echo rc=$?; "
        # DNS over HTTPS to a resolver not on the list.
        "curl -sSk --max-time 10 -H 'accept: application/dns-json' "
        "'https://doh.test/dns-query?name=allowed.test&type=A'; echo rc=$?",
    )
    out = result["stdout"]
    assert out.startswith("hello from allowed.test host=allowed.test path=/r\n"), result
    assert "rc=0" not in out
    assert result["egress_denied"] == ["doh.test:443 (not in allowlist)"]
    assert outside.connections("blocked") == blocked_before


# --- around the proxy: nothing ----------------------------------------------------------

PROBES = r"""
import json, os, socket, struct, subprocess, urllib.parse
from concurrent.futures import ThreadPoolExecutor

T = json.loads('TARGETS')
proxy = urllib.parse.urlsplit(os.environ["HTTP_PROXY"]).hostname

def own_gateway():
    for line in open("/proc/net/route").read().splitlines()[1:]:
        f = line.split()
        if f[1] == "00000000":
            return socket.inet_ntoa(struct.pack("<L", int(f[2], 16)))

def tcp(host, port, family=socket.AF_INET):
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            s.connect((host, port))
            return "open"
    except OSError as e:
        return type(e).__name__

def dns(server, name, port=53):
    q = struct.pack(">HHHHHH", 4242, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0\0\1\0\1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(3)
            s.sendto(q, (server, port))
            d = s.recv(512)
            return "rcode %d answers %d" % (d[3] & 15, struct.unpack(">H", d[6:8])[0])
    except OSError as e:
        return type(e).__name__

def icmp(kind):
    try:
        s = socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP)
        s.close()
        return "created"
    except OSError as e:
        return type(e).__name__

def getent(name):
    return subprocess.run(["getent", "hosts", name], capture_output=True).returncode

gw = own_gateway()
jobs = {
    "direct_web": (tcp, T["web"], 80),
    "direct_web_tls": (tcp, T["web"], 443),
    "direct_blocked": (tcp, T["blocked"], 80),
    "direct_dns_tcp": (tcp, T["dns"], 53),
    "host_via_outside_gateway": (tcp, T["gateway"], T["host_port"]),
    "host_via_own_gateway": (tcp, gw, T["host_port"]),
    "own_gateway_ssh": (tcp, gw, 22),
    "proxy_22": (tcp, proxy, 22),
    "proxy_53": (tcp, proxy, 53),
    "proxy_80": (tcp, proxy, 80),
    "proxy_8080": (tcp, proxy, 8080),
    "proxy_3128": (tcp, proxy, 3128),
    "ipv6_link_local": (tcp, "fe80::1%eth0", 80, socket.AF_INET6),
    "udp_dns_direct": (dns, T["dns"], "direct-" + T["nonce"] + ".test"),
    "udp_embedded_dns": (dns, "127.0.0.11", "leak-" + T["nonce"] + ".test"),
    "icmp_dgram": (icmp, socket.SOCK_DGRAM),
    "icmp_raw": (icmp, socket.SOCK_RAW),
    "getent": (getent, "allowed.test"),
}
with ThreadPoolExecutor(len(jobs)) as pool:
    futures = {k: pool.submit(*v) for k, v in jobs.items()}
out = {k: f.result() for k, f in futures.items()}
out["gateway_address"] = gw
resolv = open("/etc/resolv.conf").read().splitlines()
out["resolv_conf"] = [line for line in resolv if line.startswith("nameserver")]
out["nets"] = sorted(os.listdir("/sys/class/net"))
v6 = "/proc/net/if_inet6"
out["ipv6_addresses"] = open(v6).read() if os.path.exists(v6) else ""
print(json.dumps(out))
"""


@pytest.fixture
def host_listener() -> Iterator[tuple[int, socket.socket]]:
    """A TCP listener on this host (every address): what a sandbox must not reach."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen(8)
        s.setblocking(False)
        yield s.getsockname()[1], s


async def test_every_way_around_the_proxy_fails(
    eg: Client, outside: Outside, host_listener: tuple[int, socket.socket]
) -> None:
    port, listener = host_listener
    nonce = secrets.token_hex(4)
    targets = {
        "web": outside.web_ip,
        "blocked": outside.blocked_ip,
        "dns": outside.dns_ip,
        "gateway": outside.gateway,
        "host_port": port,
        "nonce": nonce,
    }
    code = PROBES.replace("TARGETS", json.dumps(targets))
    result = await call(eg, "run_code", language="python", code=code, network="egress")
    got = json.loads(result["stdout"])
    for key in (
        "direct_web",
        "direct_web_tls",
        "direct_blocked",
        "direct_dns_tcp",
        "host_via_outside_gateway",
        "host_via_own_gateway",
        "own_gateway_ssh",
        "proxy_22",
        "proxy_53",
        "proxy_80",
        "proxy_8080",
        "ipv6_link_local",
        "udp_dns_direct",
    ):
        assert got[key] != "open" and not str(got[key]).startswith("rcode"), (key, got)
    assert got["proxy_3128"] == "open"
    assert got["icmp_dgram"] == "PermissionError" and got["icmp_raw"] == "PermissionError"
    # Docker's resolver answers nothing from outside: at most a failure of its own.
    assert got["udp_embedded_dns"] in ("TimeoutError", "rcode 2 answers 0", "rcode 5 answers 0")
    assert got["getent"] == 2
    assert got["resolv_conf"] == ["nameserver 127.0.0.11"]
    assert got["nets"] == ["eth0", "lo"] and got["ipv6_addresses"] == ""
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing came in
    # Our DNS server heard none of the sandbox's queries.
    assert not [e for e in outside.events("dns") if nonce in e]


def test_the_dns_logger_and_host_listener_do_hear_a_container_that_is_not_a_sandbox(
    outside: Outside, host_listener: tuple[int, socket.socket]
) -> None:
    """The control for the test above: the same targets answer an ordinary container."""
    port, listener = host_listener
    nonce = secrets.token_hex(4)
    docker(
        "run", "--rm", *_labels(), "--network", outside.network, "--dns", outside.dns_ip,
        IMAGE, "sh", "-c",
        f"getent hosts control-{nonce}.test; "
        f"python3 -c 'import socket; socket.create_connection((\"{outside.gateway}\", {port}), 5)'",
        check=False,
    )  # fmt: skip
    assert any(f"control-{nonce}.test" in e for e in outside.events("dns"))
    listener.setblocking(True)
    listener.settimeout(5)
    conn, _ = listener.accept()
    conn.close()


async def test_an_egress_sandbox_keeps_every_other_wall(eg: Client) -> None:
    code = (
        "import os, json\n"
        "st = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)\n"
        "def w(p):\n"
        "    try:\n"
        "        open(p, 'w').close(); return True\n"
        "    except OSError:\n"
        "        return False\n"
        "print(json.dumps([os.getuid(), st['CapEff'].strip(), st['CapBnd'].strip(),\n"
        "    st['NoNewPrivs'].strip(), st['Seccomp'].strip(), w('/probe'),\n"
        "    os.path.exists('/var/run/docker.sock')]))\n"
    )
    result = await call(eg, "run_code", language="python", code=code, network="egress")
    assert json.loads(result["stdout"]) == [
        65534,
        "0000000000000000",
        "0000000000000000",
        "1",
        "2",
        False,
        False,
    ]


# --- attribution ------------------------------------------------------------------------


async def test_concurrent_calls_each_list_only_their_own_denials(eg: Client) -> None:
    results: dict[str, dict[str, object]] = {}

    async def one(name: str) -> None:
        results[name] = await shell(
            eg, f"curl -s --max-time 10 http://{name}/; curl -s --max-time 10 http://allowed.test/"
        )

    async with anyio.create_task_group() as tg:
        for name in ("one.denied.test", "two.denied.test"):
            tg.start_soon(one, name)
    for name, result in results.items():
        assert result["egress_denied"] == [f"{name}:80 (not in allowlist)"], result
        assert result["egress_allowed"] == 1


async def test_a_secret_in_a_refused_name_is_scrubbed_like_output(eg: Client) -> None:
    token = "ghp_" + "a1" * 18  # the sandbox chooses the names the proxy refuses
    result = await shell(eg, f"curl -s --max-time 10 http://{token}.denied.test/")
    assert token not in json.dumps(result), result
    [denied] = result["egress_denied"]
    assert denied.startswith("[REDACTED:github-token].denied.test:80 ("), denied


async def test_a_credential_is_dead_once_its_call_ends(eg: Client) -> None:
    first = await shell(eg, "echo $HTTP_PROXY | sed 's#^http://##; s#@.*##'")
    stale = str(first["stdout"]).strip()
    # The same proxy, reached from the next call's network, with the first call's credential.
    result = await shell(
        eg,
        f"P=$(echo $HTTP_PROXY | sed 's#//[^@]*@#//{stale}@#'); "
        "curl -s -o /dev/null -w '%{http_code}' -x $P http://allowed.test/",
    )
    assert result["stdout"] == "407", result
    assert result["egress_allowed"] == 0


async def test_unauthenticated_requests_get_407_and_no_tunnel(eg: Client) -> None:
    result = await shell(
        eg,
        "P=$(echo $HTTP_PROXY | sed 's#//[^@]*@#//#'); "
        "curl -s -o /dev/null -w '%{http_code} ' -x $P http://allowed.test/; "
        "B=$(echo $HTTP_PROXY | sed 's#:[^:@]*@#:bad@#'); "
        "curl -s -o /dev/null -w '%{http_code}' -x $B http://allowed.test/",
    )
    assert result["stdout"] == "407 407", result


# --- lifecycle --------------------------------------------------------------------------


def _ours(kind: str, role: str) -> set[str]:
    what = ["ps", "-aq"] if kind == "container" else ["network", "ls", "-q"]
    return set(
        docker(
            *what,
            "--filter",
            f"label={TEST_RUN_LABEL}={TEST_RUN_ID}",
            "--filter",
            f"label=mcp-sandbox.role={role}",
        ).split()
    )


async def test_the_proxy_is_made_on_first_use_reused_rebuilt_and_removed(
    outside: Outside,
) -> None:
    proxies_before = _ours("container", "egress-proxy")
    async with connect("legacy", env=outside.env()) as c:
        await c.list_tools()
        assert _ours("container", "egress-proxy") == proxies_before, "made before first use"
        first = await shell(c, "curl -sS --max-time 10 http://allowed.test/")
        assert first["stdout"].startswith("hello from allowed.test"), first
        made = _ours("container", "egress-proxy") - proxies_before
        assert len(made) == 1
        assert not _ours("network", "call-network"), "the call's network outlived the call"
        await shell(c, "true")
        assert _ours("container", "egress-proxy") - proxies_before == made, "not reused"
        docker("rm", "-f", *made)
        again = await shell(c, "curl -sS --max-time 10 http://allowed.test/")
        assert again["stdout"].startswith("hello from allowed.test"), again
        remade = _ours("container", "egress-proxy") - proxies_before
        assert len(remade) == 1 and remade != made
    await eventually(lambda: _ours("container", "egress-proxy") == proxies_before)
    assert not _ours("network", "call-network")
    # The outbound network was the operator's (here: the test's), so it stays.
    assert docker("network", "inspect", "-f", "{{.Name}}", outside.network) == outside.network


async def test_leftover_networks_of_a_dead_server_are_removed_at_start_up(
    outside: Outside,
) -> None:
    dead_owner = f"{socket.gethostname()}:1:1"  # pid 1 did not start at 1970-01-01 00:00:01
    name = f"mcp-sandbox-net-leftover{secrets.token_hex(2)}"
    docker(
        "network", "create", "--internal", "--label", "mcp-sandbox=1",
        "--label", f"mcp-sandbox.owner={dead_owner}", "--label", "mcp-sandbox.role=call-network",
        "--label", f"{TEST_RUN_LABEL}={TEST_RUN_ID}", name,
    )  # fmt: skip
    try:
        async with connect("auto", env=outside.env()) as c:
            await c.list_tools()
            await eventually(lambda: not docker("network", "ls", "-q", "--filter", f"name={name}"))
    finally:
        docker("network", "rm", name, check=False)
