"""PURE: the ``[environment]`` settings: how a project's dependencies are installed once."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mcp_sandbox.policy import egress_rules as egress_policy


class EnvironmentSettings(BaseModel):
    """A workspace's environment: built in a hardened sandbox whose only exit is the index.

    Only ``indexes`` opens anything, and only to the build (never to a call); the other keys
    bound the build or name what it runs.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    indexes: tuple[str, ...] = Field(
        ("pypi.org", "files.pythonhosted.org", "registry.npmjs.org"),
        description="host names a build may reach through its own proxy: exact, or `*.suffix`",
    )
    pip_index_url: str = Field(
        "https://pypi.org/simple", description="the index pip installs from (PEP 503)"
    )
    npm_registry: str = Field(
        "https://registry.npmjs.org/", description="the registry npm installs from"
    )
    timeout_s: float = Field(600, ge=1, le=3600, description="wall-clock limit of one build")
    max_mib: int = Field(2048, ge=16, le=65536, description="largest environment, in MiB")
    memory_mib: int = Field(1024, ge=128, le=65536, description="RAM of the build sandbox")
    max_age_days: float = Field(
        30, gt=0, le=3650, description="an environment built longer ago than this is reaped"
    )
    python: str | None = Field(
        None,
        description="shell command that installs into the venv instead of the detected "
        "manifests (runs with the venv's bin first on PATH, in a copy of the manifests)",
    )
    node: str | None = Field(
        None, description="shell command that installs into /env instead of `npm ci`/`install`"
    )

    @field_validator("indexes")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(egress_policy.parse_pattern(p) for p in value)

    @field_validator("pip_index_url", "npm_registry")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise ValueError("an index URL carries no credentials (they would reach the build)")
        return value
