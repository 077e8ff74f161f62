"""The seccomp profile every sandbox gets, loaded once as JSON text."""

from __future__ import annotations

import json
from pathlib import Path

from mcp_sandbox.errors import SandboxUnavailable
from mcp_sandbox.package_data import data_dir


def default_seccomp_path() -> Path:
    return data_dir("seccomp") / "default.json"


def load_seccomp(path: Path | None) -> str:
    """The profile as compact JSON text, ready for ``seccomp=`` (the daemon reads no file).

    Raises SandboxUnavailable when it is missing or not a profile.
    """
    path = path or default_seccomp_path()
    try:
        profile = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SandboxUnavailable(f"seccomp profile {path} is unreadable: {e.strerror}") from None
    except ValueError:
        raise SandboxUnavailable(f"seccomp profile {path} is not valid JSON") from None
    if not isinstance(profile, dict) or "defaultAction" not in profile:
        raise SandboxUnavailable(f"seccomp profile {path} has no defaultAction")
    return json.dumps(profile, separators=(",", ":"), sort_keys=True)
