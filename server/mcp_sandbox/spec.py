"""PURE: a decided run plus identity -> the exact container the daemon is asked for."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mcp_sandbox.policy import Limits, RunPlan

LABEL = "mcp-sandbox"
OWNER_LABEL = "mcp-sandbox.owner"
SANDBOX_USER = "65534:65534"
WORKDIR = "/workspace"

# Set in every sandbox; nothing of the server's own environment is passed.
BASE_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONPYCACHEPREFIX": "/tmp/.pycache",
    "npm_config_cache": "/tmp/.npm",
    "XDG_CACHE_HOME": "/tmp/.cache",
}

# stdin crosses the attach stream as base64, so no byte of it can be read by the daemon as a
# detach key; this decodes it in front of the program.
_STDIN_WRAPPER = ("/bin/sh", "-c", 'base64 -d | "$@"', "stdin-decoder")

_MIB = 1024 * 1024


@dataclass(frozen=True)
class ContainerSpec:
    name: str  # "mcp-sandbox-<run_id>", fixed before create so removal always has a handle
    image: str
    argv: tuple[str, ...]
    limits: Limits
    seccomp_json: str  # the profile text: the Engine API reads no files
    env: tuple[tuple[str, str], ...]
    labels: tuple[tuple[str, str], ...]
    stdin: bool
    runtime: str | None = None
    tmpfs: tuple[tuple[str, int], ...] = field(default=())

    def create_kwargs(self) -> dict[str, Any]:
        """Arguments of the Engine API's container create, minus the host config."""
        return {
            "name": self.name,
            "image": self.image,
            "command": list(self.argv),
            "user": SANDBOX_USER,
            "environment": [f"{k}={v}" for k, v in self.env],
            "working_dir": WORKDIR,
            "labels": dict(self.labels),
            "hostname": "sandbox",
            # An empty network namespace with only `lo`, without a trip through libnetwork.
            "network_disabled": True,
            # With detach off, docker-py sets StdinOnce too: stdin closes after our one write.
            "stdin_open": self.stdin,
            "detach": False,
            "tty": False,
            # docker-py would copy proxy settings from the user's ~/.docker/config.json.
            "use_config_proxy": False,
        }

    def host_config_kwargs(self) -> dict[str, Any]:
        """Arguments of docker-py's ``create_host_config``: every wall of the sandbox."""
        lim = self.limits
        mem = lim.memory_mib * _MIB
        return {
            "privileged": False,
            "read_only": True,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true", f"seccomp={self.seccomp_json}"],
            "init": True,
            "ipc_mode": "private",
            "cgroupns": "private",
            "pids_limit": lim.pids,
            "mem_limit": mem,
            "memswap_limit": mem,
            "nano_cpus": int(lim.cpus * 1e9),
            "shm_size": 16 * _MIB,
            "oom_score_adj": 500,
            "ulimits": [
                {"name": "nofile", "soft": lim.nofile, "hard": lim.nofile},
                {"name": "nproc", "soft": lim.nproc, "hard": lim.nproc},
                {"name": "fsize", "soft": lim.fsize_mib * _MIB, "hard": lim.fsize_mib * _MIB},
                {"name": "core", "soft": 0, "hard": 0},
            ],
            # Docker's tmpfs default is noexec; a venv under /tmp needs exec, and code that
            # wants to run something needs no file for it anyway (an interpreter will do).
            "tmpfs": {
                path: f"rw,exec,nosuid,nodev,size={size_mib}m,mode=1777"
                for path, size_mib in self.tmpfs
            },
            # Output is read live from the attach stream; the daemon keeps no log file.
            "log_config": {"type": "none", "config": {}},
            "runtime": self.runtime,
            "auto_remove": False,
        }


def build_spec(
    plan: RunPlan,
    *,
    image: str,
    run_id: str,
    owner: str,
    seccomp_json: str,
    extra_env: Mapping[str, str],
    runtime: str | None,
    extra_labels: Mapping[str, str] | None = None,
) -> ContainerSpec:
    """The container for one call. Pure: same inputs, same spec."""
    argv = plan.argv if plan.stdin is None else (*_STDIN_WRAPPER, *plan.argv)
    env = {**extra_env, **BASE_ENV}
    labels = {k: v for k, v in (extra_labels or {}).items() if not k.startswith(LABEL)}
    labels.update({LABEL: "1", OWNER_LABEL: owner})
    return ContainerSpec(
        name=f"{LABEL}-{run_id}",
        image=image,
        argv=argv,
        limits=plan.limits,
        seccomp_json=seccomp_json,
        env=tuple(sorted(env.items())),
        labels=tuple(sorted(labels.items())),
        stdin=plan.stdin is not None,
        runtime=runtime,
        tmpfs=(("/tmp", plan.limits.tmp_mib), (WORKDIR, plan.limits.workdir_mib)),
    )
