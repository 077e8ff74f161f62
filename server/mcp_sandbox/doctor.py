"""``mcp-sandbox doctor``: what a first run needs, each failure with what to do."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mcp_sandbox.engine.docker_api import DockerApi
from mcp_sandbox.errors import SandboxError
from mcp_sandbox.policy.arguments import RunCodeArgs
from mcp_sandbox.sandbox.runtime import choose_runtime, platform_of
from mcp_sandbox.sandbox.seccomp import load_seccomp
from mcp_sandbox.service import SandboxService

MIN_API = (1, 41)  # cgroupns and the other host-config fields the spec sets


@dataclass(frozen=True)
class Check:
    ok: bool
    name: str
    detail: str
    fix: str = ""


def _api_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def engine_name(version: Mapping[str, Any]) -> str:
    """``Docker`` or ``Podman``: Podman's compatible API names itself in its components."""
    names = [str((version.get("Platform") or {}).get("Name", ""))]
    names += [str(c.get("Name", "")) for c in version.get("Components") or []]
    return "Podman" if any("podman" in n.lower() for n in names) else "Docker"


def runtime_version(
    name: str, entry: Mapping[str, Any], version: Mapping[str, Any]
) -> tuple[str, str]:
    """The runtime's version and, for gVisor, its platform (what doctor reports)."""
    for c in version.get("Components") or []:
        if str(c.get("Name", "")).lower() == name:
            return str(c.get("Version", "?")), ""
    path = str(entry.get("path", ""))
    binary = shutil.which(path) if path else None
    if binary is None:  # a remote daemon, or a runtime we cannot see from here
        return "version unknown", ""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    first = out.splitlines()[0] if out else "version unknown"
    platform = f", platform {platform_of(entry)}" if "runsc" in first else ""
    return first, platform


async def run_checks(service: SandboxService, api: DockerApi) -> list[Check]:
    """``service`` runs over ``api``: the daemon's version, info and images are asked of it."""
    settings = service.settings
    checks: list[Check] = []
    try:
        version = api.version()
        info = api.info()
    except SandboxError as e:
        return [Check(False, "docker", str(e), "start Docker, or set DOCKER_HOST to its socket")]
    api_version = str(version.get("ApiVersion", "0"))
    checks.append(
        Check(
            _api_tuple(api_version) >= MIN_API,
            "docker",
            f"Engine {version.get('Version')}, API {api_version}",
            f"upgrade Docker to an engine with API >= {'.'.join(map(str, MIN_API))}",
        )
    )
    if engine_name(version) == "Podman":
        checks.append(Check(True, "engine", "Podman (its Docker-compatible API); see README"))
    offered = {str(k): dict(v or {}) for k, v in (info.get("Runtimes") or {}).items()}
    default = str(info.get("DefaultRuntime") or "runc")
    asked = f"runtime = {settings.runtime!r}" if settings.runtime else "the daemon's default"
    try:
        chosen = choose_runtime(settings.runtime, offered, default)
    except SandboxError as e:
        # Fails closed: the server refuses every call until this is fixed.
        checks.append(Check(False, "runtime", str(e), "see the message"))
        return checks
    entry = offered.get(chosen.isolated or chosen.name, {})
    ver, platform = runtime_version(chosen.name, entry, version)
    checks.append(
        Check(
            True,
            "runtime",
            f"{chosen.name} ({asked}): {ver}{platform}; registered: {', '.join(sorted(offered))}",
        )
    )
    missing = [
        k for k in ("MemoryLimit", "SwapLimit", "PidsLimit", "CpuCfsQuota") if not info.get(k)
    ]
    checks.append(
        Check(
            not missing,
            "cgroup limits",
            f"cgroup v{info.get('CgroupVersion', '?')}, driver {info.get('CgroupDriver', '?')}"
            + (f"; not supported: {', '.join(missing)}" if missing else ""),
            "enable the memory, swap and pids cgroup controllers (kernel cmdline: "
            "cgroup_enable=memory swapaccount=1)",
        )
    )
    has_image = api.image_exists(settings.image)
    checks.append(Check(has_image, "image", settings.image, "run `mcp-sandbox images build`"))
    try:
        profile = load_seccomp(settings.seccomp_profile)
        checks.append(Check(True, "seccomp profile", f"readable, {len(profile)} bytes"))
    except SandboxError as e:
        checks.append(Check(False, "seccomp profile", str(e), "reinstall mcp-sandbox"))
        return checks
    checks.append(await _environments(service))
    if not has_image:
        return checks
    # gVisor shows no cgroup files inside: there the filter mode stands in for them.
    probe = (
        "import os\n"
        "status = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)\n"
        "pids = [p for p in ('/sys/fs/cgroup/pids/pids.max', '/sys/fs/cgroup/pids.max') "
        "if os.path.exists(p)]\n"
        "print(os.getuid(), open(pids[0]).read().strip() if pids else 'gvisor', "
        "status['Seccomp'].strip())\n"
    )
    try:
        result = await service.run_code(RunCodeArgs(language="python", code=probe))
    except SandboxError as e:
        checks.append(Check(False, "trial run", str(e), "see the message; then run doctor again"))
        return checks
    pids = "gvisor" if chosen.gvisor else settings.limits.pids
    expected = f"65534 {pids} 2"
    checks.append(
        Check(
            result.exit_code == 0 and result.stdout.strip() == expected,
            "trial run",
            f"profile loaded, uid, pids limit and seccomp mode seen from inside under "
            f"{result.runtime} ({result.duration_ms} ms): "
            f"{result.stdout.strip() or result.stderr.strip()[:200]}",
            "the sandbox did not start as configured; see the detail",
        )
    )
    return checks


async def _environments(service: SandboxService) -> Check:
    """Every project environment on this daemon, and whether the workspace's is current."""
    try:
        found = await service.environments()
    except SandboxError as e:
        return Check(False, "environments", str(e), "see the message; then run doctor again")
    if not found:
        return Check(True, "environments", "none (`mcp-sandbox env build` makes one)")
    shown = "; ".join(
        f"{e.workspace} ({e.image}): {e.size_mib} MiB, built {e.built_at}" for e in found[:10]
    )
    more = f"; and {len(found) - 10} more" if len(found) > 10 else ""
    return Check(True, "environments", f"{len(found)}: {shown}{more}")


def render(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        lines.append(f"{'ok  ' if c.ok else 'FAIL'} {c.name}: {c.detail}")
        if not c.ok and c.fix:
            lines.append(f"     fix: {c.fix}")
    return "\n".join(lines)
