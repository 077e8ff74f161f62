"""Process configuration: read once from a TOML file, then ``MCP_SANDBOX_*`` env vars."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from mcp_sandbox.config.audit import AuditSettings
from mcp_sandbox.config.egress import EgressSettings
from mcp_sandbox.config.environment import EnvironmentSettings
from mcp_sandbox.config.http import HttpSettings
from mcp_sandbox.config.workspace import WorkspacePolicy, check_root
from mcp_sandbox.errors import ConfigError, RequestRejected
from mcp_sandbox.policy.escalation import PROFILE_NAME, EscalationRules, Profile, raised_limits
from mcp_sandbox.policy.languages import Language
from mcp_sandbox.policy.limits import (
    CallBounds,
    LimitRequest,
    Limits,
    asked_limits,
)
from mcp_sandbox.policy.secret_names import looks_secret_name

DEFAULT_IMAGE = "mcp-sandbox-runtime:0.1"
# runc, gVisor's runsc, or runsc when the daemon has it (sandbox/runtime.py decides).
RuntimeSetting = Literal["auto", "runc", "runsc"]
_PREFIX = "MCP_SANDBOX_"


class PoolSettings(BaseModel):
    """Pre-started sandboxes of the default shape, each used for one call only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(True, description="keep sandboxes warm for default-shaped calls")
    min_size: int = Field(1, ge=0, le=64, description="warm sandboxes kept while idle")
    max_size: int = Field(4, ge=0, le=64, description="warm sandboxes kept under load")
    min_available_mib: int = Field(
        512,
        ge=0,
        description="no new sandbox, warm or cold, while the host has less memory available",
    )


class OutputsSettings(BaseModel):
    """Files a call asks back with ``outputs=true`` (the caps are fixed: ``output_files``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Off: the scrubber reads text, never an image's pixels, so an image is the one way out
    # of a sandbox a secret it saw could take unredacted.
    images: bool = Field(
        False, description="send PNG, JPEG and SVG files back as image content (unscrubbed)"
    )


class RunCodeTool(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(True, description="whether the run_code tool exists")
    languages: tuple[Language, ...] = Field(
        ("python", "javascript", "bash"), description="languages run_code accepts"
    )


class ShellTool(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = Field(True, description="whether the shell tool exists")


class ToolsSettings(BaseModel):
    """Which tools the server offers, and what each accepts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_code: RunCodeTool = RunCodeTool()
    shell: ShellTool = ShellTool()


class Settings(BaseSettings):
    """Every key is documented in README.md; a test keeps the two in step."""

    model_config = SettingsConfigDict(
        env_prefix=_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    config: Path | None = Field(None, description="the TOML file these settings came from")
    image: str = Field(DEFAULT_IMAGE, description="image every sandbox runs")
    runtime: RuntimeSetting | None = Field(
        None,
        description="OCI runtime: runc, runsc (gVisor), or auto (runsc when the daemon has "
        "it); None is the daemon's default",
    )
    seccomp_profile: Path | None = Field(
        None, description="seccomp JSON profile; None is the bundled seccomp/default.json"
    )
    max_concurrent: int | None = Field(
        None, ge=1, le=256, description="sandboxes at once; None derives it from CPUs and memory"
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="extra variables set inside every sandbox"
    )
    pass_env: list[str] = Field(
        default_factory=list,
        description="names of the server's own variables copied into every sandbox",
    )
    allow_secret_env: list[str] = Field(
        default_factory=list,
        description="secret-looking names that `env` or `pass_env` may still set",
    )
    scrub_values: list[str] = Field(
        default_factory=list,
        description="literal values redacted from everything that leaves the server",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="extra labels on every container (ours, mcp-sandbox*, cannot be changed)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    limits: Limits = Limits()
    pool: PoolSettings = PoolSettings()
    outputs: OutputsSettings = OutputsSettings()
    bounds: CallBounds = CallBounds()
    workspace: Path | None = Field(
        None, description="directory mounted at /workspace; None: where the server started"
    )
    workspace_policy: WorkspacePolicy = WorkspacePolicy()
    egress: EgressSettings = EgressSettings()
    environment: EnvironmentSettings = EnvironmentSettings()
    launcher_socket: Path | None = Field(
        None, description="send runs to `mcp-sandbox launcher` here instead of using Docker"
    )
    http: HttpSettings = HttpSettings()
    tools: ToolsSettings = ToolsSettings()
    approval: EscalationRules = EscalationRules()
    profiles: dict[str, Profile] = Field(
        default_factory=dict, description="named shapes of work a call selects with `profile`"
    )
    audit: AuditSettings = AuditSettings()

    @model_validator(mode="after")
    def _no_secret_into_sandboxes(self) -> Settings:
        # A name like *TOKEN* carries a credential; handing it to untrusted code needs an
        # explicit, reviewable opt-in per name.
        risky = sorted(
            n
            for n in {*self.env, *self.pass_env}
            if looks_secret_name(n) and n not in self.allow_secret_env
        )
        if risky:
            raise ValueError(
                f"refusing to pass secret-looking variable(s) {', '.join(risky)} into "
                "sandboxes; list them in allow_secret_env if untrusted code should have them"
            )
        return self

    @field_validator("workspace")
    @classmethod
    def _workspace_is_a_project(cls, value: Path | None) -> Path | None:
        return None if value is None else check_root(value)

    @model_validator(mode="after")
    def _default_within_max(self) -> Settings:
        for name in ("timeout_s", "memory_mib", "cpus", "output_bytes"):
            value, most = getattr(self.limits, name), getattr(self.bounds, f"max_{name}")
            if value > most:
                raise ValueError(f"limits.{name} ({value}) is above bounds.max_{name} ({most})")
        return self

    @model_validator(mode="after")
    def _profiles_can_work(self) -> Settings:
        problems = profile_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values come in as init kwargs; env vars override them.
        return (env_settings, init_settings)


def with_workspace_root(settings: Settings, path: Path) -> Settings:
    """``settings`` with the workspace ``--workspace`` names: it wins over file and env.

    Raises ConfigError saying why ``path`` cannot be one.
    """
    try:
        return settings.model_copy(update={"workspace": check_root(path)})
    except ValueError as e:
        raise ConfigError(f"invalid configuration: workspace: {e}") from None


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each bad key: ``limits.memory_mib: Input should be ...``."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{key}: {err['msg']}")
    return "; ".join(parts)


def load_settings(config_path: Path | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (``--config`` or ``MCP_SANDBOX_CONFIG``) and the environment.

    Raises ConfigError with a message naming the bad key.
    """
    path = config_path or (
        Path(os.environ["MCP_SANDBOX_CONFIG"]) if os.environ.get("MCP_SANDBOX_CONFIG") else None
    )
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        values["config"] = path
    values.update(overrides)
    unknown = sorted(
        name
        for name in os.environ
        if name.startswith(_PREFIX)
        and name[len(_PREFIX) :].split("__")[0].lower() not in Settings.model_fields
    )
    if unknown:
        raise ConfigError(f"invalid configuration: unknown variable {', '.join(unknown)}")
    try:
        return Settings(**values)
    except ValidationError as e:
        raise ConfigError(f"invalid configuration: {describe_validation_error(e)}") from None


def profile_problems(settings: Settings) -> list[str]:
    """Why each profile cannot work under ``settings`` (start-up refuses such a config)."""
    problems = []
    rules = settings.approval
    for name, p in sorted(settings.profiles.items()):
        where = f"profiles.{name}"
        if not PROFILE_NAME.fullmatch(name):
            problems.append(f"{where}: a name is 1-32 of a-z, 0-9, _ and -, starting alnum")
        try:
            limits = asked_limits(settings.limits, settings.bounds, LimitRequest.of(p))
        except RequestRejected as e:
            problems.append(f"{where}: {e}")
            continue
        if p.network == "egress":
            if not settings.egress.enabled:
                problems.append(f'{where}: network "egress" needs egress.enabled = true')
            if rules.egress == "deny":
                problems.append(f'{where}: network "egress" but approval.egress = "deny"')
        if p.workspace is not None and p.workspace not in settings.workspace_policy.modes:
            problems.append(f"{where}: workspace {p.workspace!r} is not in workspace_policy.modes")
        if p.workspace == "rw" and rules.rw == "deny":
            problems.append(f'{where}: workspace "rw" but approval.rw = "deny"')
        if p.environment and rules.environment == "deny":
            problems.append(f'{where}: environment but approval.environment = "deny"')
        if raised_limits(settings.limits, limits) and rules.limits == "deny":
            problems.append(f'{where}: limits above the defaults but approval.limits = "deny"')
    return problems
