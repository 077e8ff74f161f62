"""Where the files that ship beside the code live: the repo checkout, or the wheel's _data."""

from __future__ import annotations

import json
from pathlib import Path

from mcp_sandbox.errors import SandboxUnavailable

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """``seccomp`` or ``sandbox_images``: inside an installed wheel, else in the checkout."""
    bundled = _PACKAGE / "_data" / name
    return bundled if bundled.is_dir() else _PACKAGE.parents[1] / name


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
