"""How one sandbox reaches the egress proxy: its own internal network, its credential, the
proxy variables, and the resolver and sysctls an egress sandbox gets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mcp_sandbox.policy.egress_rules import NO_PROXY


@dataclass(frozen=True)
class EgressLink:
    """How one sandbox reaches the proxy: its own internal network and its credential."""

    network: str
    proxy_url: str  # http://run_id:password@address:port

    def env(self) -> dict[str, str]:
        """Proxy variables in both cases, as pip, npm, curl and git each read one of them."""
        values = {
            "HTTP_PROXY": self.proxy_url,
            "HTTPS_PROXY": self.proxy_url,
            "NO_PROXY": NO_PROXY,
        }
        return {**values, **{k.lower(): v for k, v in values.items()}}


# An "egress" sandbox: no IPv6, no ICMP echo sockets, and a resolver that goes nowhere.
EGRESS_DNS = ("127.0.0.1",)
EGRESS_SYSCTLS: Mapping[str, str] = {
    "net.ipv6.conf.all.disable_ipv6": "1",
    "net.ipv6.conf.default.disable_ipv6": "1",
    "net.ipv4.ping_group_range": "1 0",
}
