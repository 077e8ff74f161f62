"""The ``workspace_policy`` settings, and which host directory may be the workspace at all."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mcp_sandbox.policy.arguments import Mode
from mcp_sandbox.policy.paths import DEFAULT_EXCLUDE, DEFAULT_MASK, DEFAULT_PROTECT, PathPattern


class WorkspacePolicy(BaseModel):
    """How the workspace reaches a sandbox. The safe value is the default: read-only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Mode = Field("ro", description="mode of a call that asks for none")
    modes: tuple[Mode, ...] = Field(
        ("ro", "copy"),
        description="modes a call may ask for; add `rw` to let sandboxes change your files",
    )
    mask: tuple[str, ...] = Field(DEFAULT_MASK, description="paths hidden from every sandbox")
    protect: tuple[str, ...] = Field(
        DEFAULT_PROTECT, description="paths a sandbox never changes, even in `rw`"
    )
    exclude: tuple[str, ...] = Field(
        DEFAULT_EXCLUDE, description="paths left out of `copy` and `rw` copies"
    )
    copy_max_mib: int = Field(
        256, ge=1, le=16_384, description="largest workspace `copy` and `rw` copy, in MiB"
    )
    copy_max_files: int = Field(
        50_000, ge=1, le=1_000_000, description="most files and links in a copy"
    )
    scan_max_entries: int = Field(
        200_000,
        ge=100,
        le=5_000_000,
        description="most entries a call reads from the workspace tree (to find masked files)",
    )
    rw_quota_mib: int = Field(
        64, ge=1, le=4096, description="most bytes one `rw` run may write back, in MiB"
    )
    rw_max_changes: int = Field(
        2_000, ge=1, le=100_000, description="most paths one `rw` run may change"
    )
    changes_listed: int = Field(
        100, ge=0, le=10_000, description="changed paths listed in a result; the rest counted"
    )

    @field_validator("mask", "protect", "exclude")
    @classmethod
    def _valid_patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for text in value:
            PathPattern.parse(text)
        return value

    @model_validator(mode="after")
    def _mode_is_allowed(self) -> WorkspacePolicy:
        if not self.modes:
            raise ValueError("modes must allow at least one mode")
        if self.mode not in self.modes:
            raise ValueError(f"mode {self.mode!r} is not in modes {list(self.modes)}")
        return self


def unsafe_root_reason(path: Path) -> str | None:
    """Why ``path`` must not be a workspace, or None. ``/`` and the home directory hold
    far more than a project: every credential a user keeps."""
    real = Path(os.path.realpath(path))
    if real == Path(real.anchor):
        return "it is the filesystem root"
    try:
        home = Path(os.path.realpath(Path.home()))
    except RuntimeError:
        return None
    if real == home or real in home.parents:
        return "it is your home directory or holds it"
    return None


def check_root(path: Path) -> Path:
    """A configured workspace, resolved. Raises ValueError saying why it cannot be one."""
    real = Path(os.path.realpath(path))
    if not real.is_dir():
        raise ValueError(f"{path} is not a directory")
    reason = unsafe_root_reason(real)
    if reason:
        raise ValueError(f"{path} cannot be the workspace: {reason}; pass a project directory")
    return real


def default_root(configured: Path | None) -> Path | None:
    """The configured workspace, else the server's working directory unless that is ``/``
    or the home directory (a client that starts servers there gets no workspace)."""
    if configured is not None:
        return check_root(configured)
    cwd = Path.cwd()
    if unsafe_root_reason(cwd):
        return None
    return Path(os.path.realpath(cwd))
