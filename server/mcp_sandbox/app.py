"""Wiring: settings -> the long-lived objects a server or a doctor run needs."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Mapping

from mcp_sandbox.config.settings import Settings
from mcp_sandbox.engine.backend import Engine
from mcp_sandbox.engine.docker_api import DockerApi
from mcp_sandbox.engine.owners import process_identity
from mcp_sandbox.output.scrubber import Scrubber
from mcp_sandbox.sandbox.admission import default_max_concurrent
from mcp_sandbox.sandbox.seccomp import load_seccomp
from mcp_sandbox.service import SandboxService, make_scrubber


class ScrubbingFilter(logging.Filter):
    """Every log line passes the scrubber, so a log holds no secret the result would not."""

    def __init__(self, scrub: Callable[[str], str]) -> None:
        super().__init__()
        self._scrub = scrub

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        record.msg, record.args = self._scrub(message), None
        return True


def configure_logging(level: str, scrub: Callable[[str], str] = lambda s: s) -> None:
    """Concise, scrubbed lines on stderr: stdout is the protocol."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(ScrubbingFilter(scrub))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def sandbox_env(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`pass_env` values read once from the server's environment, then `env` on top."""
    environ = os.environ if environ is None else environ
    passed = {n: environ[n] for n in settings.pass_env if n in environ}
    return {**passed, **settings.env}


def make_service(
    settings: Settings, api: Engine | None = None, scrubber: Scrubber | None = None
) -> SandboxService:
    scrubber = scrubber or make_scrubber(settings)
    seccomp = functools.cache(lambda: load_seccomp(settings.seccomp_profile))
    return SandboxService(
        settings,
        api or DockerApi(),
        seccomp_json=seccomp,
        scrub=scrubber.scrub,
        scrub_margin=scrubber.max_span,
        sandbox_env=sandbox_env(settings),
        max_concurrent=settings.max_concurrent
        or default_max_concurrent(settings.limits.memory_mib),
        owner=process_identity(),
    )
