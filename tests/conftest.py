"""Shared fixtures: servers per protocol era, and a daemon left as it was found."""

from __future__ import annotations

import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from mcp import Client

from sandbox_client import MODES, RUNTIME, connect, labelled_containers

# Timing is for benchmarks/, not tests: on a busy 2-core host a pure example may take 250 ms.
settings.register_profile(
    "mcp-sandbox", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("mcp-sandbox")

# A project for sandboxes to test (one of its tests fails on purpose), not our tests.
collect_ignore = ["sample_project"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under another runtime than runc, the walls run once: the protocol era is no wall."""
    if RUNTIME == "runc":
        return
    legacy = [
        item
        for item in items
        if "legacy" in getattr(getattr(item, "callspec", None), "params", {}).values()
    ]
    if legacy:
        config.hook.pytest_deselected(items=legacy)
        items[:] = [item for item in items if item not in legacy]


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session", params=MODES)
async def client(request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    """One server per protocol era, shared by the tests that only need a default server."""
    async with connect(request.param) as c:
        yield c


@pytest.fixture(scope="session", autouse=True)
def _daemon_left_as_found(request: pytest.FixtureRequest) -> Iterator[None]:
    """The suite must leave no labelled container behind."""
    docker_tests = any(item.get_closest_marker("docker") for item in request.session.items)
    if not docker_tests:
        yield
        return
    probe = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.fail("Docker is not reachable: tests marked `docker` need a daemon (never skipped)")
    before = set(labelled_containers())
    yield
    left = set(labelled_containers()) - before
    assert not left, f"the suite left labelled containers behind: {sorted(left)}"
    if RUNTIME == "runsc":
        assert not orphaned_runsc(), "runsc-sandbox or runsc-gofer left for a removed container"


def orphaned_runsc() -> list[str]:
    """Container ids whose runsc-sandbox or runsc-gofer process outlived the container."""
    live = subprocess.run(
        ["docker", "ps", "-aq", "--no-trunc"], capture_output=True, text=True, check=True
    ).stdout.split()
    orphans = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0] in (b"runsc-sandbox", b"runsc-gofer"):
            ids = re.findall(r"[0-9a-f]{64}", b" ".join(argv).decode(errors="replace"))
            if ids and ids[-1] not in live:
                orphans.append(ids[-1])
    return sorted(set(orphans))
