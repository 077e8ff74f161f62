"""The ``[audit]`` settings: where the audit log lives and how it rotates."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class AuditSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path | None = Field(
        None, description="JSON-lines file; None is $XDG_STATE_HOME/mcp-sandbox/audit.jsonl"
    )
    max_bytes: int = Field(10_000_000, ge=10_000, description="rotate past this size")
    backups: int = Field(5, ge=1, le=100, description="rotated files kept (audit.jsonl.1 ...)")


def default_audit_path() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "mcp-sandbox" / "audit.jsonl"
