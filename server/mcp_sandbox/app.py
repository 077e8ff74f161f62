"""Wiring: settings -> the long-lived objects a server or a doctor run needs."""

from __future__ import annotations

import functools
import logging
import sys

from mcp_sandbox.docker_api import DockerApi
from mcp_sandbox.host import default_max_concurrent, process_identity
from mcp_sandbox.resources import load_seccomp
from mcp_sandbox.service import SandboxService
from mcp_sandbox.settings import Settings


def configure_logging(level: str) -> None:
    """Concise lines on stderr: stdout is the protocol."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def make_service(settings: Settings, api: DockerApi | None = None) -> SandboxService:
    seccomp = functools.cache(lambda: load_seccomp(settings.seccomp_profile))
    return SandboxService(
        settings,
        api or DockerApi(),
        seccomp_json=seccomp,
        scrub=lambda text: text,
        scrub_margin=0,
        max_concurrent=settings.max_concurrent
        or default_max_concurrent(settings.limits.memory_mib),
        owner=process_identity(),
    )
