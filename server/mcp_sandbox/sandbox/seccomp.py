"""The seccomp profile every sandbox gets, loaded once as JSON text."""

from __future__ import annotations

import functools
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


# Calls gVisor (20221219) does not implement: its Sentry answers ENOSYS by itself.
_GVISOR_ENOSYS = frozenset({"clone3"})
_ENOSYS = 38


@functools.lru_cache(maxsize=4)  # the same text for every call: once
def for_gvisor(profile_json: str) -> str:
    """``profile_json`` as gVisor can apply it: a rule that answers ENOSYS becomes an allow.

    runsc applies an OCI profile (``--oci-seccomp``) but ignores ``errnoRet``: our
    ``clone3 -> ENOSYS`` would answer EPERM, glibc would not fall back to ``clone``, and no
    thread could start. gVisor implements no ``clone3``, so allowed it still answers
    ENOSYS (the seccomp probes check that under runsc). Raises ValueError for a rule with
    another errno than EPERM that gVisor would not answer the same way.
    """
    profile = json.loads(profile_json)
    rules = []
    for rule in profile.get("syscalls", []):
        errno = rule.get("errnoRet", 1)
        if rule.get("action") == "SCMP_ACT_ERRNO" and errno != 1:
            if errno != _ENOSYS or not set(rule["names"]) <= _GVISOR_ENOSYS:
                raise ValueError(f"gVisor would answer EPERM, not {errno}, for {rule['names']}")
            rule = {k: v for k, v in rule.items() if k != "errnoRet"} | {"action": "SCMP_ACT_ALLOW"}
        rules.append(rule)
    profile["syscalls"] = rules
    return json.dumps(profile, separators=(",", ":"), sort_keys=True)
