"""PURE: the ``[egress]`` settings: whether calls may ask for a network, and to where."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mcp_sandbox.policy import egress_rules as egress_policy

DEFAULT_PROXY_IMAGE = "mcp-sandbox-egress-proxy:0.1"
DEFAULT_CREDENTIAL_FORMAT = "Bearer {value}"
_CREDENTIAL_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def default_ca_dir() -> Path:
    """Where the per-install CA lives: beside the audit log, in the server's state dir."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "mcp-sandbox" / "egress-ca"


class CredentialEntry(BaseModel):
    """One ``[[egress.credentials]]``: a secret the proxy puts in requests to one host.

    The sandbox sees a placeholder in ``MCP_SANDBOX_CREDENTIAL_<NAME>``; the proxy swaps the
    configured header's value for the real one in requests to ``host`` that carry it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="lower-case name; the sandbox's variable is its upper case")
    host: str = Field(description="the one exact host name it is sent to (in egress.allow)")
    value_env: str | None = Field(
        None, description="a variable of the server's own environment holding the value"
    )
    value_file: Path | None = Field(None, description="a file holding the value (one line)")
    header: str = Field("Authorization", description="the header it is sent in")
    format: str | None = Field(
        None, description='the header value, with {value}: default "Bearer {value}"'
    )
    basic_user: str | None = Field(
        None, description="send HTTP basic auth: this user name, the value as password"
    )
    allow_plain_http: bool = Field(
        False, description="also put it in plain-HTTP requests, in the clear upstream"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _CREDENTIAL_NAME.match(value):
            raise ValueError(
                f"{value!r}: a credential name is a lower-case letter, then up to 31 of "
                "a-z, 0-9 and _ (it becomes MCP_SANDBOX_CREDENTIAL_<NAME>)"
            )
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if value.startswith("*") or egress_policy.is_ip_literal(value):
            raise ValueError(f"{value!r}: a credential goes to one exact host name, no wildcard")
        host = egress_policy.normalize_host(value)
        if host is None:
            raise ValueError(f"{value!r} is not a host name like api.github.com")
        return host

    @field_validator("header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not _HEADER_NAME.match(value) or value.lower() in egress_policy.RESERVED_HEADERS:
            raise ValueError(
                f"{value!r} cannot carry a credential: name a plain request header "
                "(hop-by-hop, Host, Content-Length and Proxy-* are the proxy's own)"
            )
        return value

    @field_validator("value_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value

    @field_validator("format")
    @classmethod
    def _format(cls, value: str | None) -> str | None:
        if value is None:
            return None
        rest = value.replace("{value}", "", 1)
        if "{value}" not in value or "{" in rest or "}" in rest:
            raise ValueError(f"{value!r}: a format holds {{value}} once and no other braces")
        if not value.isascii() or not value.isprintable():
            raise ValueError(f"{value!r}: a format is printable ASCII")
        return value

    @field_validator("basic_user")
    @classmethod
    def _basic_user(cls, value: str | None) -> str | None:
        if value is not None and (":" in value or not value.isascii() or not value.isprintable()):
            raise ValueError(f"{value!r}: a basic-auth user is printable ASCII without ':'")
        return value

    @model_validator(mode="after")
    def _one_source_one_shape(self) -> CredentialEntry:
        if (self.value_env is None) == (self.value_file is None):
            raise ValueError(f"credential {self.name}: set exactly one of value_env, value_file")
        if self.basic_user is not None and self.format is not None:
            raise ValueError(f"credential {self.name}: basic_user and format exclude each other")
        return self

    @property
    def variable(self) -> str:
        """The sandbox's variable holding the placeholder."""
        return egress_policy.CREDENTIAL_ENV_PREFIX + self.name.upper()

    @property
    def source(self) -> str:
        """Where the value comes from, for messages: never the value."""
        return f"value_env {self.value_env}" if self.value_env else f"value_file {self.value_file}"


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
    credentials: tuple[CredentialEntry, ...] = Field(
        (), description="secrets the proxy puts in requests to one host each; code sees none"
    )
    ca_dir: Path | None = Field(
        None,
        description="where the per-install CA for credential hosts lives; "
        "None is $XDG_STATE_HOME/mcp-sandbox/egress-ca",
    )
    upstream_ca_file: Path | None = Field(
        None,
        description="CA bundle the proxy checks credential hosts against, instead of the "
        "system roots (tests, private servers)",
    )

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

    @model_validator(mode="after")
    def _credentials_reachable(self) -> EgressSettings:
        names = [c.name for c in self.credentials]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"credentials: names {twice} are used twice")
        places = [(c.host, c.header.lower()) for c in self.credentials]
        if len(set(places)) != len(places):
            raise ValueError("credentials: two entries fill the same header of the same host")
        for c in self.credentials:
            if not egress_policy.host_allowed(c.host, self.allow):
                raise ValueError(
                    f"credentials: {c.name}'s host {c.host} is not in egress.allow; add it there"
                )
        return self

    def credential_shapes(self) -> list[dict[str, Any]]:
        """What the credentials are, without their values: for the proxy's digest."""
        return [c.model_dump(mode="json") for c in self.credentials]

    def proxy_rules(self) -> dict[str, Any]:
        """What the proxy enforces, as the JSON it reads (``egress_policy.ProxyRules``)."""
        return {
            "allow": list(self.allow),
            "tls_ports": sorted(self.tls_ports),
            "http_ports": sorted(self.http_ports),
            "opened_cidrs": list(self.opened_cidrs),
            "hosts": dict(sorted(self.hosts.items())),
        }
