"""Credentials the code can use but never see: their real values, read once at start-up.

The server reads each ``[[egress.credentials]]`` value (``value_env`` or ``value_file``) and
hands it to the proxy alone; a sandbox gets a placeholder (``make_placeholder``: random per
call, recognised by the proxy without state). The values also join the scrubber's known
values, so one that comes back in a response and then in output is still redacted.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mcp_sandbox.config.egress import DEFAULT_CREDENTIAL_FORMAT, CredentialEntry, EgressSettings
from mcp_sandbox.errors import ConfigError
from mcp_sandbox.policy.egress_rules import make_placeholder

# A header value is one line of printable ASCII; anything else could split the request.
_MAX_VALUE_CHARS = 8_192


@dataclass(frozen=True)
class LoadedCredential:
    """One entry with its value: ``header_value`` is exactly what the proxy sends."""

    entry: CredentialEntry
    value: str
    header_value: str

    def proxy_json(self) -> dict[str, object]:
        """The proxy's form (``egress_policy.CredentialRule.from_json``)."""
        return {
            "name": self.entry.name,
            "host": self.entry.host,
            "header": self.entry.header,
            "value": self.header_value,
            "secret": self.value,
            "plain_http": self.entry.allow_plain_http,
        }


def header_value(entry: CredentialEntry, value: str) -> str:
    """The header value ``entry`` sends for ``value``: its format, or HTTP basic auth."""
    if entry.basic_user is not None:
        pair = f"{entry.basic_user}:{value}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")
    return (entry.format or DEFAULT_CREDENTIAL_FORMAT).replace("{value}", value)


def load_credentials(
    settings: EgressSettings, environ: Mapping[str, str], *, skip_missing: bool = False
) -> tuple[LoadedCredential, ...]:
    """Every configured credential with its value. Raises ConfigError naming the key.

    ``skip_missing``: leave out a value that is not there (a server whose runs, and so its
    proxy, are a launcher's: the launcher holds the values and scrubs its results).
    """
    loaded = []
    for i, entry in enumerate(settings.credentials):
        key = f"egress.credentials[{i}] ({entry.name})"
        if skip_missing and not _present(entry, environ):
            continue
        if entry.value_env is not None:
            value = environ.get(entry.value_env)
            if value is None:
                raise ConfigError(
                    f"{key}: value_env {entry.value_env} is not set in the server's environment"
                )
        else:
            assert entry.value_file is not None
            try:
                value = entry.value_file.read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(
                    f"{key}: value_file {entry.value_file} cannot be read ({type(e).__name__})"
                ) from None
        if not value or len(value) > _MAX_VALUE_CHARS or not value.isascii():
            raise ConfigError(
                f"{key}: the value from {entry.source} is empty, too long or not ASCII"
            )
        if not value.isprintable():
            raise ConfigError(
                f"{key}: the value from {entry.source} holds a control character or a line break"
            )
        loaded.append(LoadedCredential(entry, value, header_value(entry, value)))
    return tuple(loaded)


def _present(entry: CredentialEntry, environ: Mapping[str, str]) -> bool:
    if entry.value_env is not None:
        return entry.value_env in environ
    assert entry.value_file is not None
    return entry.value_file.is_file()


def scrub_values(credentials: Sequence[LoadedCredential]) -> dict[str, str]:
    """Known values for the scrubber: each secret, and the header value made of it."""
    known = {}
    for c in credentials:
        known[f"egress.credentials.{c.entry.name}"] = c.value
        if c.header_value != c.value:
            known[f"egress.credentials.{c.entry.name}.header"] = c.header_value
    return known


def placeholder_env(
    credentials: Sequence[LoadedCredential], key: bytes, run_id: str
) -> dict[str, str]:
    """The sandbox's variables: ``MCP_SANDBOX_CREDENTIAL_<NAME>`` = this call's placeholder."""
    return {c.entry.variable: make_placeholder(key, run_id, c.entry.name) for c in credentials}
