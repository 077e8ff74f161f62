"""Privilege separation with real processes and real Docker: the HTTP server holds no Docker
access; the launcher holds it and takes only run_code, shell and ping."""

from __future__ import annotations

import json
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import docker
import pytest
import requests

from mcp_sandbox.transport.launcher import frame
from sandbox_client import call, eventually, labelled_containers
from sandbox_http import HttpServer, http_client, http_server, launcher


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, HttpServer]]:
    tmp = tmp_path_factory.mktemp("launcher")
    # The server's Docker points nowhere: whatever runs, runs through the launcher.
    server_env = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    with launcher(tmp) as sock:
        server_env["MCP_SANDBOX_LAUNCHER_SOCKET"] = str(sock)
        with http_server(tmp, server_env) as server:
            yield sock, server


def all_containers() -> set[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--no-trunc"], capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


def assert_nothing_privileged_since(before: set[str]) -> None:
    """No container made since ``before`` is privileged, adds capabilities or mounts /.

    (Other suites may share the daemon, so new containers alone prove nothing.)
    """
    new = sorted(all_containers() - before)
    if not new:
        return
    out = subprocess.run(
        ["docker", "inspect", "--format", "{{json .HostConfig}}", *new],
        capture_output=True,
        text=True,
    )
    for line in out.stdout.splitlines():
        host = json.loads(line)
        assert not host.get("Privileged") and not host.get("CapAdd")
        assert not any(b.split(":")[0] == "/" for b in host.get("Binds") or [])


def raw_exchange(sock: Path, data: bytes) -> dict[str, object] | None:
    """Send ``data``; the launcher's reply, or None when it reset the connection."""
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock))
        s.sendall(data)
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass
    if len(reply) < 4:
        return None
    (length,) = struct.unpack(">I", reply[:4])
    return dict(json.loads(reply[4 : 4 + length]))


async def test_a_server_without_docker_runs_through_the_launcher(
    stack: tuple[Path, HttpServer],
) -> None:
    _, server = stack
    async with http_client(server.url) as client:
        result = await call(client, "run_code", language="python", code="print(6*7)")
        assert result["stdout"] == "42\n"
        result = await call(client, "shell", command="id -u; cat /proc/self/status | grep CapEff")
        assert result["stdout"].split()[:3] == ["65534", "CapEff:", "0000000000000000"]


async def test_files_out_are_read_through_the_launcher(stack: tuple[Path, HttpServer]) -> None:
    _, server = stack
    command = "printf 'from the sandbox\\n' > /tmp/outputs/notes.txt; echo done"
    async with http_client(server.url) as client:
        result = await call(client, "shell", command=command, outputs=True)
        [notes] = result["files"]
        assert notes["content"] == "resource" and result["stdout"] == "done\n"
        read = await client.read_resource(notes["uri"])
        assert read.contents[0].text == "from the sandbox\n"  # type: ignore[union-attr]


def running(program: str) -> set[str]:
    """Our containers in which ``program`` runs (the launcher's pool keeps warm ones too)."""
    found = set()
    for name in labelled_containers():
        top = subprocess.run(
            ["docker", "top", name, "-o", "pid,args"], capture_output=True, text=True
        )
        if any(line.split(None, 1)[1:] == [program] for line in top.stdout.splitlines()):
            found.add(name)
    return found


async def test_a_cancelled_call_stops_its_sandbox(stack: tuple[Path, HttpServer]) -> None:
    _, server = stack
    async with http_client(server.url) as client, anyio.create_task_group() as tg:
        tg.start_soon(client.call_tool, "shell", {"command": "sleep 61", "timeout_s": 60})
        await eventually(lambda: bool(running("sleep 61")))
        (sandbox,) = running("sleep 61")
        tg.cancel_scope.cancel()
    await eventually(lambda: sandbox not in labelled_containers())


def test_docker_api_requests_to_the_launcher_create_and_exec_nothing(
    stack: tuple[Path, HttpServer],
) -> None:
    sock, _ = stack
    before = all_containers()
    api = docker.APIClient(base_url=f"unix://{sock}", version="1.41", timeout=10)
    privileged_root = api.create_host_config(privileged=True, binds=["/:/host:rw"])
    refused = (docker.errors.DockerException, requests.RequestException)
    with pytest.raises(refused):
        api.create_container("mcp-sandbox-runtime:0.1", "id", host_config=privileged_root)
    with pytest.raises(refused):
        api.exec_create(next(iter(before), "anything"), "id")
    assert_nothing_privileged_since(before)


@pytest.mark.parametrize(
    "request_",
    [
        {"op": "run_code", "args": {"language": "python", "code": "1"}, "privileged": True},
        {"op": "shell", "args": {"command": "id", "binds": ["/:/host"]}},
        {"op": "shell", "args": {"command": "id", "cap_add": ["SYS_ADMIN"]}},
        {"op": "exec", "container": "mcp-sandbox-server-1", "cmd": ["sh"]},
    ],
)
def test_smuggled_fields_are_refused_by_the_launcher(
    stack: tuple[Path, HttpServer], request_: dict[str, object]
) -> None:
    sock, _ = stack
    before = all_containers()
    reply = raw_exchange(sock, frame(request_))
    assert reply is not None and reply["error"]["kind"] == "RequestRejected"  # type: ignore[index]
    assert_nothing_privileged_since(before)


def test_sigterm_to_the_launcher_removes_its_running_sandboxes(tmp_path: Path) -> None:
    import socket

    before = set(labelled_containers())
    with launcher(tmp_path) as sock, socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        s.sendall(frame({"op": "shell", "args": {"command": "sleep 60", "timeout_s": 60}}))
        anyio.run(eventually, lambda: bool(set(labelled_containers()) - before))
        # Leaving the block sends SIGTERM and waits for a clean exit.
    assert set(labelled_containers()) <= before
