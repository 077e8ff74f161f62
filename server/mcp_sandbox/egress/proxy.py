"""The egress proxy and its networks as Docker objects: made on first use, reused, removed.

One ``network="egress"`` call:

    sandbox --(its own internal network: no host address, no route out)--> proxy
    proxy   --(the outbound network)--> allowlisted names only

- Each call gets an internal network of its own (``mcp-sandbox-net-<run_id>``) holding only
  the sandbox and the proxy, so sandboxes never reach each other. ``inhibit_ipv4`` keeps the
  host's address off the bridge: on a plain internal network the gateway address is the
  host, and every service the host listens on answers there.
- The sandbox's resolver is pinned: ``dns=["127.0.0.1"]`` makes Docker's embedded resolver
  (127.0.0.11) forward inside the sandbox's own namespace, where nothing answers, instead of
  to the host's resolvers (CVE-2024-29018 leaked through those on internal networks).
- The proxy is one long-lived container per server, labelled with a digest of its rules: a
  changed allowlist or image, or a proxy that died, gets a new one on the next call.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio import CapacityLimiter, to_thread

from mcp_sandbox.config.egress import EgressSettings, default_ca_dir
from mcp_sandbox.constants import LABEL, MIB, OWNER_LABEL
from mcp_sandbox.egress import ca
from mcp_sandbox.egress.credentials import LoadedCredential, load_credentials, placeholder_env
from mcp_sandbox.egress.link import EGRESS_SYSCTLS, EgressLink
from mcp_sandbox.engine.backend import ContainerInfo, Engine
from mcp_sandbox.engine.owners import owner_is_alive
from mcp_sandbox.engine.steps import step
from mcp_sandbox.errors import SandboxUnavailable
from mcp_sandbox.policy.egress_rules import PROXY_PORT, make_password

log = logging.getLogger("mcp_sandbox.egress")

ROLE_LABEL = "mcp-sandbox.role"
DIGEST_LABEL = "mcp-sandbox.egress.digest"
CALL_NETWORK_PREFIX = "mcp-sandbox-net-"
PROXY_USER = "65534:65534"
PROXY_PROGRAM = ("python3", "-I", "/opt/mcp-sandbox-egress/egress_proxy.py")
# Our own steps get these bounds; a call's deadline is separate.
STEP_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 20.0
# A credential outlives the call's deadline by this much (create and start come first).
CREDENTIAL_SLACK_S = 300

# The proxy must never route between its networks, only relay what it checked.
PROXY_SYSCTLS: Mapping[str, str] = {
    **EGRESS_SYSCTLS,
    "net.ipv4.ip_forward": "0",
    "net.ipv4.conf.all.forwarding": "0",
    "net.ipv4.conf.default.forwarding": "0",
}
CALL_NETWORK_OPTIONS: Mapping[str, str] = {
    "com.docker.network.bridge.inhibit_ipv4": "true",
    "com.docker.network.bridge.enable_ip_masquerade": "false",
}
_FOREIGN_GRACE_S = 600.0


@dataclass(frozen=True)
class EgressTally:
    """What the proxy decided for one call."""

    allowed: int
    denied: tuple[str, ...]
    credentials: tuple[str, ...] = ()  # names of the credentials the proxy put in requests


UNREPORTED = EgressTally(0, ("egress report unavailable: the proxy did not answer",))


@dataclass
class EgressCall:
    """One call's attachment; ``tally`` is filled in when the attachment ends."""

    link: EgressLink
    tally: EgressTally | None = None


@dataclass(frozen=True)
class ProxyTls:
    """What terminating TLS for credential hosts needs: made from the CA at first use."""

    leaves: tuple[ca.Leaf, ...]
    bundle: Path  # the sandboxes' bundle (host path): system roots + our CA certificate
    upstream_ca: str | None  # egress.upstream_ca_file's text; None: the proxy's system roots

    @property
    def renew_after(self) -> float:
        """Past this time the leaves are renewed (a new proxy): an hour before they end."""
        end = min(leaf.not_after for leaf in self.leaves)
        return (end - datetime.timedelta(hours=1)).timestamp()


def prepare_tls(settings: EgressSettings) -> ProxyTls:
    """The CA (made at first use), a leaf for each credential host, the sandboxes' bundle.

    Blocking file work. Raises SandboxUnavailable.
    """
    directory = settings.ca_dir or default_ca_dir()
    authority = ca.load_or_create(directory)
    hosts = sorted({c.host for c in settings.credentials})
    upstream = None
    if settings.upstream_ca_file is not None:
        try:
            upstream = settings.upstream_ca_file.read_text("ascii")
        except (OSError, UnicodeDecodeError) as e:
            raise SandboxUnavailable(
                f"egress.upstream_ca_file {settings.upstream_ca_file} cannot be read"
            ) from e
    try:
        bundle = ca.write_bundle(directory, authority, ca.system_roots())
    except OSError as e:
        raise SandboxUnavailable(f"the CA bundle cannot be written in {directory}") from e
    return ProxyTls(tuple(ca.mint_leaf(authority, h) for h in hosts), bundle, upstream)


def proxy_secrets(credentials: Sequence[LoadedCredential], tls: ProxyTls | None) -> str:
    """The proxy's MCP_SANDBOX_EGRESS_SECRETS: the credentials' header values and the leaves
    (never the CA key); "" without credentials."""
    if not credentials or tls is None:
        return ""
    return json.dumps(
        {
            "credentials": [c.proxy_json() for c in credentials],
            "leaves": {
                leaf.host: {"cert": leaf.cert_pem, "key": leaf.key_pem} for leaf in tls.leaves
            },
            "upstream_ca": tls.upstream_ca,
        }
    )


def rules_digest(settings: EgressSettings, tls: ProxyTls | None = None) -> str:
    """Changes whenever what the proxy enforces or runs changes (never holds a value)."""
    text = json.dumps(
        {
            "rules": settings.proxy_rules(),
            "image": settings.proxy_image,
            "dns": settings.proxy_dns,
            "outbound": settings.outbound_network,
            **(
                {
                    "credentials": settings.credential_shapes(),
                    "leaves": [leaf.cert_pem for leaf in tls.leaves],
                    "upstream_ca": tls.upstream_ca,
                }
                if tls is not None
                else {}
            ),
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def proxy_container(
    settings: EgressSettings,
    *,
    name: str,
    network: str,
    key: bytes,
    seccomp_json: str,
    labels: Mapping[str, str],
    secrets_json: str = "",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """PURE: create and host-config arguments of the proxy container; every wall it keeps."""
    create = {
        "name": name,
        "image": settings.proxy_image,
        "command": ["serve"],
        "user": PROXY_USER,
        "environment": [
            "MCP_SANDBOX_EGRESS_CONFIG=" + json.dumps(settings.proxy_rules()),
            "MCP_SANDBOX_EGRESS_KEY=" + key.hex(),
            *(["MCP_SANDBOX_EGRESS_SECRETS=" + secrets_json] if secrets_json else []),
        ],
        "labels": dict(labels),
        "hostname": "egress-proxy",
        "networking_config": {"EndpointsConfig": {network: {}}},
        "detach": True,
        "use_config_proxy": False,
    }
    host = {
        "network_mode": network,
        "privileged": False,
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true", f"seccomp={seccomp_json}"],
        "init": True,
        "ipc_mode": "private",
        "cgroupns": "private",
        "pids_limit": 128,
        "mem_limit": 256 * MIB,
        "memswap_limit": 256 * MIB,
        "nano_cpus": 1_000_000_000,
        "ulimits": [
            {"name": "nofile", "soft": 8192, "hard": 8192},
            {"name": "core", "soft": 0, "hard": 0},
        ],
        "tmpfs": {"/run/egress": "rw,noexec,nosuid,nodev,size=1m,mode=0700,uid=65534,gid=65534"},
        "sysctls": dict(PROXY_SYSCTLS),
        **({"dns": list(settings.proxy_dns)} if settings.proxy_dns else {}),
        # A sandbox can make the proxy log a line per request: bounded on disk.
        "log_config": {"type": "json-file", "config": {"max-size": "5m", "max-file": "2"}},
    }
    return create, host


class EgressProxy:
    """This server's proxy, its outbound network, and the per-call internal networks."""

    def __init__(
        self,
        settings: EgressSettings,
        api: Engine,
        *,
        owner: str,
        seccomp_json: Callable[[], str],
        extra_labels: Mapping[str, str],
        credentials: Sequence[LoadedCredential] | None = None,
        role: str = "egress",
    ) -> None:
        """Raises ConfigError when a credential's value cannot be read (``credentials``
        None: read from this process's environment now)."""
        self.settings = settings
        self.credentials = tuple(
            load_credentials(settings, os.environ) if credentials is None else credentials
        )
        self._tls: ProxyTls | None = None
        self.api = api
        self.owner = owner
        tag = hashlib.sha256(owner.encode()).hexdigest()[:12]
        # A second proxy of the same server (an environment build's) differs by ``role``.
        self.container = f"mcp-sandbox-{role}-{tag}"
        self.outbound = settings.outbound_network or f"mcp-sandbox-{role}-out-{tag}"
        self._own_outbound = settings.outbound_network is None
        self._seccomp_json = seccomp_json
        self._digest = rules_digest(settings)
        self._key = secrets.token_bytes(32)
        self._lock = anyio.Lock()
        self._labels = {
            **{k: v for k, v in extra_labels.items() if not k.startswith(LABEL)},
            LABEL: "1",
            OWNER_LABEL: owner,
        }

    @contextlib.asynccontextmanager
    async def attached(
        self, run_id: str, timeout_s: float, threads: CapacityLimiter
    ) -> AsyncIterator[EgressCall]:
        """A network for one call, with the proxy on it; on exit, the call's tally.

        Raises SandboxUnavailable when the proxy or the network cannot be made.
        """
        await self._ensure(threads)
        network = CALL_NETWORK_PREFIX + run_id
        deadline = int(time.time() + timeout_s + CREDENTIAL_SLACK_S)
        call: EgressCall | None = None
        try:
            await step(
                threads,
                "create the call's network",
                lambda: self.api.create_network(
                    network,
                    internal=True,
                    labels={**self._labels, ROLE_LABEL: "call-network"},
                    options=dict(CALL_NETWORK_OPTIONS),
                ),
            )
            address = await step(
                threads,
                "connect the egress proxy",
                self.api.connect_network,
                network,
                self.container,
            )
            password = make_password(self._key, run_id, deadline)
            placeholders = placeholder_env(self.credentials, self._key, run_id)
            call = EgressCall(
                EgressLink(
                    network,
                    f"http://{run_id}:{password}@{address}:{PROXY_PORT}",
                    tuple(sorted(placeholders.items())),
                    str(self._tls.bundle) if self._tls is not None else None,
                )
            )
            yield call
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(STEP_TIMEOUT_S):
                tally = await self._take(run_id, deadline, threads)
                if call is not None:
                    call.tally = tally
                with contextlib.suppress(SandboxUnavailable):
                    await to_thread.run_sync(
                        self.api.disconnect_network, network, self.container, limiter=threads
                    )
                    await to_thread.run_sync(self.api.remove_network, network, limiter=threads)

    async def close(self, threads: CapacityLimiter) -> None:
        """Remove the proxy, then its outbound network if it is ours; shielded, bounded."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(STEP_TIMEOUT_S):
            with contextlib.suppress(SandboxUnavailable):
                await to_thread.run_sync(self.api.remove, self.container, limiter=threads)
            if self._own_outbound:
                with contextlib.suppress(SandboxUnavailable):
                    await to_thread.run_sync(
                        self.api.remove_network, self.outbound, limiter=threads
                    )

    async def _ensure(self, threads: CapacityLimiter) -> None:
        """The proxy runs with our current rules, or is made so. Raises SandboxUnavailable."""
        async with self._lock:
            if self.credentials and (self._tls is None or time.time() > self._tls.renew_after):
                self._tls = await to_thread.run_sync(prepare_tls, self.settings, limiter=threads)
                self._digest = rules_digest(self.settings, self._tls)
            state = await step(
                threads, "inspect the egress proxy", self.api.container_state, self.container
            )
            if state is not None and state[0] and state[1].get(DIGEST_LABEL) == self._digest:
                return
            if state is not None:
                log.info("replacing the egress proxy %s (stopped or rules changed)", self.container)
                await step(threads, "remove the old egress proxy", self.api.remove, self.container)
            if not await step(
                threads, "inspect the outbound network", self.api.network_exists, self.outbound
            ):
                if not self._own_outbound:
                    raise SandboxUnavailable(
                        f"egress.outbound_network {self.outbound!r} does not exist"
                    )
                await step(
                    threads,
                    "create the outbound network",
                    lambda: self.api.create_network(
                        self.outbound,
                        internal=False,
                        labels={**self._labels, ROLE_LABEL: "egress-outbound"},
                        options={"com.docker.network.bridge.enable_icc": "false"},
                    ),
                )
            create, host = proxy_container(
                self.settings,
                name=self.container,
                network=self.outbound,
                key=self._key,
                seccomp_json=self._seccomp_json(),
                labels={**self._labels, ROLE_LABEL: "egress-proxy", DIGEST_LABEL: self._digest},
                secrets_json=proxy_secrets(self.credentials, self._tls),
            )
            await step(threads, "start the egress proxy", self.api.run_detached, create, host)
            await self._wait_ready(threads)
            log.info("egress proxy %s is up on %s", self.container, self.outbound)

    async def _wait_ready(self, threads: CapacityLimiter) -> None:
        with anyio.move_on_after(READY_TIMEOUT_S):
            while True:
                code, out = await step(
                    threads,
                    "ask the egress proxy",
                    self.api.exec_output,
                    self.container,
                    [*PROXY_PROGRAM, "ctl", "ping"],
                    PROXY_USER,
                )
                if code == 0 and b'"ok"' in out:
                    return
                await anyio.sleep(0.1)
        raise SandboxUnavailable(
            "the egress proxy did not start; is its image built? (`mcp-sandbox images build`)"
        )

    async def _take(self, run_id: str, deadline: int, threads: CapacityLimiter) -> EgressTally:
        """The call's tally from the proxy, which also closes its credential."""
        try:
            code, out = await to_thread.run_sync(
                self.api.exec_output,
                self.container,
                [*PROXY_PROGRAM, "ctl", "take", run_id, str(deadline)],
                PROXY_USER,
                limiter=threads,
                abandon_on_cancel=True,
            )
            data = json.loads(out)
            allowed, denied = data["allowed"], data["denied"]
            used = data.get("credentials", [])
            if code != 0 or not isinstance(allowed, int) or not isinstance(denied, list):
                raise ValueError("bad tally")
        except (SandboxUnavailable, ValueError, KeyError, TypeError):
            log.warning("no egress tally for run %s", run_id)
            return UNREPORTED
        names = {c.entry.name for c in self.credentials}
        # Only names we configured: the proxy's answer cannot put other text in the record.
        shown = tuple(n for n in used if n in names) if isinstance(used, list) else ()
        return EgressTally(allowed, tuple(str(d)[:200] for d in denied[:21]), shown)


async def reap_networks(api: Engine, owner: str, threads: CapacityLimiter, *, own_too: bool) -> int:
    """Remove labelled networks whose server is gone (and ours, with ``own_too``).

    Runs after the containers are gone: a network with a container on it stays.
    """
    try:
        found = await to_thread.run_sync(api.labelled_networks, limiter=threads)
    except SandboxUnavailable:
        return 0
    now = time.time()
    doomed = [n.name for n in found if _doomed(n, owner, now, own_too=own_too)]
    for name in doomed:
        with (
            anyio.move_on_after(STEP_TIMEOUT_S, shield=True),
            contextlib.suppress(SandboxUnavailable),
        ):
            await to_thread.run_sync(api.remove_network, name, limiter=threads)
    return len(doomed)


def _doomed(net: ContainerInfo, owner: str, now: float, *, own_too: bool) -> bool:
    net_owner = net.labels.get(OWNER_LABEL, "")
    if net_owner == owner:
        return own_too
    alive = owner_is_alive(net_owner)
    return alive is False or (alive is None and now - net.created_unix > _FOREIGN_GRACE_S)
