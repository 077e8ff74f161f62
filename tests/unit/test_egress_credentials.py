"""Credentials injected at the proxy: the pure substitution rules, config and values."""

from __future__ import annotations

import base64
import datetime
import json
import ssl
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from mcp_sandbox.config.egress import CredentialEntry, EgressSettings
from mcp_sandbox.config.settings import Settings
from mcp_sandbox.egress import ca
from mcp_sandbox.egress.credentials import (
    header_value,
    load_credentials,
    placeholder_env,
    scrub_values,
)
from mcp_sandbox.egress.link import CA_BUNDLE_TARGET, CA_BUNDLE_VARIABLES, EgressLink
from mcp_sandbox.egress.proxy import EgressProxy
from mcp_sandbox.engine.docker_api import DockerApi
from mcp_sandbox.errors import ConfigError
from mcp_sandbox.oversight.anomalies import SessionHistory
from mcp_sandbox.policy import egress_rules as ep
from mcp_sandbox.policy.limits import Limits, RunPlan
from mcp_sandbox.sandbox.spec import build_spec, with_egress
from mcp_sandbox.service import make_scrubber

KEY = b"k" * 32
RUN = "0123456789ab"
OTHER_RUN = "ba9876543210"
TOKEN = "ghp_realSecretValue0123456789abcdefXYZ"
GH = ep.CredentialRule("github", "api.github.test", "authorization", f"Bearer {TOKEN}", False)
KEYED = ep.CredentialRule("other", "api.other.test", "x-api-key", "k-" + TOKEN, True)
RULES = (GH, KEYED)
# Asked of a credential host, so that the proxy can mask a value the host reflects.
IDENTITY = ("Accept-Encoding", "identity")


def ph(name: str = "github", run: str = RUN) -> str:
    return ep.make_placeholder(KEY, run, name)


def inject(
    host: str,
    headers: list[tuple[str, str]],
    *,
    tls: bool = True,
    elsewhere: tuple[str, ...] = (),
    run: str = RUN,
) -> ep.Injected:
    return ep.inject_credentials(
        KEY,
        run,
        host,
        tls=tls,
        headers=headers,
        seen_elsewhere=elsewhere,
        credentials=RULES,
    )


# --- placeholders -----------------------------------------------------------------------


def test_a_placeholder_is_per_call_per_name_and_holds_no_part_of_the_value() -> None:
    assert ph() != ph(run=OTHER_RUN) != ph("other")
    assert ph().startswith(ep.PLACEHOLDER_PREFIX) and TOKEN not in ph()
    assert ep.placeholders_in(f"Bearer {ph().upper()}") == {ph()}
    assert ep.make_placeholder(b"x" * 32, RUN, "github") != ph()


def test_a_placeholder_fits_one_dns_label() -> None:
    assert ep.normalize_host(ph() + ".wild.test") is not None


# --- substitution: exact header, exact host ---------------------------------------------


def test_the_configured_header_to_the_exact_host_gets_the_real_value() -> None:
    out = inject("api.github.test", [("Authorization", f"Bearer {ph()}"), ("Accept", "*/*")])
    assert out.headers == (("Authorization", f"Bearer {TOKEN}"), ("Accept", "*/*"), IDENTITY)
    assert out.used == ("github",)


def test_the_whole_header_is_the_configured_value_whatever_surrounds_the_placeholder() -> None:
    out = inject("api.github.test", [("authorization", f"token {ph()} extra")])
    assert out.headers == (("authorization", f"Bearer {TOKEN}"), IDENTITY)


def test_a_placeholder_as_a_basic_auth_password_is_found() -> None:
    basic = base64.b64encode(f"x-access-token:{ph()}".encode()).decode()
    out = inject("api.github.test", [("Authorization", f"Basic {basic}")])
    assert out.headers == (("Authorization", f"Bearer {TOKEN}"), IDENTITY)


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Token", f"Bearer {ph()}")],  # another header
        [("Authorization", "Bearer ghp_notaplaceholder")],  # no placeholder at all
        [],
    ],
)
def test_nothing_is_substituted_outside_the_configured_header(
    headers: list[tuple[str, str]],
) -> None:
    out = inject("api.github.test", headers)
    assert out.headers == (*headers, IDENTITY) and out.used == ()
    assert all(TOKEN not in v for _, v in out.headers)


def test_no_substitution_in_the_url_or_the_body() -> None:
    out = inject(
        "api.github.test",
        [("Accept", "*/*")],
        elsewhere=(f"/repos?token={ph()}", f'{{"token": "{ph()}"}}'),
    )
    assert out.headers == (("Accept", "*/*"), IDENTITY) and out.used == ()


def test_a_host_that_only_resembles_the_entry_gets_nothing_and_is_refused() -> None:
    for host in ("api.github.test.evil.test", "github.test", "x.api.github.test"):
        with pytest.raises(ep.PlaceholderRefused, match="credential placeholder to another"):
            inject(host, [("Authorization", f"Bearer {ph()}")])


@pytest.mark.parametrize(
    "where",
    ["header", "other-header", "url", "body", "basic", "upper"],
)
def test_a_placeholder_to_another_host_is_refused_wherever_it_rides(where: str) -> None:
    p = ph()
    basic = base64.b64encode(f"u:{p}".encode()).decode()
    headers = {
        "header": [("Authorization", f"Bearer {p}")],
        "other-header": [("User-Agent", f"x/{p}")],
        "basic": [("Authorization", f"Basic {basic}")],
        "upper": [("Authorization", p.upper())],
    }.get(where, [])
    elsewhere = {"url": (f"/?q={p}",), "body": (f"data={p}",)}.get(where, ())
    with pytest.raises(ep.PlaceholderRefused):
        inject("evil.test", headers, elsewhere=elsewhere)


def test_one_credentials_placeholder_to_another_credentials_host_is_refused() -> None:
    with pytest.raises(ep.PlaceholderRefused):
        inject("api.other.test", [("X-Api-Key", ph("github"))])


def test_another_calls_placeholder_or_a_forgery_is_refused_even_to_the_right_host() -> None:
    for fake in (ph(run=OTHER_RUN), ep.PLACEHOLDER_PREFIX + RUN + "-" + "0" * 32):
        with pytest.raises(ep.PlaceholderRefused):
            inject("api.github.test", [("Authorization", f"Bearer {fake}")])


def test_plain_http_gets_a_value_only_when_its_entry_allows_it() -> None:
    kept = inject("api.github.test", [("Authorization", f"Bearer {ph()}")], tls=False)
    assert kept.used == () and TOKEN not in kept.headers[0][1]
    sent = inject("api.other.test", [("X-Api-Key", ph("other"))], tls=False)
    assert sent.headers == (("X-Api-Key", "k-" + TOKEN), IDENTITY) and sent.used == ("other",)


def test_the_credential_header_twice_is_a_bad_request() -> None:
    with pytest.raises(ep.BadRequest):
        inject("api.github.test", [("Authorization", ph()), ("authorization", ph())])
    with pytest.raises(ep.BadRequest):  # the code's own value beside the real one
        inject("api.github.test", [("Authorization", ph()), ("authorization", "mine")])


def test_a_credential_host_is_asked_for_uncompressed_answers() -> None:
    out = inject("api.github.test", [("Accept-Encoding", "gzip, br")])
    assert out.headers == (IDENTITY,)


@given(
    parts=st.lists(
        st.sampled_from(["a", "Bearer ", TOKEN[:7], TOKEN[7:], TOKEN, "\n"]), max_size=12
    ),
    cuts=st.lists(st.integers(0, 400), max_size=6),
)
def test_a_reflected_value_is_masked_wherever_the_stream_is_cut(
    parts: list[str], cuts: list[int]
) -> None:
    data = "".join(parts).encode()
    mask = ep.ResponseMask((*GH.masked, TOKEN))
    out = b""
    last = 0
    for cut in sorted(c for c in cuts if c <= len(data)):
        out += mask.feed(data[last:cut])
        last = cut
    out += mask.feed(data[last:]) + mask.end()
    assert len(out) == len(data) and TOKEN.encode() not in out
    whole = f"Bearer {TOKEN}".encode()  # the header value first: the longest wins
    stars = data.replace(whole, b"*" * len(whole)).replace(TOKEN.encode(), b"*" * len(TOKEN))
    assert out == stars


def test_a_connect_head_holding_a_placeholder_for_another_host_is_refused() -> None:
    assert ep.placeholder_refusal([f"CONNECT {ph()}.wild.test:443"], "x.wild.test", KEY, RUN, RULES)
    assert (
        ep.placeholder_refusal(["CONNECT api.github.test:443"], "api.github.test", KEY, RUN, RULES)
        is None
    )
    assert (
        ep.placeholder_refusal([f"User-Agent: {ph()}"], "api.github.test", KEY, RUN, RULES) is None
    )


@given(text=st.text(max_size=200))
def test_without_a_placeholder_nothing_changes(text: str) -> None:
    headers = [("Authorization", text), ("X", text)]
    if ep.PLACEHOLDER_PREFIX in text.lower():
        return
    out = inject("api.github.test", headers, elsewhere=(text,))
    assert out.headers == (*headers, IDENTITY) and out.used == ()
    assert inject("elsewhere.test", headers, elsewhere=(text,)).headers == tuple(headers)


def test_the_upstream_head_carries_the_substituted_headers_and_drops_hop_by_hop() -> None:
    req = ep.parse_origin_request_head(
        f"GET /user HTTP/1.1\r\nHost: api.github.test\r\nAuthorization: {ph()}\r\n"
        "Proxy-Authorization: Basic eDp5\r\n\r\n".encode(),
        "api.github.test",
        443,
    )
    out = inject(req.host, list(req.headers))
    head = ep.upstream_head(req, req.host, 0, headers=out.headers, default_port=443).decode()
    assert head.startswith("GET /user HTTP/1.1\r\nHost: api.github.test\r\n")
    assert f"Authorization: Bearer {TOKEN}\r\n" in head
    assert "Proxy-Authorization" not in head and ph() not in head


@pytest.mark.parametrize(
    "head",
    [
        b"GET http://api.github.test/ HTTP/1.1\r\n\r\n",  # absolute form: the tunnel names it
        b"CONNECT api.github.test:443 HTTP/1.1\r\n\r\n",
        b"GET * HTTP/1.1\r\n\r\n",
        b"GET /a HTTP/1.1\r\nBad Header\r\n\r\n",
    ],
)
def test_a_request_inside_the_tunnel_is_origin_form_and_strict(head: bytes) -> None:
    with pytest.raises(ep.BadRequest):
        ep.parse_origin_request_head(head, "api.github.test", 443)


def test_a_proxy_credential_rule_refuses_what_could_split_a_request() -> None:
    good = {"name": "g", "host": "api.test", "header": "Authorization", "value": "Bearer x"}
    assert ep.CredentialRule.from_json(good).header == "authorization"
    for bad in ({"value": "x\r\nHost: evil.test"}, {"header": "Host"}, {"host": "1.2.3.4"}):
        with pytest.raises((ValueError, TypeError)):
            ep.CredentialRule.from_json({**good, **bad})


# --- config -----------------------------------------------------------------------------


def entry(**kw: object) -> dict[str, object]:
    return {"name": "github", "host": "api.github.test", "value_env": "GH_TOKEN", **kw}


def settings(*credentials: dict[str, object], **kw: object) -> EgressSettings:
    return EgressSettings(allow=["api.github.test", "*.wild.test"], credentials=credentials, **kw)


def test_a_credential_host_must_be_allowed() -> None:
    with pytest.raises(ValidationError, match=r"not in egress.allow"):
        settings(entry(host="api.elsewhere.test"))
    assert settings(entry(host="a.wild.test")).credentials[0].host == "a.wild.test"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"host": "*.wild.test"}, "one exact host"),
        ({"host": "10.0.0.1"}, "one exact host"),
        ({"name": "GitHub"}, "lower-case"),
        ({"header": "Host"}, "cannot carry a credential"),
        ({"header": "Proxy-Authorization"}, "cannot carry a credential"),
        ({"header": "Bad Header"}, "cannot carry a credential"),
        ({"format": "Bearer"}, r"\{value\} once"),
        ({"format": "{value}{value}"}, r"\{value\} once"),
        ({"format": "Bearer {value}\r\nX: y"}, "printable ASCII"),
        ({"value_file": "/x"}, "exactly one of value_env, value_file"),
        ({"value_env": None}, "exactly one of value_env, value_file"),
        ({"basic_user": "a:b"}, "without ':'"),
        ({"basic_user": "u", "format": "X {value}"}, "exclude each other"),
        ({"typo": 1}, "Extra inputs"),
    ],
)
def test_a_bad_credential_entry_stops_start_up_saying_why(
    bad: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        settings(entry(**bad))


def test_names_and_places_are_unique() -> None:
    with pytest.raises(ValidationError, match="used twice"):
        settings(entry(), entry(value_env="OTHER"))
    with pytest.raises(ValidationError, match="same header of the same host"):
        settings(entry(), entry(name="second", header="authorization"))


def test_credentials_come_from_the_environment_as_a_json_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MCP_SANDBOX_EGRESS__ALLOW", '["api.github.test"]')
    monkeypatch.setenv(
        "MCP_SANDBOX_EGRESS__CREDENTIALS",
        '[{"name": "github", "host": "api.github.test", "value_env": "GH_TOKEN"}]',
    )
    assert Settings().egress.credentials[0].variable == "MCP_SANDBOX_CREDENTIAL_GITHUB"


# --- values -----------------------------------------------------------------------------


def test_a_missing_value_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"egress.credentials\[0\] \(github\).*GH_TOKEN"):
        load_credentials(settings(entry()), {})
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match=r"value_file .*nope cannot be read"):
        load_credentials(settings(entry(value_env=None, value_file=str(missing))), {})
    with pytest.raises(ConfigError, match="line break"):
        load_credentials(settings(entry()), {"GH_TOKEN": "a\nb"})


def test_values_come_from_the_environment_or_a_file(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    (env,) = load_credentials(settings(entry()), {"GH_TOKEN": TOKEN})
    (file,) = load_credentials(settings(entry(value_env=None, value_file=str(f))), {})
    assert env.value == file.value == TOKEN
    assert env.header_value == f"Bearer {TOKEN}"


def test_header_values_follow_the_format_or_basic_auth() -> None:
    assert header_value(CredentialEntry(**entry(format="token {value}")), "s") == "token s"
    basic = header_value(CredentialEntry(**entry(basic_user="bob")), "s3cret")
    assert basic == "Basic " + base64.b64encode(b"bob:s3cret").decode()


def test_the_sandbox_sees_placeholders_only() -> None:
    loaded = load_credentials(settings(entry()), {"GH_TOKEN": TOKEN})
    env = placeholder_env(loaded, KEY, RUN)
    assert env == {"MCP_SANDBOX_CREDENTIAL_GITHUB": ph()}
    assert TOKEN not in repr(env)


def test_the_real_values_join_the_scrubber_plain_and_encoded() -> None:
    loaded = load_credentials(settings(entry(basic_user="bob")), {"GH_TOKEN": TOKEN})
    assert set(scrub_values(loaded).values()) == {TOKEN, loaded[0].header_value}
    s = Settings(egress=settings(entry()))
    scrub = make_scrubber(s, {"GH_TOKEN": TOKEN}).scrub
    for shown in (TOKEN, base64.b64encode(TOKEN.encode()).decode(), TOKEN.encode().hex()):
        assert TOKEN not in scrub(f"got {shown}") and shown not in scrub(f"got {shown}")


# --- the CA, the leaves, what the proxy and the sandbox get ------------------------------


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> None:
    """A TLS handshake between two in-memory ends. Raises ssl.SSLError."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=name)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(10):
        for end, key in ((c, "c"), (s, "s")):
            if not done[key]:
                try:
                    end.do_handshake()
                    done[key] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def _server(leaf: ca.Leaf, tmp_path: Path) -> ssl.SSLContext:
    path = tmp_path / "leaf.pem"
    path.write_text(leaf.key_pem + leaf.cert_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(path)
    return context


def test_a_leaf_verifies_for_its_one_host_against_our_ca_only(tmp_path: Path) -> None:
    authority = ca.load_or_create(tmp_path / "ca")
    leaf = ca.mint_leaf(authority, "api.github.test")
    server = _server(leaf, tmp_path)
    _handshake(server, ssl.create_default_context(cadata=authority.cert_pem), "api.github.test")
    with pytest.raises(ssl.SSLCertVerificationError):  # another name
        _handshake(server, ssl.create_default_context(cadata=authority.cert_pem), "evil.test")
    other = ca.new_authority()
    with pytest.raises(ssl.SSLCertVerificationError):  # a program that pins another CA
        _handshake(server, ssl.create_default_context(cadata=other.cert_pem), "api.github.test")
    assert leaf.not_after - datetime.datetime.now(datetime.UTC) <= ca.LEAF_LIFETIME


def test_the_ca_is_made_once_with_a_private_key_and_rotated_on_demand(tmp_path: Path) -> None:
    where = tmp_path / "state" / "egress-ca"
    first = ca.load_or_create(where)
    assert ca.load_or_create(where) == first
    assert stat.S_IMODE(where.stat().st_mode) == 0o700
    assert stat.S_IMODE((where / ca.CA_KEY).stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in (where / ca.CA_CERT).read_text()
    bundle = ca.write_bundle(where, first, "ROOTS\n")
    assert bundle.read_text() == "ROOTS\n" + first.cert_pem
    assert "PRIVATE" not in bundle.read_text()
    rotated = ca.rotate(where)
    assert rotated != first and ca.load_or_create(where) == rotated
    assert ca.write_bundle(where, rotated, "") != bundle  # the old server's bundle stays


def test_cli_ca_rotate_replaces_the_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mcp_sandbox import cli

    monkeypatch.setenv("MCP_SANDBOX_EGRESS__CA_DIR", str(tmp_path))
    first = ca.load_or_create(tmp_path)
    assert cli.main(["ca", "rotate"]) == 0
    assert ca.load_or_create(tmp_path) != first


@dataclass
class RecordingDocker:
    runs: list[dict[str, Any]] = field(default_factory=list)
    state: dict[str, tuple[bool, dict[str, str]]] = field(default_factory=dict)

    def container_state(self, name: str) -> tuple[bool, dict[str, str]] | None:
        return self.state.get(name)

    def remove(self, name: str) -> None:
        self.state.pop(name, None)

    def network_exists(self, name: str) -> bool:
        return True

    def connect_network(self, network: str, container: str) -> str:
        return "10.9.0.2"

    def create_network(self, name: str, **kw: Any) -> None:
        pass

    def disconnect_network(self, network: str, container: str) -> None:
        pass

    def remove_network(self, name: str) -> None:
        pass

    def run_detached(self, create: dict[str, Any], host: dict[str, Any]) -> None:
        self.runs.append(create)
        self.state[create["name"]] = (True, create["labels"])

    def exec_output(self, container: str, argv: list[str], user: str) -> tuple[int, bytes]:
        if argv[-1] == "ping":
            return 0, b'{"ok": true}'
        return 0, b'{"allowed": 1, "denied": [], "credentials": ["github", "forged"]}'


async def test_the_proxy_gets_values_and_leaves_and_the_sandbox_placeholders_and_a_bundle(
    tmp_path: Path,
) -> None:
    docker = RecordingDocker()
    proxy = EgressProxy(
        settings(entry(basic_user="bob"), enabled=True, ca_dir=tmp_path),
        cast(DockerApi, docker),
        owner="h:1:2",
        seccomp_json=lambda: "{}",
        extra_labels={},
        credentials=load_credentials(settings(entry(basic_user="bob")), {"GH_TOKEN": TOKEN}),
    )
    async with proxy.attached(RUN, 30, anyio.CapacityLimiter(4)) as call:
        link = call.link
    assert call.tally is not None and call.tally.credentials == ("github",)
    (create,) = docker.runs
    env = dict(e.split("=", 1) for e in create["environment"])
    secrets = json.loads(env["MCP_SANDBOX_EGRESS_SECRETS"])
    (sent,) = secrets["credentials"]
    assert ep.CredentialRule.from_json(sent).value == header_value(
        CredentialEntry(**entry(basic_user="bob")), TOKEN
    )
    assert set(secrets["leaves"]) == {"api.github.test"}
    authority = ca.load_or_create(tmp_path)
    assert authority.key_pem not in json.dumps(create)  # the CA key stays with the server
    assert TOKEN not in json.dumps(create["labels"])
    # The sandbox: a placeholder, the bundle read-only, no value, no key.
    sandbox = with_egress(
        build_spec(
            RunPlan(argv=("true",), limits=Limits(), stdin=None),
            image="i",
            run_id=RUN,
            owner="h:1:2",
            seccomp_json="{}",
            extra_env={},
            runtime=None,
        ),
        link,
    )
    kwargs = json.dumps([sandbox.create_kwargs(), sandbox.host_config_kwargs()])
    assert TOKEN not in kwargs and base64.b64encode(TOKEN.encode()).decode() not in kwargs
    assert "PRIVATE KEY" not in kwargs
    sandbox_env = dict(sandbox.env)
    assert sandbox_env["MCP_SANDBOX_CREDENTIAL_GITHUB"] == ep.make_placeholder(
        proxy._key, RUN, "github"
    )
    for variable in CA_BUNDLE_VARIABLES:
        assert sandbox_env[variable] == CA_BUNDLE_TARGET
    (mount,) = sandbox.mounts
    assert mount.target == CA_BUNDLE_TARGET and mount.read_only
    assert (await anyio.Path(mount.source).read_text()).endswith(authority.cert_pem)


def test_without_credentials_the_sandbox_trust_is_left_alone() -> None:
    link = EgressLink("net", "http://u:p@10.0.0.2:3128")
    assert not any(v in link.env() for v in CA_BUNDLE_VARIABLES)
    assert not any(k.startswith(ep.CREDENTIAL_ENV_PREFIX) for k in link.env())


def test_a_placeholder_refusal_is_flagged_in_the_audit() -> None:
    history = SessionHistory()
    flags = history.flags("s", (), "exited", [f"evil.test:443 ({ep.PLACEHOLDER_REFUSAL})"], "")
    assert "credential_placeholder_to_another_host" in flags
    assert "credential_placeholder_to_another_host" not in history.flags(
        "s", (), "exited", ["evil.test:443 (not in allowlist)"], ""
    )


def test_start_up_stops_naming_the_key_when_a_value_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mcp_sandbox import cli

    monkeypatch.setenv("MCP_SANDBOX_EGRESS__ALLOW", '["api.github.test"]')
    monkeypatch.setenv(
        "MCP_SANDBOX_EGRESS__CREDENTIALS",
        '[{"name": "github", "host": "api.github.test", "value_env": "NOT_SET_ANYWHERE"}]',
    )
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    assert cli.main(["doctor"]) == 2
    err = capsys.readouterr().err
    assert "egress.credentials[0] (github): value_env NOT_SET_ANYWHERE is not set" in err


def test_a_server_whose_runs_are_a_launchers_starts_without_the_values(tmp_path: Path) -> None:
    s = Settings(egress=settings(entry()), launcher_socket=tmp_path / "sock")
    assert make_scrubber(s, {}).scrub("x") == "x"
    with pytest.raises(ConfigError):
        make_scrubber(Settings(egress=settings(entry())), {})


def test_servers_sharing_a_state_dir_make_one_ca(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda _: ca.load_or_create(tmp_path), range(8)))
    assert len(set(made)) == 1 and ca.load_or_create(tmp_path) == made[0]


def test_the_sandboxes_bundle_holds_system_roots_beside_our_ca() -> None:
    assert "BEGIN CERTIFICATE" in ca.system_roots()  # the test host has roots


def test_a_redacted_credential_is_named_by_its_entry() -> None:
    # A name that does not look secret: the entry alone makes the value known.
    s = Settings(egress=settings(entry(value_env="GH_VALUE")))
    scrub = make_scrubber(s, {"GH_VALUE": TOKEN}).scrub
    assert scrub(f"x {TOKEN} y") == "x [REDACTED:known:egress.credentials.github] y"
