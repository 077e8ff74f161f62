"""The launcher takes a narrow request and builds every container from its own policy.

A table of create requests a compromised server might send: each is refused. Then, for any
request the launcher accepts, the container it asks Docker for keeps every wall.
"""

from __future__ import annotations

import contextlib
import functools
import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fake_engine import FakeEngine, Script
from mcp_sandbox.app import make_service
from mcp_sandbox.config.settings import Settings
from mcp_sandbox.errors import HostBusy, RequestRejected, SandboxError, SandboxUnavailable
from mcp_sandbox.policy.limits import CallBounds
from mcp_sandbox.sandbox.seccomp import load_seccomp
from mcp_sandbox.service import SandboxService
from mcp_sandbox.transport import launcher as launcher_mod
from mcp_sandbox.transport.launcher import (
    LauncherClient,
    PingRequest,
    RunCodeRequest,
    ShellRequest,
    frame,
    frame_length,
    handle_connection,
    max_request_bytes,
    parse_request,
)

OK_ARGS = {"language": "python", "code": "print(1)"}

# What an attacker holding the server would ask for, every way we can think of spelling it.
FORBIDDEN: list[tuple[str, object]] = [
    ("docker create body", {"Image": "alpine", "HostConfig": {"Privileged": True}}),
    ("unknown op", {"op": "create", "config": {"HostConfig": {"Privileged": True}}}),
    ("exec op", {"op": "exec", "container": "mcp-sandbox-server-1", "cmd": ["sh"]}),
    ("privileged beside args", {"op": "run_code", "args": OK_ARGS, "privileged": True}),
    ("host config beside args", {"op": "shell", "args": {"command": "id"}, "HostConfig": {}}),
    ("privileged in args", {"op": "run_code", "args": {**OK_ARGS, "privileged": True}}),
    ("Privileged, Go's spelling", {"op": "run_code", "args": {**OK_ARGS, "Privileged": True}}),
    ("bind-mount /", {"op": "run_code", "args": {**OK_ARGS, "binds": ["/:/host"]}}),
    ("Binds", {"op": "shell", "args": {"command": "id", "Binds": ["/:/host:rw"]}}),
    ("mounts", {"op": "run_code", "args": {**OK_ARGS, "mounts": [{"Source": "/"}]}}),
    ("volumes", {"op": "run_code", "args": {**OK_ARGS, "volumes": {"/host": {}}}}),
    ("volumes_from", {"op": "run_code", "args": {**OK_ARGS, "volumes_from": ["server"]}}),
    ("cap_add", {"op": "run_code", "args": {**OK_ARGS, "cap_add": ["SYS_ADMIN"]}}),
    ("CapAdd", {"op": "shell", "args": {"command": "id", "CapAdd": ["ALL"]}}),
    ("devices", {"op": "run_code", "args": {**OK_ARGS, "devices": ["/dev/sda:/dev/sda"]}}),
    ("host pid", {"op": "run_code", "args": {**OK_ARGS, "pid_mode": "host"}}),
    ("host network", {"op": "run_code", "args": {**OK_ARGS, "network_mode": "host"}}),
    ("host ipc", {"op": "run_code", "args": {**OK_ARGS, "ipc_mode": "host"}}),
    ("host userns", {"op": "run_code", "args": {**OK_ARGS, "userns_mode": "host"}}),
    ("another seccomp", {"op": "run_code", "args": {**OK_ARGS, "seccomp": "unconfined"}}),
    (
        "security_opt",
        {"op": "shell", "args": {"command": "id", "security_opt": ["seccomp=unconfined"]}},
    ),
    ("another image", {"op": "run_code", "args": {**OK_ARGS, "image": "alpine"}}),
    ("another runtime", {"op": "run_code", "args": {**OK_ARGS, "runtime": "runc"}}),
    ("root user", {"op": "run_code", "args": {**OK_ARGS, "user": "0:0"}}),
    ("environment", {"op": "run_code", "args": {**OK_ARGS, "env": {"LD_PRELOAD": "/x"}}}),
    ("labels", {"op": "run_code", "args": {**OK_ARGS, "labels": {"mcp-sandbox": "x"}}}),
    # memory_mib, cpus and output_bytes are arguments now, bounded by the launcher's own
    # settings when the run is decided (policy.limits.plan_run); no other limit is.
    ("limits", {"op": "run_code", "args": {**OK_ARGS, "pids": 65536}}),
    ("language as a path", {"op": "run_code", "args": {**OK_ARGS, "language": "../../bin/sh"}}),
    ("args missing", {"op": "run_code"}),
    ("args not an object", {"op": "shell", "args": "id"}),
    ("a list of requests", [{"op": "ping"}, {"op": "run_code", "args": OK_ARGS}]),
    ("op not a string", {"op": ["run_code"], "args": OK_ARGS}),
    ("output of a path", {"op": "output", "run_id": "../../etc/passwd", "stream": "stdout"}),
    ("output of a file", {"op": "output", "run_id": "0123456789ab", "stream": "pytest.xml"}),
    (
        "output with a path",
        {"op": "output", "run_id": "0123456789ab", "stream": "stdout", "path": "/"},
    ),
]


@pytest.mark.parametrize(("what", "request_"), FORBIDDEN, ids=[w for w, _ in FORBIDDEN])
def test_a_forbidden_request_is_refused(what: str, request_: object) -> None:
    with pytest.raises(RequestRejected) as caught:
        parse_request(json.dumps(request_).encode())
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"\xff\xfe", b"null", b"[" * 100_000 + b"]" * 100_000, b'"run_code"'],
)
def test_what_is_not_json_or_not_an_object_is_refused(body: bytes) -> None:
    with pytest.raises(RequestRejected):
        parse_request(body)


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /v1.41/containers/create HTTP/1.1\r\nHost: docker\r\n\r\n",
        b"POST /containers/x/exec HTTP/1.1\r\n",
        b"GET /version HTTP/1.1\r\n",
        b"PUT /containers/x/archive?path=/ HTTP/1.1\r\n",
        b"\x00\x00\x00\x00",
        struct.pack(">I", 2**31),
    ],
)
def test_docker_api_requests_do_not_even_frame(raw: bytes) -> None:
    """An Engine API request read as our frame header announces gigabytes: refused."""
    with pytest.raises(RequestRejected, match="frame of"):
        frame_length(raw[:4], max_request_bytes(CallBounds()))


def test_the_allowed_requests_parse() -> None:
    assert isinstance(parse_request(b'{"op":"ping"}'), PingRequest)
    run = parse_request(json.dumps({"op": "run_code", "args": OK_ARGS}).encode())
    assert isinstance(run, RunCodeRequest) and run.args.code == "print(1)"
    shell = parse_request(b'{"op":"shell","args":{"command":"id","timeout_s":3,"stdin":"x"}}')
    assert isinstance(shell, ShellRequest) and shell.args.timeout_s == 3


def test_a_frame_round_trips_lone_surrogates_and_control_bytes() -> None:
    message = {"op": "run_code", "args": {"language": "python", "code": "\ud800\x00\x10\u202e"}}
    data = frame(message)
    assert frame_length(data[:4], 1 << 20) == len(data) - 4
    parsed = parse_request(data[4:])
    assert isinstance(parsed, RunCodeRequest) and parsed.args.code == "\ud800\x00\x10\u202e"


def test_the_largest_allowed_request_fits_a_frame() -> None:
    bounds = CallBounds()
    worst = "\x01" * bounds.max_code_bytes
    data = frame({"op": "shell", "args": {"command": worst, "stdin": "\x01" * 1000}})
    assert len(data) - 4 <= max_request_bytes(bounds)


# --- what the launcher asks Docker for ----------------------------------------------------


def _service(api: FakeEngine, **settings_kw: Any) -> SandboxService:
    return make_service(Settings(**settings_kw), api)


@functools.cache
def _policy_service() -> tuple[FakeEngine, SandboxService]:
    api = FakeEngine()
    return api, _service(api, image="policy-image:7")


request_st = st.one_of(
    st.builds(
        lambda lang, code, t, stdin: {
            "op": "run_code",
            "args": {"language": lang, "code": code, "timeout_s": t, "stdin": stdin},
        },
        st.sampled_from(["python", "javascript", "bash"]),
        st.text(min_size=1, max_size=200),
        st.none() | st.floats(0.1, 120),
        st.none() | st.text(max_size=50),
    ),
    st.builds(
        lambda cmd, t: {"op": "shell", "args": {"command": cmd, "timeout_s": t}},
        st.text(min_size=1, max_size=200),
        st.none() | st.floats(0.1, 120),
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request_st)
async def test_any_accepted_request_gets_the_launchers_own_walls(request_: dict[str, Any]) -> None:
    api, service = _policy_service()
    api.created.clear()
    api.removed.clear()
    try:
        parsed = parse_request(json.dumps(request_).encode())
    except RequestRejected:
        return
    reply = await launcher_mod._dispatch(service, parsed)
    if "error" in reply:
        assert reply["error"]["kind"] == "RequestRejected"  # e.g. blank code: policy said no
        assert not api.created
        return
    [(create, host)] = api.created
    assert create["image"] == "policy-image:7"
    assert create["user"] == "65534:65534"
    assert host["privileged"] is False
    assert host["cap_drop"] == ["ALL"] and not host.get("cap_add")
    assert not host.get("binds") and not host.get("devices")
    # The one host path: the launcher's own workspace (its cwd), read-only, and its masks.
    assert all(m["ReadOnly"] and m["Target"].startswith("/workspace") for m in host["mounts"])
    assert not host.get("volumes_from") and not host.get("device_requests")
    for ns in ("pid_mode", "ipc_mode", "uts_mode", "userns_mode", "network_mode", "cgroupns"):
        assert host.get(ns) in (None, "private", "none", ""), ns
    profile = load_seccomp(None)
    assert f"seccomp={profile}" in host["security_opt"]
    assert not any("unconfined" in o for o in host["security_opt"])
    assert "no-new-privileges:true" in host["security_opt"]
    # With no AfterReply task group running here, the removal runs on its own thread.
    with anyio.fail_after(5):
        while not api.removed:  # noqa: ASYNC110  # the fake records from a thread
            await anyio.sleep(0.005)
    assert api.removed == [create["name"]]


# --- one connection, over a real Unix socket, with the fake daemon -------------------------


@contextlib.asynccontextmanager
async def serving(path: Path, handler: Callable[[Any], Awaitable[None]]) -> AsyncIterator[None]:
    listener = await anyio.create_unix_listener(path)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handler, tg)
        yield
        tg.cancel_scope.cancel()


def _launcher(service: SandboxService) -> Callable[[Any], Awaitable[None]]:
    connections = anyio.CapacityLimiter(4)
    return lambda stream: handle_connection(stream, service, connections)


async def test_client_and_launcher_speak_the_same_protocol(tmp_path: Path) -> None:
    api = FakeEngine()
    sock = tmp_path / "l.sock"
    async with serving(sock, _launcher(_service(api))):
        client = LauncherClient(sock)
        await client.ping()
        from mcp_sandbox.policy.arguments import RunCodeArgs

        result = await client.run_code(RunCodeArgs(language="python", code="print(1)"))
        assert result.exit_code == 0 and result.stdout == "ok\n"
        with pytest.raises(RequestRejected, match="empty"):
            await client.run_code(RunCodeArgs(language="python", code="   "))


async def test_a_cut_streams_full_text_is_read_from_the_launcher(tmp_path: Path) -> None:
    api = FakeEngine(Script(stdout=b"line of a long log\n" * 20_000))
    sock = tmp_path / "l.sock"
    async with serving(sock, _launcher(_service(api))):
        client = LauncherClient(sock)
        from mcp_sandbox.policy.arguments import ShellArgs

        result = await client.shell(ShellArgs(command="make"))
        assert result.truncated and result.full_output == [f"sandbox://runs/{result.run_id}/stdout"]
        text = await client.kept_output(result.run_id, "stdout")
        assert text == "line of a long log\n" * 20_000
        assert await client.kept_output(result.run_id, "stderr") is None
        assert await client.kept_output("../" + result.run_id, "stdout") is None


async def test_a_hang_up_stops_the_run_and_removes_its_container(tmp_path: Path) -> None:
    api = FakeEngine(Script(hang=True))
    sock = tmp_path / "l.sock"
    async with serving(sock, _launcher(_service(api))):
        stream = await anyio.connect_unix(sock)
        await stream.send(frame({"op": "shell", "args": {"command": "sleep 60"}}))
        with anyio.fail_after(5):
            while not api.created:  # noqa: ASYNC110  # the fake records from a thread
                await anyio.sleep(0.01)
        await stream.aclose()
        with anyio.fail_after(5):
            while not api.removed:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert api.removed == [api.created[0][0]["name"]]


async def test_a_forbidden_frame_gets_one_line_and_no_container(tmp_path: Path) -> None:
    api = FakeEngine()
    sock = tmp_path / "l.sock"
    async with serving(sock, _launcher(_service(api))):
        for raw in (
            frame({"op": "run_code", "args": {**OK_ARGS, "privileged": True}}),
            b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\n\r\n{}",
        ):
            stream = await anyio.connect_unix(sock)
            async with stream:
                await stream.send(raw)
                reply = b""
                with anyio.fail_after(5):
                    # Refused with a reply; unread bytes may turn the close into a reset.
                    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                        while True:
                            reply += await stream.receive()
            if reply:
                assert json.loads(reply[4:])["error"]["kind"] == "RequestRejected"
        assert api.created == []


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("RequestRejected", RequestRejected),
        ("HostBusy", HostBusy),
        ("SandboxUnavailable", SandboxUnavailable),
        ("internal", SandboxError),
        ("KeyboardInterrupt", SandboxError),
    ],
)
async def test_launcher_errors_come_back_as_our_error_types(
    tmp_path: Path, kind: str, expected: type[SandboxError]
) -> None:
    sock = tmp_path / "fake.sock"

    async def answer(stream: Any) -> None:
        async with stream:
            await stream.receive()
            await stream.send(frame({"error": {"kind": kind, "message": "nope\nsecond line"}}))

    async with serving(sock, answer):
        with pytest.raises(SandboxError) as caught:
            await LauncherClient(sock).ping()
        assert type(caught.value) is expected and str(caught.value) == "nope"


async def test_no_launcher_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SandboxUnavailable, match="not reachable"):
        await LauncherClient(tmp_path / "none.sock").ping()


async def test_the_compose_healthcheck_speaks_the_launchers_protocol(tmp_path: Path) -> None:
    from mcp_sandbox.transport import healthcheck

    sock = tmp_path / "l.sock"
    assert not await anyio.to_thread.run_sync(healthcheck.launcher_ok, str(sock))
    async with serving(sock, _launcher(_service(FakeEngine()))):
        assert await anyio.to_thread.run_sync(healthcheck.launcher_ok, str(sock))


@pytest.mark.parametrize(
    ("settings_kw", "needle"),
    [
        ({"pool": {"min_available_mib": 10**9}}, "less than 1000000000 MiB of memory stayed"),
        ({"max_concurrent": 1}, "all 1 sandbox slots stayed busy"),
    ],
)
async def test_host_busy_says_whether_memory_or_slots_held_the_call(
    settings_kw: dict[str, Any], needle: str
) -> None:
    """An operator must tell memory admission from contention."""
    from mcp_sandbox.policy.arguments import ShellArgs

    api = FakeEngine(Script(hang=True))
    service = _service(api, bounds={"queue_timeout_s": 0.2}, **settings_kw)
    async with anyio.create_task_group() as tg:
        if "max_concurrent" in settings_kw:  # one call holds the only slot
            tg.start_soon(service.shell, ShellArgs(command="sleep 60", timeout_s=5))
            with anyio.fail_after(5):
                while not api.created:  # noqa: ASYNC110  # the fake records from a thread
                    await anyio.sleep(0.01)
        with pytest.raises(HostBusy, match=needle):
            await service.shell(ShellArgs(command="true", timeout_s=0.2))
        tg.cancel_scope.cancel()


async def test_files_out_travel_from_the_launcher(tmp_path: Path) -> None:
    import base64

    from mcp_sandbox.policy.arguments import ShellArgs

    png = b"\x89PNG\r\n\x1a\n" + b"\x01" * 20

    def frame(name: bytes, body: bytes) -> bytes:
        b64 = base64.b64encode
        return b"\x00mcp-sandbox-file:%s:f:%d:%s\x00" % (b64(name), len(body), b64(body))

    stderr = (
        frame(b"notes.txt", b"some notes\n")
        + frame(b"plot.png", png)
        + b"\x00mcp-sandbox-usage:1,1,1,0,1,0,0\x00"
    )
    api = FakeEngine(Script(stderr=stderr))
    sock = tmp_path / "l.sock"
    async with serving(sock, _launcher(_service(api, outputs={"images": True}))):
        client = LauncherClient(sock)
        result = await client.shell(ShellArgs(command="make", outputs=True))
        assert result.stderr == ""
        notes, plot = result.files
        assert notes.uri == f"sandbox://runs/{result.run_id}/files/notes.txt"
        assert await client.kept_output(result.run_id, "files/notes.txt") == "some notes\n"
        assert await client.kept_output(result.run_id, "files/../notes.txt") is None
        assert plot.content == "image" and [i.data for i in result.images] == [png]
