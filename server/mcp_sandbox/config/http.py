"""PURE: the ``[http]`` settings: where the HTTP transport listens and who may call it."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr

LOOPBACK_HOSTS = ("127.0.0.1:*", "localhost:*", "[::1]:*")


class HttpSettings(BaseModel):
    """``mcp-sandbox serve --transport http``. The safe value is the default: loopback only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="address to listen on; any but loopback needs tokens, allowed_hosts and "
        "a launcher",
    )
    port: int = Field(8000, ge=1, le=65535, description="TCP port")
    path: str = Field("/mcp", pattern=r"^/[A-Za-z0-9/_.-]*$", description="the MCP endpoint")
    tokens_file: Path | None = Field(
        None, description="bearer tokens, one NAME:sha256:HEX (or NAME:TOKEN) a line"
    )
    tokens: tuple[SecretStr, ...] = Field(
        (), description="bearer token entries, as in the file (env: a JSON list)"
    )
    max_concurrent_per_token: int = Field(
        4, ge=1, le=256, description="requests in flight per token (or per anonymous caller)"
    )
    allowed_hosts: tuple[str, ...] = Field(
        (), description="Host header values accepted besides loopback's (`name:*` for any port)"
    )
    allowed_origins: tuple[str, ...] = Field(
        (), description="browser Origins accepted; none by default, so no web page may call"
    )
    access_log: Path | None = Field(
        None, description="JSON-lines file: one line per HTTP request, naming its token"
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="serve Prometheus /metrics on this port of metrics_host; none: no metrics",
    )
    metrics_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="address of the metrics listener: loopback unless set (it asks no token)",
    )

    @property
    def on_loopback(self) -> bool:
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine. Names other than localhost
    may resolve anywhere, so they count as not loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
