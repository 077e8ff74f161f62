"""The daemon goes away and comes back under a live server; and a daemon that hangs.

A private dockerd of this module's own (its own socket, data root, exec root, pid file and
network namespace) is killed and restarted under a live server pointed at it with DOCKER_HOST:
a stdio server, an HTTP server, and an HTTP server whose calls run through a launcher, each
with an egress proxy on that daemon that the restart kills too. It is also stopped with
SIGSTOP under a stdio server. The shared daemon and the host's links are never touched. Needs
root and dockerd on the host (CI's machine is the test's own); marked ``own_daemon`` so CI runs
it once, never beside itself. About 4 minutes: the hang waits out our own step bounds
(STEP_TIMEOUT_S, REMOVE_TIMEOUT_S).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from mcp import Client

from mcp_sandbox.config.egress import DEFAULT_PROXY_IMAGE
from mcp_sandbox.engine.steps import REMOVE_TIMEOUT_S, STEP_TIMEOUT_S
from sandbox_client import TEST_RUN_ID, TEST_RUN_LABEL, connect, eventually
from sandbox_http import http_client, http_server, launcher

pytestmark = pytest.mark.own_daemon

IMAGE = "mcp-sandbox-runtime:0.1"
BLANKS = "mcp-sandbox-mask-"


# The private daemon runs in a network namespace of its own, with a bridge of its own there:
# a dockerd shares the host's links otherwise, and one restarted on its own data root deleted
# the host's docker0 (and with it the shared daemon's default network). In its namespace it
# keeps its own iptables too, so the shared daemon's FORWARD policy (DROP) does not meet its
# networks, and nothing in the namespace has a route off this machine.
NETNS = "mcpsbx-dtest"
BRIDGE = "mcpsbx-dtest0"
BRIDGE_ADDRESS = "10.213.77.1/24"
POOL = "10.214.0.0/16"  # the networks our server makes there (the egress proxy's)


def _in_netns(*argv: str) -> list[str]:
    return ["ip", "netns", "exec", NETNS, *argv]


class PrivateDaemon:
    """A dockerd of the test's own under ``root``: started, killed, stopped and resumed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)
        for argv in (
            ["ip", "netns", "add", NETNS],
            _in_netns("ip", "link", "set", "lo", "up"),
            _in_netns("ip", "link", "add", BRIDGE, "type", "bridge"),
            _in_netns("ip", "addr", "add", BRIDGE_ADDRESS, "dev", BRIDGE),
            _in_netns("ip", "link", "set", BRIDGE, "up"),
        ):
            subprocess.run(argv, check=True, capture_output=True)
        self.host = f"unix://{root}/docker.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = open(root / "dockerd.log", "ab")  # closed in remove()

    def docker(self, *argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DOCKER_HOST": self.host}
        return subprocess.run(["docker", *argv], env=env, capture_output=True, text=True, **kw)

    def start(self) -> None:
        """Start it and wait for its answer. A restart after a kill may time out waiting
        for its containerd on a busy host (it reattaches the killed one's shims): tried
        three times."""
        for attempt in range(3):
            self.proc = subprocess.Popen(
                [
                    # The namespace's network alone: `ip netns exec` would remount /sys, and
                    # dockerd would find no cgroup hierarchy there.
                    "nsenter", f"--net=/run/netns/{NETNS}",
                    "dockerd",
                    "-H", self.host,
                    "--data-root", str(self.root / "data"),
                    "--exec-root", str(self.root / "exec"),
                    "--pidfile", str(self.root / "dockerd.pid"),
                    f"--bridge={BRIDGE}",
                    "--ip-masq=false",
                    f"--default-address-pool=base={POOL},size=24",
                    "--cgroup-parent=/mcp-sandbox-test-dockerd",
                    "--shutdown-timeout=2",
                ],
                stdout=self._log,
                stderr=self._log,
            )  # fmt: skip
            deadline = time.monotonic() + 90
            while self.docker("version").returncode != 0 and self.proc.poll() is None:
                assert time.monotonic() < deadline, "the private dockerd did not answer"
                time.sleep(0.2)
            if self.proc.poll() is None:
                return
            assert attempt < 2, (self.root / "dockerd.log").read_text()[-3000:]

    def kill(self) -> None:
        """As a crash: the socket goes, its containerd with it (the shims and containers
        stay, and the daemon kills them when it comes back)."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def ours(self, listing: str = "ps") -> list[str]:
        """This test run's objects on this daemon: containers (``ps``), volumes, networks."""
        argv = ["ps", "-a"] if listing == "ps" else [listing, "ls"]
        fmt = "{{.Names}} {{.State}}" if listing == "ps" else "{{.Name}}"
        out = self.docker(
            *argv, "--filter", f"label={TEST_RUN_LABEL}={TEST_RUN_ID}", "--format", fmt, check=True
        )
        return out.stdout.split("\n")[:-1]

    def remove(self) -> None:
        """Stop it and remove its root, mounts first."""
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        # Shims of a daemon that could not come back (each names the exec root): ours.
        for proc in psutil.process_iter(["cmdline"]):
            if any(str(self.root) in arg for arg in proc.info["cmdline"] or ()):
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        for part in psutil.disk_partitions(all=True):
            if part.mountpoint.startswith(str(self.root)):
                subprocess.run(["umount", "-l", part.mountpoint], check=False)
        self._log.close()
        shutil.rmtree(self.root, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateDaemon]:
    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        pytest.fail("this test starts a dockerd of its own: it needs root and dockerd")
    # A short path: containerd's socket lives under the exec root (108 bytes at most).
    root = Path(tempfile.mkdtemp(prefix="msd-", dir="/tmp"))
    private = PrivateDaemon(root)
    try:
        private.start()
        image = tmp_path_factory.mktemp("image") / "runtime.tar"
        subprocess.run(["docker", "save", IMAGE, DEFAULT_PROXY_IMAGE, "-o", str(image)], check=True)
        private.docker("load", "-i", str(image), check=True)
        yield private
    finally:
        private.remove()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    tmp_path.chmod(0o755)  # the sandbox user (65534) enters /workspace
    (tmp_path / ".env").write_text("SECRET=1\n")  # masked: the server makes its blanks
    (tmp_path / "README").write_text("outage test\n")
    return tmp_path


def _blank_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob(f"{BLANKS}*")}


def _dead_blanks(before: set[str]) -> set[str]:
    """Mask blanks made since ``before`` whose server has gone."""
    return {
        name
        for name in _blank_dirs() - before
        if not psutil.pid_exists(int(name[len(BLANKS) :].split("-", 1)[0]))
    }


async def _only_warm_left(daemon: PrivateDaemon) -> None:
    """Soon, our containers on ``daemon`` are the running ones alone (warm, the proxy)."""
    await eventually(
        lambda: all(" running" in c for c in daemon.ours()),
        30,
        describe=lambda: f"left behind: {daemon.ours()}",
    )


def _text(result: Any) -> str:
    return str(result.content[0].text)


async def _serves_again(client: Client, within_s: float) -> dict[str, Any]:
    """The first call that succeeds, asked every half second for ``within_s``."""
    with anyio.fail_after(within_s):
        while True:
            result = await client.call_tool("shell", {"command": "echo back"})
            if not result.is_error:
                content: dict[str, Any] | None = result.structured_content
                assert content is not None
                return content
            await anyio.sleep(0.5)


def _env(daemon: PrivateDaemon, workspace: Path) -> dict[str, str]:
    return {
        "DOCKER_HOST": daemon.host,
        "MCP_SANDBOX_WORKSPACE": str(workspace),
        "MCP_SANDBOX_MAX_CONCURRENT": "4",
        "MCP_SANDBOX_LOG_LEVEL": "WARNING",
        # The egress proxy lives on the daemon too: a restart kills it like any container.
        "MCP_SANDBOX_EGRESS__ENABLED": "true",
        "MCP_SANDBOX_APPROVAL__EGRESS": "allow",
        "MCP_SANDBOX_EGRESS__ALLOW": json.dumps(["allowed.test"]),
    }


@contextlib.asynccontextmanager
async def _serving(
    transport: str, daemon: PrivateDaemon, workspace: Path, tmp: Path
) -> AsyncIterator[Client]:
    """A client of a server on ``daemon``: stdio; HTTP; or HTTP whose server holds no Docker
    access and runs every call through a launcher that does."""
    env = _env(daemon, workspace)
    if transport == "stdio":
        async with connect("auto", env=env) as client:
            yield client
        return
    with contextlib.ExitStack() as stack:
        if transport == "launcher":
            sock = stack.enter_context(launcher(tmp, env))
            # The server keeps its own policy (approvals) and no Docker access at all.
            env = {**env, "DOCKER_HOST": "unix:///nonexistent/docker.sock",
                   "MCP_SANDBOX_LAUNCHER_SOCKET": str(sock)}  # fmt: skip
        server = stack.enter_context(http_server(tmp, env))
        async with http_client(server.url) as client:
            yield client


async def _egress_is_filtered(client: Client) -> None:
    """An egress call reaches our proxy (it answers, and refuses the unlisted name)."""
    args = {"command": "curl -sS --max-time 10 http://blocked.test/", "network": "egress"}
    result = await client.call_tool("shell", args)
    assert not result.is_error, _text(result)
    content = result.structured_content
    assert content is not None
    assert content["egress_denied"] == ["blocked.test:80 (not in allowlist)"], content


@contextlib.asynccontextmanager
async def _live_calls(client: Client, n: int, timeout_s: float) -> AsyncIterator[list[str]]:
    """``n`` calls running ``sleep 60`` for the block; yields their errors as they end."""
    errors: list[str] = []

    async def one(i: int) -> None:
        args = {"command": f"echo {i}; sleep 60", "timeout_s": timeout_s}
        result = await client.call_tool("shell", args)
        errors.append(_text(result) if result.is_error else f"NOT AN ERROR: {result}")

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
        yield errors


@pytest.mark.parametrize("transport", ["stdio", "http", "launcher"])
async def test_a_daemon_restart_fails_running_calls_clearly_and_is_survived(
    daemon: PrivateDaemon, workspace: Path, tmp_path: Path, transport: str
) -> None:
    blanks_before = _blank_dirs()
    async with _serving(transport, daemon, workspace, tmp_path) as client:
        first = await _serves_again(client, 60)
        assert first["stdout"] == "back\n"
        await _egress_is_filtered(client)  # the proxy is up, and the restart will kill it
        await eventually(lambda: any(" running" in c for c in daemon.ours()))  # warm

        # 1. Running calls end with one clear error each.
        async with _live_calls(client, 3, timeout_s=60) as errors:
            await eventually(lambda: sum(" running" in c for c in daemon.ours()) >= 3)
            await anyio.to_thread.run_sync(daemon.kill)
            with anyio.fail_after(20):
                while len(errors) < 3:  # noqa: ASYNC110  # the calls' tasks append
                    await anyio.sleep(0.05)
        assert len(errors) == 3
        for e in errors:
            assert "\n" not in e and "Traceback" not in e, e
            assert "is Docker running?" in e and "mcp-sandbox doctor" in e, e

        # 2. While it is down, a new call gets the unreachable error with its fix, at once.
        with anyio.fail_after(10):
            down = await client.call_tool("run_code", {"language": "python", "code": "1"})
        assert down.is_error and "is Docker running? (`mcp-sandbox doctor`)" in _text(down)

        # 3. Within seconds of its return the server serves again, the pool refills, and
        # what the outage left (the killed calls' containers) is removed, without a restart.
        await anyio.to_thread.run_sync(daemon.start)
        back = time.monotonic()
        await _serves_again(client, 30)
        served_in = time.monotonic() - back

        async def warm_call() -> bool:
            r = await client.call_tool("shell", {"command": "true"})
            assert not r.is_error, _text(r)
            return bool(r.structured_content and r.structured_content["pooled"])

        with anyio.fail_after(30):
            while not await warm_call():  # noqa: ASYNC110  # the pool has no event for us
                await anyio.sleep(0.5)
        await _egress_is_filtered(client)  # a new proxy, on new networks
        await _only_warm_left(daemon)
        assert daemon.ours("volume") == []
        print(f"\n{transport}: served again {served_in:.1f} s after the daemon's return")
    await eventually(lambda: daemon.ours() == [], 20, describe=lambda: str(daemon.ours()))
    assert daemon.ours("volume") == [] and daemon.ours("network") == []
    assert _dead_blanks(blanks_before) == set()


async def test_a_hung_daemon_ends_every_call_within_our_bounds(
    daemon: PrivateDaemon, workspace: Path
) -> None:
    blanks_before = _blank_dirs()
    bound_s = 2 + STEP_TIMEOUT_S + REMOVE_TIMEOUT_S + 15  # run, kill step, removal, slack
    async with connect("auto", env=_env(daemon, workspace)) as client:
        await _serves_again(client, 60)
        async with _live_calls(client, 1, timeout_s=2) as errors:
            await eventually(lambda: any("running" in c for c in daemon.ours()))
            daemon.signal(signal.SIGSTOP)
            hung_at = time.monotonic()
            try:
                with anyio.fail_after(bound_s):
                    late = await client.call_tool("shell", {"command": "echo late", "timeout_s": 2})
                    while not errors:  # noqa: ASYNC110  # the call's task appends
                        await anyio.sleep(0.1)
                ended_in = time.monotonic() - hung_at
            finally:
                daemon.signal(signal.SIGCONT)
        assert late.is_error and "\n" not in _text(late), _text(late)
        assert len(errors) == 1 and "\n" not in errors[0], errors
        assert "within" in errors[0] or "Docker" in errors[0], errors
        await _serves_again(client, 30)
        await _only_warm_left(daemon)
        print(f"\nunder a hung daemon, the calls ended as errors within {ended_in:.0f} s")
    await eventually(lambda: daemon.ours() == [], 20, describe=lambda: str(daemon.ours()))
    assert daemon.ours("volume") == [] and daemon.ours("network") == []
    assert _dead_blanks(blanks_before) == set()
