"""Host side of the fake "outside" containers the egress and environment tests start:
the program they run (``integration/fake_outside.py``), the docker CLI, readiness, addresses."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

FAKE = (Path(__file__).parent / "integration" / "fake_outside.py").read_text()


def docker(*args: str, check: bool = True) -> str:
    """The docker CLI's stdout; a failure (with ``check``) is an assertion naming the call."""
    out = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])}: {out.stderr.strip()}")
    return out.stdout.strip()


def wait_ready(names: Iterable[str], timeout_s: float = 30) -> None:
    """Until each fake container has logged ``ready``."""
    deadline = time.monotonic() + timeout_s
    for name in names:
        while "ready" not in docker("logs", name):
            assert time.monotonic() < deadline, f"{name} did not start"
            time.sleep(0.1)


def container_ip(name: str) -> str:
    """The address of a container on its one network."""
    return docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)
