"""``mcp-sandbox doctor``: what a first run needs, each failure with what to do."""

from __future__ import annotations

from dataclasses import dataclass

from mcp_sandbox.errors import SandboxError
from mcp_sandbox.policy.arguments import RunCodeArgs
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


async def run_checks(service: SandboxService) -> list[Check]:
    api, settings = service.api, service.settings
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
    runtime = settings.runtime or str(info.get("DefaultRuntime", "runc"))
    known = sorted((info.get("Runtimes") or {}).keys())
    checks.append(
        Check(
            runtime in known,
            "runtime",
            f"{runtime} ({'configured' if settings.runtime else 'daemon default'}); "
            f"registered: {', '.join(known)}",
            f"register {runtime} in the daemon's runtimes, or unset `runtime`",
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
    probe = (
        "import os\n"
        "print(os.getuid(), open('/sys/fs/cgroup/pids/pids.max' if os.path.exists("
        "'/sys/fs/cgroup/pids/pids.max') else '/sys/fs/cgroup/pids.max').read().strip())\n"
    )
    try:
        result = await service.run_code(RunCodeArgs(language="python", code=probe))
    except SandboxError as e:
        checks.append(Check(False, "trial run", str(e), "see the message; then run doctor again"))
        return checks
    expected = f"65534 {settings.limits.pids}"
    checks.append(
        Check(
            result.exit_code == 0 and result.stdout.strip() == expected,
            "trial run",
            f"profile loaded, uid and pids limit seen from inside ({result.duration_ms} ms): "
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
