"""How one sandbox reaches the egress proxy: its own internal network, its credential, the
proxy variables, and the resolver and sysctls an egress sandbox gets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mcp_sandbox.policy.egress_rules import NO_PROXY

# Where a sandbox finds the CA bundle (system roots + our CA) when credentials are set.
CA_BUNDLE_TARGET = "/etc/mcp-sandbox/ca-bundle.pem"
# Each tool reads its own variable; all point at the one bundle.
CA_BUNDLE_VARIABLES = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "PIP_CERT",
    "npm_config_cafile",
)


@dataclass(frozen=True)
class EgressLink:
    """How one sandbox reaches the proxy: its own internal network and its credential."""

    network: str
    proxy_url: str  # http://run_id:password@address:port
    # MCP_SANDBOX_CREDENTIAL_<NAME> -> this call's placeholder (never a real value)
    placeholders: tuple[tuple[str, str], ...] = field(default=())
    # The host path of the CA bundle, mounted read-only at CA_BUNDLE_TARGET; None: no
    # credentials, so nothing is terminated and the image's own trust is left alone.
    ca_bundle: str | None = None

    def env(self) -> dict[str, str]:
        """Proxy variables in both cases, as pip, npm, curl and git each read one of them;
        the credential placeholders and the CA bundle's variables when there are any."""
        values = {
            "HTTP_PROXY": self.proxy_url,
            "HTTPS_PROXY": self.proxy_url,
            "NO_PROXY": NO_PROXY,
        }
        env = {**values, **{k.lower(): v for k, v in values.items()}, **dict(self.placeholders)}
        if self.ca_bundle is not None:
            env.update(dict.fromkeys(CA_BUNDLE_VARIABLES, CA_BUNDLE_TARGET))
        return env


# An "egress" sandbox: no IPv6, no ICMP echo sockets, and a resolver that goes nowhere.
EGRESS_DNS = ("127.0.0.1",)
EGRESS_SYSCTLS: Mapping[str, str] = {
    "net.ipv6.conf.all.disable_ipv6": "1",
    "net.ipv6.conf.default.disable_ipv6": "1",
    "net.ipv4.ping_group_range": "1 0",
}
