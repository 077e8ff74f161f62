"""PURE: the ``[egress]`` settings: whether calls may ask for a network, and to where."""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mcp_sandbox.policy import egress_rules as egress_policy

DEFAULT_PROXY_IMAGE = "mcp-sandbox-egress-proxy:0.1"


class EgressSettings(BaseModel):
    """``network="egress"``: out only through our proxy, only to allowlisted names.

    Off by default. Every key only narrows what ``enabled`` opens, except ``opened_cidrs``
    and ``hosts``, which exist for tests and air-gapped mirrors.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(False, description='whether a call may ask for network="egress"')
    allow: tuple[str, ...] = Field(
        ("pypi.org", "files.pythonhosted.org", "registry.npmjs.org"),
        description="host names reachable through the proxy: exact, or `*.suffix`",
    )
    tls_ports: tuple[int, ...] = Field((443,), description="ports CONNECT may reach")
    http_ports: tuple[int, ...] = Field((80,), description="ports plain HTTP may reach")
    opened_cidrs: tuple[str, ...] = Field(
        (),
        description="non-public ranges the proxy may still connect to (tests, local mirrors); "
        "loopback and link-local are never opened",
    )
    hosts: dict[str, str] = Field(
        default_factory=dict,
        description="static name -> IP entries the proxy uses instead of DNS (tests, air gap)",
    )
    proxy_dns: tuple[str, ...] = Field(
        (),
        description="resolvers the proxy asks instead of the host's (air gap, tests); "
        "sandboxes never resolve",
    )
    outbound_network: str | None = Field(
        None,
        description="an existing Docker network the proxy goes out on; None: one of ours",
    )
    proxy_image: str = Field(DEFAULT_PROXY_IMAGE, description="image of the egress proxy")

    @field_validator("allow")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(egress_policy.parse_pattern(p) for p in value)

    @field_validator("tls_ports", "http_ports")
    @classmethod
    def _ports(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        bad = [p for p in value if not 0 < p < 65536]
        if bad:
            raise ValueError(f"ports are 1 to 65535, not {bad}")
        return value

    @field_validator("opened_cidrs")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(egress_policy.parse_cidr(c)) for c in value)

    @field_validator("proxy_dns")
    @classmethod
    def _resolvers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        try:
            return tuple(str(ipaddress.ip_address(v)) for v in value)
        except ValueError:
            raise ValueError(f"resolvers are IP addresses, not {list(value)}") from None

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: dict[str, str]) -> dict[str, str]:
        checked = {}
        for name, ip in value.items():
            host = egress_policy.normalize_host(name)
            if host is None:
                raise ValueError(f"{name!r} is not a host name like mirror.example")
            try:
                checked[host] = str(ipaddress.ip_address(ip))
            except ValueError:
                raise ValueError(f"{name!r} maps to {ip!r}, which is not an IP address") from None
        return checked

    @model_validator(mode="after")
    def _ports_apart(self) -> EgressSettings:
        both = sorted(set(self.tls_ports) & set(self.http_ports))
        if both:
            raise ValueError(f"ports {both} are in both tls_ports and http_ports")
        return self

    def proxy_rules(self) -> dict[str, Any]:
        """What the proxy enforces, as the JSON it reads (``egress_policy.ProxyRules``)."""
        return {
            "allow": list(self.allow),
            "tls_ports": sorted(self.tls_ports),
            "http_ports": sorted(self.http_ports),
            "opened_cidrs": list(self.opened_cidrs),
            "hosts": dict(sorted(self.hosts.items())),
        }
