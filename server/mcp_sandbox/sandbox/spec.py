"""PURE: a decided run plus identity -> the exact container the daemon is asked for."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from mcp_sandbox.constants import LABEL, MIB, OWNER_LABEL, SANDBOX_UID, SANDBOX_USER, WORKDIR
from mcp_sandbox.egress.link import CA_BUNDLE_TARGET, EGRESS_DNS, EGRESS_SYSCTLS, EgressLink
from mcp_sandbox.policy.limits import MIN_CPUS, Limits, RunPlan

# Set in every sandbox; nothing of the server's own environment is passed.
BASE_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONPYCACHEPREFIX": "/tmp/.pycache",
    "npm_config_cache": "/tmp/.npm",
    "XDG_CACHE_HOME": "/tmp/.cache",
    # The workspace may be read-only: tools that write caches beside the code write to /tmp.
    "PYTEST_ADDOPTS": "-o cache_dir=/tmp/.pytest_cache",
    "MYPY_CACHE_DIR": "/tmp/.mypy_cache",
    "RUFF_CACHE_DIR": "/tmp/.ruff_cache",
    # The workspace belongs to another user than the sandbox's, and git would refuse it
    # ("dubious ownership"); inside the sandbox there is nothing that check protects.
    "GIT_CONFIG_COUNT": "1",
    "GIT_CONFIG_KEY_0": "safe.directory",
    "GIT_CONFIG_VALUE_0": "*",
}

# stdin crosses the attach stream as base64, so no byte of it can be read by the daemon as a
# detach key; this decodes it in front of the program.
_STDIN_WRAPPER = ("/bin/sh", "-c", 'base64 -d | "$@"', "stdin-decoder")


@dataclass(frozen=True)
class Mount:
    """A host path or volume in the sandbox, as data; ``engine()`` is the Engine API's form."""

    kind: Literal["bind", "volume"]
    source: str
    target: str
    read_only: bool

    def engine(self) -> dict[str, Any]:
        m: dict[str, Any] = {
            "Type": self.kind,
            "Source": self.source,
            "Target": self.target,
            "ReadOnly": self.read_only,
        }
        if self.kind == "bind":
            # Docker 20.10 makes only the top of a recursive bind read-only: mounts below it
            # would stay writable. Non-recursive, they are not there at all.
            m["BindOptions"] = {"Propagation": "rprivate", "NonRecursive": True}
        else:
            # Never fill the volume from the image's directory at the mount point.
            m["VolumeOptions"] = {"NoCopy": True}
        return m


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
    # network="egress": the call's own internal network, whose only exit is the proxy.
    egress_network: str | None = None
    mounts: tuple[Mount, ...] = field(default=())
    working_dir: str = WORKDIR
    # A copy's room in a warm sandbox (``with_copy_room``): a tmpfs of (path, bytes) owned by
    # the sandbox user, 0755, as the cold path's tmpfs volume is; its stub fills it.
    owned_tmpfs: tuple[tuple[str, int], ...] = field(default=())

    def create_kwargs(self) -> dict[str, Any]:
        """Arguments of the Engine API's container create, minus the host config."""
        return {
            "name": self.name,
            "image": self.image,
            "command": list(self.argv),
            "user": SANDBOX_USER,
            "environment": [f"{k}={v}" for k, v in self.env],
            "working_dir": self.working_dir,
            "labels": dict(self.labels),
            "hostname": "sandbox",
            # An empty network namespace with only `lo`, without a trip through libnetwork.
            "network_disabled": self.egress_network is None,
            # With detach off, docker-py sets StdinOnce too: stdin closes after our one write.
            "stdin_open": self.stdin,
            "detach": False,
            "tty": False,
            # docker-py would copy proxy settings from the user's ~/.docker/config.json.
            "use_config_proxy": False,
        } | self._egress_create_kwargs()

    def _egress_create_kwargs(self) -> dict[str, Any]:
        if self.egress_network is None:
            return {}
        return {"networking_config": {"EndpointsConfig": {self.egress_network: {}}}}

    def _egress_host_kwargs(self) -> dict[str, Any]:
        if self.egress_network is None:
            return {}
        return {
            "network_mode": self.egress_network,
            # Docker's resolver (127.0.0.11) then forwards inside the sandbox, to nothing.
            "dns": list(EGRESS_DNS),
            # A program that resolves by itself (not through the proxy) fails in seconds.
            "dns_opt": ["timeout:1", "attempts:1"],
            "sysctls": dict(EGRESS_SYSCTLS),
        }

    def host_config_kwargs(self) -> dict[str, Any]:
        """Arguments of docker-py's ``create_host_config``: every wall of the sandbox."""
        lim = self.limits
        mem = lim.memory_mib * MIB
        nano_cpus = int(lim.cpus * 1e9)
        if nano_cpus < int(MIN_CPUS * 1e9):
            # 0 would mean no CPU quota at all, and runc refuses less than 1 ms per 100 ms.
            raise ValueError(f"cpus {lim.cpus} is below the minimum of {MIN_CPUS}")
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
            "nano_cpus": nano_cpus,
            "shm_size": 16 * MIB,
            "oom_score_adj": 500,
            "ulimits": [
                {"name": "nofile", "soft": lim.nofile, "hard": lim.nofile},
                {"name": "nproc", "soft": lim.nproc, "hard": lim.nproc},
                {"name": "fsize", "soft": lim.fsize_mib * MIB, "hard": lim.fsize_mib * MIB},
                {"name": "core", "soft": 0, "hard": 0},
            ],
            # Docker's tmpfs default is noexec; a venv under /tmp needs exec, and code that
            # wants to run something needs no file for it anyway (an interpreter will do).
            "tmpfs": {
                path: f"rw,exec,nosuid,nodev,size={size_mib}m,mode=1777"
                for path, size_mib in self.tmpfs
            }
            | {
                path: f"rw,exec,nosuid,nodev,size={size},uid={SANDBOX_UID},gid={SANDBOX_UID},"
                "mode=0755"
                for path, size in self.owned_tmpfs
            },
            "mounts": [m.engine() for m in self.mounts],
            # Output is read live from the attach stream; the daemon keeps no log file.
            "log_config": {"type": "none", "config": {}},
            "runtime": self.runtime,
            "auto_remove": False,
        } | self._egress_host_kwargs()


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


def with_egress(spec: ContainerSpec, link: EgressLink) -> ContainerSpec:
    """``spec`` on the call's internal network, with the proxy variables (they win), and the
    CA bundle mounted read-only when the proxy terminates TLS for credential hosts."""
    env = {**dict(spec.env), **link.env()}
    mounts = spec.mounts
    if link.ca_bundle is not None:
        mounts = (*mounts, Mount("bind", link.ca_bundle, CA_BUNDLE_TARGET, read_only=True))
    return replace(spec, env=tuple(sorted(env.items())), egress_network=link.network, mounts=mounts)


def with_workspace(
    spec: ContainerSpec, mounts: tuple[Mount, ...], working_dir: str
) -> ContainerSpec:
    """``spec`` with the workspace mounted; a mount replaces the scratch tmpfs at its target."""
    targets = {m.target for m in mounts}
    tmpfs = tuple((path, size) for path, size in spec.tmpfs if path not in targets)
    return replace(spec, mounts=mounts, working_dir=working_dir, tmpfs=tmpfs)


def with_copy_room(spec: ContainerSpec, room_bytes: int) -> ContainerSpec:
    """``spec`` whose ``/workspace`` is a copy's room of ``room_bytes`` that its warm stub
    fills: a tmpfs owned by the sandbox user, in place of the scratch tmpfs.

    The copy's pages count against the sandbox's memory here (its stub wrote them), where a
    cold copy's count against the host's: the limit grows by the room's copy part (the
    room but the run's ``workdir_mib`` and its MiB of slack), so the program has what it
    would have cold.
    """
    tmpfs = tuple((path, size) for path, size in spec.tmpfs if path != WORKDIR)
    copy_mib = max(room_bytes // MIB - spec.limits.workdir_mib - 1, 0)
    limits = spec.limits.model_copy(update={"memory_mib": spec.limits.memory_mib + copy_mib})
    return replace(spec, tmpfs=tmpfs, owned_tmpfs=((WORKDIR, room_bytes),), limits=limits)
