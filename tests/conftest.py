"""Shared fixtures: servers per protocol era, and a daemon left as it was found."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import HealthCheck, settings
from mcp import Client

from sandbox_client import MODES, connect, labelled_containers

# Timing is for benchmarks/, not tests: on a busy 2-core host a pure example may take 250 ms.
settings.register_profile(
    "mcp-sandbox", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("mcp-sandbox")

# A project for sandboxes to test (one of its tests fails on purpose), not our tests.
collect_ignore = ["sample_project"]


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
