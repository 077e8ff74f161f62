"""The egress lifecycle and specs, against a fake Docker seam: no daemon, no network."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from pydantic import ValidationError

from fake_engine import FakeEngine
from mcp_sandbox.config.egress import EgressSettings
from mcp_sandbox.config.settings import Settings, load_settings
from mcp_sandbox.egress.link import EgressLink
from mcp_sandbox.egress.proxy import (
    DIGEST_LABEL,
    UNREPORTED,
    EgressProxy,
    proxy_container,
    reap_networks,
    rules_digest,
)
from mcp_sandbox.errors import RequestRejected, SandboxUnavailable
from mcp_sandbox.policy import egress_rules as ep
from mcp_sandbox.policy.arguments import RunCodeArgs, ShellArgs
from mcp_sandbox.policy.limits import Limits, RunPlan
from mcp_sandbox.sandbox.spec import build_spec, with_egress
from mcp_sandbox.service import SandboxService

OWNER = "host:1:2"


def _proxy(fake: FakeEngine, **settings: Any) -> EgressProxy:
    return EgressProxy(
        EgressSettings(enabled=True, **settings),
        fake,
        owner=OWNER,
        seccomp_json=lambda: '{"defaultAction":"SCMP_ACT_ERRNO"}',
        extra_labels={"team": "x", "mcp-sandbox.owner": "forged"},
    )


@pytest.fixture
def fake() -> Iterator[FakeEngine]:
    yield FakeEngine()


async def _one_call(proxy: EgressProxy, run_id: str = "0123456789ab") -> EgressLink:
    threads = anyio.CapacityLimiter(4)
    async with proxy.attached(run_id, 30, threads) as call:
        link = call.link
    assert call.tally is not None
    return link


# --- lifecycle --------------------------------------------------------------------------


async def test_first_use_makes_the_outbound_network_and_the_proxy(fake: FakeEngine) -> None:
    proxy = _proxy(fake)
    assert fake.calls == []  # nothing at construction
    await _one_call(proxy)
    assert fake.calls[:2] == [
        f"create_network {proxy.outbound} internal=False",
        f"run {proxy.container}",
    ]
    labels = fake.box(proxy.container).labels
    assert labels["mcp-sandbox"] == "1" and labels["mcp-sandbox.owner"] == OWNER
    assert labels["team"] == "x"


async def test_the_proxy_is_reused_while_it_runs_with_the_same_rules(fake: FakeEngine) -> None:
    proxy = _proxy(fake)
    await _one_call(proxy)
    await _one_call(proxy, "0123456789ac")
    assert [c for c in fake.calls if c.startswith("run ")] == [f"run {proxy.container}"]


@pytest.mark.parametrize("why", ["stopped", "rules changed"])
async def test_a_stopped_or_outdated_proxy_is_replaced(fake: FakeEngine, why: str) -> None:
    proxy = _proxy(fake)
    running, digest = (False, rules_digest(proxy.settings)) if why == "stopped" else (True, "old")
    fake.put_container(proxy.container, running=running, labels={DIGEST_LABEL: digest})
    fake.networks[proxy.outbound] = {}
    await _one_call(proxy)
    assert fake.calls[:2] == [f"remove {proxy.container}", f"run {proxy.container}"]


def test_the_digest_follows_the_allowlist_and_the_image() -> None:
    base = EgressSettings()
    assert rules_digest(base) == rules_digest(EgressSettings())
    assert rules_digest(base) != rules_digest(EgressSettings(allow=("pypi.org",)))
    assert rules_digest(base) != rules_digest(EgressSettings(proxy_image="other:1"))
    assert rules_digest(base) != rules_digest(EgressSettings(tls_ports=(443, 8443)))


async def test_a_configured_outbound_network_is_used_never_made(fake: FakeEngine) -> None:
    proxy = _proxy(fake, outbound_network="corp-egress")
    with pytest.raises(SandboxUnavailable, match="corp-egress"):
        await _one_call(proxy)
    fake.networks["corp-egress"] = {}
    await _one_call(proxy)
    assert not [c for c in fake.calls if "create_network corp-egress" in c]


async def test_each_call_gets_its_own_internal_network_removed_after(fake: FakeEngine) -> None:
    proxy = _proxy(fake)
    threads = anyio.CapacityLimiter(4)
    async with proxy.attached("0123456789ab", 30, threads) as call:
        net = call.link.network
        assert net == "mcp-sandbox-net-0123456789ab"
        assert (net, proxy.container) in fake.attached
        labels = fake.networks[net]
        assert labels["opt:com.docker.network.bridge.inhibit_ipv4"] == "true"
        assert f"create_network {net} internal=True" in fake.calls
    assert net not in fake.networks and (net, proxy.container) not in fake.attached
    assert call.tally is not None
    assert call.tally.allowed == 2
    assert call.tally.denied == ("evil.test:443 (not in allowlist)",)
    assert "take 0123456789ab" in fake.calls


async def test_the_proxy_url_holds_a_live_credential_for_this_call_only(fake: FakeEngine) -> None:
    proxy = _proxy(fake)
    link = await _one_call(proxy)
    user_pass, _, where = link.proxy_url.removeprefix("http://").partition("@")
    user, _, password = user_pass.partition(":")
    assert where == "10.9.0.2:3128" and user == "0123456789ab"
    key = proxy._key  # the proxy container gets the same key
    assert ep.check_credentials(key, user, password, 0) is not None
    assert ep.check_credentials(key, "0123456789ac", password, 0) is None


async def test_a_silent_proxy_gives_a_result_that_says_so(fake: FakeEngine) -> None:
    proxy = _proxy(fake)
    await _one_call(proxy)
    fake.proxy_answers = False
    threads = anyio.CapacityLimiter(4)
    async with proxy.attached("0123456789ac", 30, threads) as call:
        pass
    assert call.tally == UNREPORTED


@pytest.mark.parametrize(
    "tally", [b"not json", b'{"allowed": "2", "denied": []}', b'{"denied": []}', b"[]"]
)
async def test_a_garbled_tally_is_unreported(fake: FakeEngine, tally: bytes) -> None:
    fake.tally = tally
    proxy = _proxy(fake)
    threads = anyio.CapacityLimiter(4)
    async with proxy.attached("0123456789ab", 30, threads) as call:
        pass
    assert call.tally == UNREPORTED


async def test_a_huge_tally_is_cut(fake: FakeEngine) -> None:
    fake.tally = json.dumps({"allowed": 1, "denied": ["x" * 1000] * 500}).encode()
    proxy = _proxy(fake)
    threads = anyio.CapacityLimiter(4)
    async with proxy.attached("0123456789ab", 30, threads) as call:
        pass
    assert call.tally is not None
    assert len(call.tally.denied) <= 21 and all(len(d) <= 200 for d in call.tally.denied)


async def test_networks_of_dead_servers_are_reaped_and_ours_only_at_exit(
    fake: FakeEngine,
) -> None:
    fake.networks = {
        "mine": {"mcp-sandbox.owner": OWNER},
        "dead": {"mcp-sandbox.owner": "not-this-host-at-all:1:1"},
    }
    # Another host's network, made long ago (created at 0): past the grace, it goes.
    threads = anyio.CapacityLimiter(4)
    await reap_networks(fake, OWNER, threads, own_too=False)
    assert set(fake.networks) == {"mine"}
    await reap_networks(fake, OWNER, threads, own_too=True)
    assert fake.networks == {}


# --- the proxy container and the sandbox spec --------------------------------------------


def test_the_proxy_container_keeps_the_walls() -> None:
    create, host = proxy_container(
        EgressSettings(proxy_dns=("172.30.0.9",)),
        name="p",
        network="out",
        key=b"k" * 32,
        seccomp_json="{}",
        labels={"mcp-sandbox": "1"},
    )
    assert create["user"] == "65534:65534" and create["use_config_proxy"] is False
    assert "ports" not in create and "ports" not in host and "port_bindings" not in host
    assert host["read_only"] is True and host["cap_drop"] == ["ALL"]
    assert host["privileged"] is False and "no-new-privileges:true" in host["security_opt"]
    assert any(o.startswith("seccomp=") for o in host["security_opt"])
    assert host["sysctls"]["net.ipv4.ip_forward"] == "0"
    assert host["sysctls"]["net.ipv6.conf.all.disable_ipv6"] == "1"
    assert host["network_mode"] == "out" and host["dns"] == ["172.30.0.9"]
    assert host["log_config"]["config"]["max-size"]
    assert not host.get("binds") and not host.get("devices")
    rules = json.loads(create["environment"][0].split("=", 1)[1])
    assert ep.ProxyRules.from_json(rules).allow == EgressSettings().allow


def _plan() -> RunPlan:
    return RunPlan(argv=("sh", "-c", "true"), limits=Limits(), stdin=None)


def _spec(**env: str) -> Any:
    return build_spec(
        _plan(),
        image="img:1",
        run_id="0123456789ab",
        owner=OWNER,
        seccomp_json="{}",
        extra_env=env,
        runtime=None,
    )


def test_an_egress_sandbox_joins_only_its_network_with_a_resolver_that_goes_nowhere() -> None:
    link = EgressLink("mcp-sandbox-net-x", "http://u:p@10.9.0.2:3128")
    spec = with_egress(_spec(HTTP_PROXY="http://attacker:1", NO_PROXY="*"), link)
    create, host = spec.create_kwargs(), spec.host_config_kwargs()
    assert create["network_disabled"] is False
    assert create["networking_config"] == {"EndpointsConfig": {"mcp-sandbox-net-x": {}}}
    assert host["network_mode"] == "mcp-sandbox-net-x"
    assert host["dns"] == ["127.0.0.1"]
    assert host["sysctls"]["net.ipv4.ping_group_range"] == "1 0"
    assert host["sysctls"]["net.ipv6.conf.all.disable_ipv6"] == "1"
    env = dict(spec.env)
    assert env["HTTP_PROXY"] == env["https_proxy"] == "http://u:p@10.9.0.2:3128"
    assert env["NO_PROXY"] == ep.NO_PROXY  # the configured env cannot redirect it
    assert host["cap_drop"] == ["ALL"] and host["read_only"] is True


def test_a_sandbox_without_egress_has_no_network_at_all() -> None:
    create, host = _spec().create_kwargs(), _spec().host_config_kwargs()
    assert create["network_disabled"] is True and "networking_config" not in create
    assert "network_mode" not in host and "dns" not in host and "sysctls" not in host


# --- settings and the switch ------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"allow": ("*",)},
        {"allow": ("10.0.0.1",)},
        {"tls_ports": (0,)},
        {"tls_ports": (443,), "http_ports": (443,)},
        {"opened_cidrs": ("0.0.0.0/0",)},
        {"opened_cidrs": ("169.254.0.0/16",)},
        {"hosts": {"x": "1.2.3.4"}},
        {"hosts": {"a.test": "not-an-ip"}},
        {"proxy_dns": ("dns.test",)},
        {"alow": ("pypi.org",)},
    ],
)
def test_bad_egress_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        EgressSettings(**bad)


def test_egress_is_off_by_default_and_set_by_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().egress.enabled is False
    monkeypatch.setenv("MCP_SANDBOX_EGRESS__ENABLED", "true")
    monkeypatch.setenv("MCP_SANDBOX_EGRESS__ALLOW", '["Mirror.Test", "*.cdn.test"]')
    monkeypatch.setenv("MCP_SANDBOX_EGRESS__HOSTS", '{"mirror.test": "10.1.2.3"}')
    s = load_settings()
    assert s.egress.enabled and s.egress.allow == ("mirror.test", "*.cdn.test")
    assert s.egress.hosts == {"mirror.test": "10.1.2.3"}


@pytest.mark.parametrize(
    "args",
    [
        ShellArgs(command="true", network="egress"),
        RunCodeArgs(language="python", code="1", network="egress"),
    ],
)
async def test_egress_is_refused_unless_enabled(args: ShellArgs | RunCodeArgs) -> None:
    fake = FakeEngine()
    service = SandboxService(
        Settings(),
        fake,
        seccomp_json=lambda: "{}",
        scrub=lambda s: s,
        scrub_margin=0,
        max_concurrent=1,
        owner=OWNER,
    )
    with pytest.raises(RequestRejected, match=r"egress\.enabled"):
        if isinstance(args, ShellArgs):
            await service.shell(args)
        else:
            await service.run_code(args)
    assert fake.calls == []


def test_network_is_none_or_egress() -> None:
    assert ShellArgs(command="x").network == "none"
    with pytest.raises(ValidationError):
        ShellArgs(command="x", network="host")
