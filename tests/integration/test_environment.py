"""Project environments, end to end: a real project from PyPI (its sdist), its test
dependencies installed by `mcp-sandbox env build` from a local index this module serves,
then its suite run through `shell` in `ro` with no network.

Every packet stays on this machine: the index (the real wheels, pip-downloaded on the host)
and a fake "outside" host are our own containers on an internal network of our own. The
build's proxy goes out on that network (``egress.outbound_network``), finds both names in
``egress.hosts`` and may connect to both addresses (``egress.opened_cidrs``): only
``environment.indexes`` keeps the outside host out, so a refusal there is the rule's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from mcp import Client

from integration.package_index import fetch
from integration.test_approval import Human
from outside_host import FAKE, container_ip, docker
from sandbox_client import (
    MODES,
    TEST_RUN_ID,
    TEST_RUN_LABEL,
    call,
    call_error,
    connect,
    server_params,
)

IMAGE = "mcp-sandbox-runtime:0.1"
ENV_LABEL = "mcp-sandbox.environment"


def _labels() -> list[str]:
    return ["--label", "mcp-sandbox.test=environment", "--label", f"{TEST_RUN_LABEL}={TEST_RUN_ID}"]


@dataclass(frozen=True)
class Index:
    network: str
    index_ip: str
    outside_ip: str
    containers: dict[str, str]

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "MCP_SANDBOX_ENVIRONMENT__PIP_INDEX_URL": "http://index.test/simple",
            "MCP_SANDBOX_ENVIRONMENT__INDEXES": json.dumps(["index.test"]),
            "MCP_SANDBOX_EGRESS__HOSTS": json.dumps(
                {"index.test": self.index_ip, "outside.test": self.outside_ip}
            ),
            "MCP_SANDBOX_EGRESS__OPENED_CIDRS": json.dumps(
                [f"{self.index_ip}/32", f"{self.outside_ip}/32"]
            ),
            "MCP_SANDBOX_EGRESS__OUTBOUND_NETWORK": self.network,
            # The server under test is this tree's, not whatever the venv installed.
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
            **extra,
        }

    def outside_connections(self) -> list[str]:
        log = docker("logs", self.containers["outside"]).splitlines()
        return [e for e in log if e.startswith("conn ")]


@pytest.fixture(scope="module")
def sources() -> tuple[Path, Path]:
    return fetch()


@pytest.fixture(scope="module")
def index(sources: tuple[Path, Path]) -> Iterator[Index]:
    _, root = sources
    tag = uuid.uuid4().hex[:8]
    network = f"mcp-sandbox-test-envnet-{tag}"
    docker("network", "create", "--internal", *_labels(), network)
    names = {"index": f"mcp-sandbox-test-envidx-{tag}", "outside": f"mcp-sandbox-test-envout-{tag}"}
    walls = ["--network", network, "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL"]
    try:
        docker(
            "run", "-d", "--name", names["index"], *_labels(), *walls,
            "-v", f"{root}:/srv:ro", IMAGE, "python3", "-m", "http.server", "80",
            "--directory", "/srv",
        )  # fmt: skip
        docker(
            "run", "-d", "--name", names["outside"], *_labels(), *walls,
            IMAGE, "python3", "-c", FAKE, "web", "outside.test",
        )  # fmt: skip

        yield Index(network, container_ip(names["index"]), container_ip(names["outside"]), names)
    finally:
        docker("rm", "-f", *names.values(), check=False)
        docker("network", "rm", network, check=False)


def env_command(
    project: Path, index: Index, action: str, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = server_params(index.env(**extra)).env
    return subprocess.run(
        [sys.executable, "-m", "mcp_sandbox", "env", action, "--workspace", str(project)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )


def environment_volumes(project: Path) -> list[str]:
    """Data and seal volumes of any environment whose workspace is ``project``."""
    out = docker(
        "volume", "ls", "--filter", f"label={ENV_LABEL}.workspace={project}",
        "--format", "{{.Name}}",
    )  # fmt: skip
    return out.split()


@pytest.fixture(scope="module")
def project(sources: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    sdist, _ = sources
    root = tmp_path_factory.mktemp("env") / "h2"
    shutil.copytree(sdist, root)
    return root


@pytest.fixture(scope="module")
def built(project: Path, index: Index) -> Iterator[subprocess.CompletedProcess[str]]:
    done = env_command(project, index, "build")
    try:
        yield done
    finally:
        env_command(project, index, "rm")
        assert environment_volumes(project) == []


@pytest.fixture(scope="module")
async def ws(project: Path, index: Index, built: object) -> AsyncIterator[Client]:
    async with connect("auto", env=index.env(MCP_SANDBOX_WORKSPACE=str(project))) as c:
        yield c


def test_env_build_installs_the_test_dependencies_from_the_local_index(
    built: subprocess.CompletedProcess[str],
) -> None:
    assert built.returncode == 0, built.stderr
    assert "installing:" in built.stderr  # progress while it ran
    for name in ("hypothesis-", "pytest-", "hpack-", "hyperframe-", "pytest_xdist-"):
        assert f"  {name}" in built.stdout, built.stdout


async def test_the_projects_suite_passes_in_ro_with_its_environment(ws: Client) -> None:
    result = await call(
        ws,
        "shell",
        command="python -m pytest -q -p no:cacheprovider -x --hypothesis-profile=ci",
        timeout_s=120,
    )
    assert result["exit_code"] == 0, result["stdout"][-3000:] + result["stderr"][-2000:]
    assert " passed" in result["stdout"]
    assert result["workspace"]["mode"] == "ro"
    env = result["environment"]
    assert env["state"] == "ready" and env["id"].startswith("mcp-sandbox-env-")
    assert env["built_at"].endswith("Z") and env["hint"] is None


async def test_the_environment_is_read_only_and_the_call_has_no_network(
    ws: Client, index: Index
) -> None:
    probe = (
        "grep ' /env ' /proc/self/mounts; "
        "touch /env/planted 2>&1; echo touch=$?; "
        f"python -c \"import socket; socket.create_connection(('{index.index_ip}', 80), 3)\" "
        "2>&1 | tail -1; "
        "python -c 'import sys, hypothesis; print(sys.prefix)'"
    )
    result = await call(ws, "shell", command=probe)
    out = result["stdout"]
    mount = out.splitlines()[0].split()
    assert mount[1] == "/env" and "ro" in mount[3].split(","), out
    assert "Read-only file system" in out and "touch=1" in out
    assert "Network is unreachable" in out or "OSError" in out, out
    assert out.rstrip().endswith("/env/venv")


async def test_warm_and_cold_copy_calls_mount_the_environment_too(ws: Client) -> None:
    probe = (
        "grep -c ' /env ' /proc/self/mounts; python -c 'import hypothesis, sys; print(sys.prefix)'"
    )
    pooled: set[bool] = set()
    with anyio.fail_after(90):
        while pooled != {False, True}:
            result = await call(ws, "shell", command=probe, workspace="copy")
            assert result["stdout"] == "1\n/env/venv\n", result
            pooled.add(result["pooled"])
            await anyio.sleep(0.5)


def test_the_build_sandbox_reaches_the_index_and_nothing_else(
    project: Path, index: Index, tmp_path: Path
) -> None:
    other = tmp_path / "probe"
    other.mkdir()
    (other / "requirements.txt").write_text("iniconfig\n")
    reach = (
        "python - <<'EOF'\n"
        "import urllib.request\n"
        "for url in ('http://outside.test/', 'http://index.test/simple/'):\n"
        "    try:\n"
        "        print(url, urllib.request.urlopen(url, timeout=5).status)\n"
        "    except Exception as e:\n"
        "        print(url, 'refused', e)\n"
        "EOF\n"
        "python -m pip install -r requirements.txt"
    )
    done = env_command(other, index, "build", MCP_SANDBOX_ENVIRONMENT__PYTHON=reach)
    try:
        assert done.returncode == 0, done.stderr
        assert "refused: outside.test:80 (not in allowlist)" in done.stdout, done.stdout
        assert "  iniconfig-" in done.stdout
        assert index.outside_connections() == []
    finally:
        env_command(other, index, "rm")
    assert environment_volumes(other) == []


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (
            {
                "MCP_SANDBOX_ENVIRONMENT__TIMEOUT_S": "3",
                "MCP_SANDBOX_ENVIRONMENT__PYTHON": "sleep 60",
            },
            "passed environment.timeout_s (3 s)",
        ),
        (
            {
                "MCP_SANDBOX_ENVIRONMENT__MAX_MIB": "16",
                "MCP_SANDBOX_ENVIRONMENT__PYTHON": (
                    "for i in 1 2 3 4 5 6; do head -c 8M /dev/zero > /env/fill$i; sleep 1; done"
                ),
            },
            "grew past environment.max_mib",
        ),
    ],
    ids=["timeout", "size"],
)
def test_a_build_past_its_bounds_leaves_no_environment(
    index: Index, tmp_path: Path, extra: dict[str, str], needle: str
) -> None:
    (tmp_path / "requirements.txt").write_text("iniconfig\n")
    done = env_command(tmp_path, index, "build", **extra)
    assert done.returncode == 1
    assert needle in done.stderr, done.stderr
    assert environment_volumes(tmp_path) == []
    status = env_command(tmp_path, index, "status")
    assert status.stdout.startswith("none:"), status.stdout


async def test_a_changed_manifest_marks_the_environment_stale(
    ws: Client, project: Path, index: Index
) -> None:
    manifest = project / "pyproject.toml"
    before = manifest.read_text()
    manifest.write_text(before + "\n# a new line\n")
    try:
        result = await call(ws, "shell", command="python -c 'import hypothesis'")
        env = result["environment"]
        assert result["exit_code"] == 0  # it still ran with the old environment
        assert env["state"] == "stale"
        assert "prepare_env" in env["hint"] and "mcp-sandbox env build" in env["hint"]
        status = env_command(project, index, "status")
        assert status.stdout.startswith("stale:"), status.stdout
    finally:
        manifest.write_text(before)
    result = await call(ws, "shell", command="true")
    assert result["environment"]["state"] == "ready"


@pytest.mark.parametrize("mode", MODES)
async def test_prepare_env_asks_the_human_reports_progress_and_later_calls_have_it(
    index: Index, tmp_path: Path, mode: str
) -> None:
    (tmp_path / "requirements.txt").write_text("sortedcontainers\n")
    human = Human("accept")
    lines: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        lines.append(message or "")

    env = index.env(MCP_SANDBOX_WORKSPACE=str(tmp_path))
    try:
        async with connect(mode, env=env, elicitation_callback=human) as c:
            before = await call(
                c, "shell", command="python -c 'import sortedcontainers' 2>&1 | tail -1"
            )
            assert before["environment"]["state"] == "none"
            assert "No module named 'sortedcontainers'" in before["stdout"]
            result = await c.call_tool("prepare_env", {}, progress_callback=on_progress)
            assert not result.is_error, result.content
            built = result.structured_content
            assert built is not None and built["state"] == "ready"
            assert any(p.startswith("sortedcontainers-") for p in built["packages"])
            after = await call(c, "shell", command="python -c 'import sortedcontainers; print(1)'")
            assert after["stdout"] == "1\n"
            assert after["environment"]["id"] == built["id"]
            assert after["environment"]["state"] == "ready"
        assert len(human.questions) == 1 and "index.test" in human.questions[0]
        assert lines and lines[0].startswith("building the environment of")
    finally:
        env_command(tmp_path, index, "rm")
    assert environment_volumes(tmp_path) == []


async def test_a_declined_prepare_env_builds_nothing(index: Index, tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("sortedcontainers\n")
    env = index.env(MCP_SANDBOX_WORKSPACE=str(tmp_path))
    async with connect("auto", env=env, elicitation_callback=Human("decline")) as c:
        message = await call_error(c, "prepare_env")
    assert "declined" in message, message
    assert environment_volumes(tmp_path) == []
