"""PURE: which OCI runtime a sandbox runs under, chosen from what the daemon offers.

gVisor's ``runsc`` needs two daemon entries: a sandbox without a network (the Engine API's
``network_disabled``) does not start under a runsc that would build its own network stack
("cannot run with network enabled in root network namespace"), and an egress sandbox needs
that stack on its internal network. Both get ``--oci-seccomp``, without which runsc loads no
seccomp profile inside the sandbox at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mcp_sandbox.config.settings import RuntimeSetting
from mcp_sandbox.errors import SandboxUnavailable

GVISOR = "runsc"
# The daemon's runtime entries for gVisor: their names and the flags each must carry.
RUNSC_NETWORKED = "runsc"
RUNSC_ISOLATED = "runsc-nonet"
RUNSC_ENTRIES: Mapping[str, tuple[str, ...]] = {
    RUNSC_NETWORKED: ("--oci-seccomp",),
    RUNSC_ISOLATED: ("--oci-seccomp", "--network=none"),
}
# Measured on Docker 20.10 with runsc 20221219: on any Docker network, start fails ("cannot
# run with network enabled in root network namespace") and leaves runsc-gofer and
# runsc-sandbox running. So no egress sandbox is ever created under gVisor.
EGRESS_UNDER_GVISOR = (
    'network "egress" is not available under runsc: gVisor does not start on a Docker '
    "network on this daemon; its operator can set runtime = 'runc' for egress"
)
INSTALL_FIX = "run `mcp-sandbox runtime install-runsc` as root on the Docker host"


@dataclass(frozen=True)
class Runtime:
    """The runtime every sandbox of this server runs under.

    ``name`` is what results report (``runc``, ``runsc``, or the daemon's default's name);
    ``isolated`` and ``networked`` are the daemon entries for ``network="none"`` and
    ``network="egress"`` sandboxes (None: the daemon's default).
    """

    name: str
    isolated: str | None = None
    networked: str | None = None

    @property
    def gvisor(self) -> bool:
        return self.name == GVISOR

    def entry(self, *, networked: bool) -> str | None:
        """The daemon entry a sandbox with (or without) a network is created with."""
        return self.networked if networked else self.isolated


def runsc_problems(offered: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What is missing from the daemon's runtimes for gVisor (empty: ready)."""
    problems = []
    for name, flags in RUNSC_ENTRIES.items():
        entry = offered.get(name)
        if entry is None:
            problems.append(f"the daemon has no runtime {name!r}")
            continue
        args = tuple(entry.get("runtimeArgs") or ())
        missing = [f for f in flags if f not in args]
        if missing:
            problems.append(f"runtime {name!r} lacks {' '.join(missing)}")
    return problems


def choose_runtime(
    setting: RuntimeSetting | None, offered: Mapping[str, Mapping[str, Any]], default: str
) -> Runtime:
    """The runtime for ``setting``, given the daemon's runtimes and its default's name.

    Never falls back silently: a runtime that was asked for and is not there raises
    SandboxUnavailable with the fix. ``auto`` takes gVisor when both of its entries are
    registered as ``runtime install-runsc`` writes them, else the daemon's default.
    """
    if setting is None:
        return Runtime(name=default)
    if setting == "runc":
        if "runc" not in offered:
            raise SandboxUnavailable(
                "runtime = 'runc' but the daemon has no runtime 'runc'; register it, or unset "
                "`runtime` to use the daemon's default"
            )
        return Runtime(name="runc", isolated="runc", networked="runc")
    problems = runsc_problems(offered)
    if setting == "auto" and problems:
        return Runtime(name=default)
    if problems:
        raise SandboxUnavailable(
            f"runtime = 'runsc' but {'; '.join(problems)}; {INSTALL_FIX}, or set runtime = "
            "'runc' (no sandbox runs until then)"
        )
    return Runtime(name=GVISOR, isolated=RUNSC_ISOLATED, networked=RUNSC_NETWORKED)


def platform_of(entry: Mapping[str, Any]) -> str:
    """The gVisor platform a runtime entry runs on (ptrace unless it sets another)."""
    for arg in entry.get("runtimeArgs") or ():
        if str(arg).startswith("--platform="):
            return str(arg).split("=", 1)[1]
    return "ptrace"


def with_runsc_entries(daemon_config: Mapping[str, Any], runsc_path: str) -> dict[str, Any]:
    """``daemon_config`` (daemon.json, parsed) with our two gVisor entries set.

    Every other key and runtime is kept as it was. Raises ValueError when ``runtimes``
    is there but not an object (we refuse to guess what it meant).
    """
    runtimes = daemon_config.get("runtimes", {})
    if not isinstance(runtimes, Mapping):
        raise ValueError("its `runtimes` is not a JSON object")
    merged = dict(runtimes)
    for name, flags in RUNSC_ENTRIES.items():
        merged[name] = {"path": runsc_path, "runtimeArgs": list(flags)}
    return {**daemon_config, "runtimes": merged}
