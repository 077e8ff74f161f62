"""One scriptable ``Engine`` for unit tests: no daemon, every call recorded.

Each container runs a ``Script``: what it prints, its exit code, or a hang (until killed or
removed), an OOM kill, an output flood, a daemon error at a chosen step. A container made
with the warm stub's argv speaks the stub's protocol: it reads one request, answers with the
request's end marker. ``leftovers()`` names every container, volume and network not removed,
so a test can assert nothing is left.

The fake sits at our seam (``engine.backend.Engine``), never inside docker-py. Its methods are
called from worker threads, as the real ones are: state changes under one lock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from mcp_sandbox.engine.backend import ContainerInfo, ExitState
from mcp_sandbox.errors import SandboxUnavailable

T = TypeVar("T")
FLOOD_CHUNK = b"x" * 65_536
HANG_LIMIT_S = 30.0  # a hang the test forgot to end still ends
Sink = Callable[[int, bytes], bool | None]


@dataclass(frozen=True)
class Script:
    """What one container does once started."""

    stdout: bytes = b"ok\n"
    stderr: bytes = b""
    exit_code: int = 0
    hang: bool = False  # after its output, runs until killed or removed
    oom: bool = False  # the memory limit kills it: exit 137, OOMKilled
    flood: bool = False  # after its output, writes stdout without end until stopped
    fail_at: frozenset[str] = frozenset()  # Engine methods that fail for this container

    @staticmethod
    def failing(*steps: str) -> Script:
        return Script(fail_at=frozenset(steps))


@dataclass
class Box:
    """One fake container."""

    name: str
    script: Script
    create_kwargs: dict[str, Any]
    host_config_kwargs: dict[str, Any]
    created_unix: float
    started: bool = False
    killed: bool = False
    stopped: threading.Event = field(default_factory=threading.Event)
    request: threading.Event = field(default_factory=threading.Event)
    nonce: str = ""
    sent_before: bytes = b""  # what was written before the request (a warm copy's copy)

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.create_kwargs.get("labels") or {})

    @property
    def is_stub(self) -> bool:
        return "mcp-sandbox-stub" in (self.create_kwargs.get("command") or [])

    @property
    def running(self) -> bool:
        return self.started and not self.stopped.is_set()


class FakeAttachment:
    """A container's attached streams, played from its script."""

    def __init__(self, box: Box, *, on_loop: bool) -> None:
        self._box = box
        self._on_loop = on_loop
        self.closed = False

    @property
    def on_loop(self) -> bool:
        return self._on_loop

    def send(self, data: bytes) -> None:
        self._box.sent_before += data

    def send_stdin(self, data: bytes) -> None:
        box = self._box
        if box.is_stub:  # the request: its byte length, the program block, the nonce
            size, _, rest = data.partition(b"\n")
            box.nonce = rest[int(size) :].partition(b"\n")[0].decode("ascii")
        box.request.set()

    def _chunks(self) -> Iterator[tuple[int, bytes]]:
        """What the container writes, up to where it blocks (hang) or floods."""
        box, s = self._box, self._box.script
        if box.is_stub:
            box.request.wait(HANG_LIMIT_S)
        if s.stdout:
            yield 1, s.stdout
        if s.stderr:
            yield 2, s.stderr
        if box.is_stub and not s.hang and not s.flood:
            code = 137 if s.oom else s.exit_code
            marker = f"\x00mcp-sandbox-end:{box.nonce}:{code}{':oom' if s.oom else ''}\x00"
            yield 1, marker.encode()
            yield 2, marker.encode()

    def pump(self, sink: Sink) -> None:
        for stream, chunk in self._chunks():
            if sink(stream, chunk):
                return
        s = self._box.script
        if s.flood:
            while not self._box.stopped.is_set() and not self.closed:
                if sink(1, FLOOD_CHUNK):
                    return
        elif s.hang:
            self._box.stopped.wait(HANG_LIMIT_S)

    async def pump_on_loop(self, sink: Sink) -> None:
        for stream, chunk in self._chunks():
            if sink(stream, chunk):
                return
            await anyio.lowlevel.checkpoint()
        s = self._box.script
        if s.flood:
            while not self._box.stopped.is_set() and not self.closed:
                if sink(1, FLOOD_CHUNK):
                    return
                await anyio.lowlevel.checkpoint()
        elif s.hang:
            while not self._box.stopped.is_set():  # noqa: ASYNC110  # a thread sets it
                await anyio.sleep(0.005)

    def is_open(self) -> bool:
        return self._box.running and not self._box.request.is_set() and not self.closed

    def close(self) -> None:
        self.closed = True


class FakeEngine:
    """An ``Engine`` whose containers run scripts. ``scripts`` go to containers in the order
    they are created; the rest run ``default``. ``failing`` names Engine methods that fail
    whatever they are asked (``create_volume``, ``labelled_containers``...)."""

    def __init__(
        self,
        default: Script | None = None,
        *,
        scripts: Iterable[Script] = (),
        failing: Iterable[str] = (),
        on_loop: bool = True,
    ) -> None:
        self.default = default or Script()
        self.scripts = deque(scripts)
        self.failing = set(failing)
        self.on_loop = on_loop
        self._lock = threading.Lock()
        self.boxes: dict[str, Box] = {}
        self.created: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.removed: list[str] = []
        self.calls: list[str] = []  # what changed the daemon, in order
        self.volumes: dict[str, dict[str, str]] = {}
        self.archives: dict[tuple[str, str], bytes] = {}
        self.networks: dict[str, dict[str, str]] = {}  # labels, and options as "opt:NAME"
        self.attached: set[tuple[str, str]] = set()
        # The egress proxy's control channel: what `ctl take` answers, whether it answers.
        self.tally = b'{"allowed": 2, "denied": ["evil.test:443 (not in allowlist)"]}'
        self.proxy_answers = True

    # --- what tests read ----------------------------------------------------------------

    def leftovers(self) -> list[str]:
        """Every container, volume and network made and not removed."""
        with self._lock:
            return sorted([*self.boxes, *self.volumes, *self.networks])

    def live(self) -> list[str]:
        """Containers made and not removed."""
        with self._lock:
            return sorted(self.boxes)

    def box(self, name: str) -> Box:
        with self._lock:
            return self.boxes[name]

    def put_container(self, name: str, *, running: bool, labels: dict[str, str]) -> None:
        """A container that was there before the test (left by an earlier server, say)."""
        box = Box(name, Script(hang=True), {"name": name, "labels": labels}, {}, 0.0)
        box.started = True
        if not running:
            box.stopped.set()
        with self._lock:
            self.boxes[name] = box

    def die(self, name: str) -> None:
        """The container stops by itself (killed outside, a daemon restart)."""
        self.box(name).stopped.set()

    # --- failures -----------------------------------------------------------------------

    def _check(self, step: str, name: str | None = None) -> None:
        box = self.boxes.get(name) if name is not None else None
        if step in self.failing or (box is not None and step in box.script.fail_at):
            raise SandboxUnavailable(f"container backend failed to {step} (scripted)")

    def _box(self, step: str, name: str) -> Box:
        with self._lock:
            self._check(step, name)
            box = self.boxes.get(name)
        if box is None:
            raise SandboxUnavailable(f"container backend failed to {step}: no such container")
        return box

    # --- Engine -------------------------------------------------------------------------

    def ping(self) -> None:
        self._check("ping")

    def runtimes(self) -> tuple[dict[str, dict[str, Any]], str]:
        return {"runc": {"path": "runc"}}, "runc"

    def create(self, create_kwargs: dict[str, Any], host_config_kwargs: dict[str, Any]) -> None:
        name = str(create_kwargs["name"])
        with self._lock:
            script = self.scripts.popleft() if self.scripts else self.default
            self.created.append((create_kwargs, host_config_kwargs))
            self.calls.append(f"create {name}")
            if "create" in self.failing or "create" in script.fail_at:
                # The daemon may fail after the name is taken: the caller still removes it.
                self.boxes[name] = Box(name, script, create_kwargs, host_config_kwargs, time.time())
                raise SandboxUnavailable("container backend failed to create (scripted)")
            self.boxes[name] = Box(name, script, create_kwargs, host_config_kwargs, time.time())

    def attach(self, name: str, stdin: bool) -> FakeAttachment:
        return FakeAttachment(self._box("attach", name), on_loop=self.on_loop)

    def start(self, name: str) -> None:
        box = self._box("start", name)
        box.started = True
        self.calls.append(f"start {name}")

    def wait(self, name: str) -> ExitState:
        box = self._box("wait", name)
        s = box.script
        if s.hang or s.flood or box.is_stub:
            box.stopped.wait(HANG_LIMIT_S)
        if s.oom:
            return ExitState(exit_code=137, oom_killed=True)
        if box.killed:
            return ExitState(exit_code=137, oom_killed=False)
        return ExitState(exit_code=s.exit_code, oom_killed=False)

    def kill(self, name: str) -> None:
        with self._lock:
            self._check("kill", name)
            box = self.boxes.get(name)
            self.calls.append(f"kill {name}")
        if box is not None:
            box.killed = True
            box.stopped.set()

    def oom_killed(self, name: str) -> bool:
        return self._box("inspect", name).script.oom

    def remove(self, name: str) -> None:
        with self._lock:
            self._check("remove", name)
            self.calls.append(f"remove {name}")
            box = self.boxes.pop(name, None)
            self.removed.append(name)
        if box is not None:
            box.stopped.set()

    def labelled_containers(self) -> list[ContainerInfo]:
        with self._lock:
            self._check("labelled_containers")
            return [
                ContainerInfo(b.name, b.labels, b.created_unix, _state(b))
                for b in self.boxes.values()
                if b.labels.get("mcp-sandbox")
            ]

    def create_volume(self, name: str, *, size_bytes: int, labels: dict[str, str]) -> None:
        with self._lock:
            self._check("create_volume")
            self.calls.append(f"create_volume {name}")
            self.volumes[name] = dict(labels)

    def create_local_volume(self, name: str, *, labels: dict[str, str]) -> None:
        with self._lock:
            self._check("create_local_volume")
            self.calls.append(f"create_local_volume {name}")
            self.volumes[name] = dict(labels)

    def remove_volume(self, name: str) -> None:
        with self._lock:
            self._check("remove_volume")
            self.calls.append(f"remove_volume {name}")
            self.volumes.pop(name, None)

    def labelled_volumes(self) -> list[ContainerInfo]:
        with self._lock:
            self._check("labelled_volumes")
            return [ContainerInfo(n, dict(labels), 0.0) for n, labels in self.volumes.items()]

    def put_archive(self, name: str, path: str, chunks: Iterable[bytes]) -> None:
        self._box("put_archive", name)
        self.archives[(name, path)] = b"".join(chunks)

    def read_archive(self, name: str, path: str, consume: Callable[[Iterator[bytes]], T]) -> T:
        """The archive as it went in: the run changed nothing."""
        self._box("read_archive", name)
        return consume(iter([self.archives.get((name, path), b"")]))

    def create_network(
        self, name: str, *, internal: bool, labels: dict[str, str], options: dict[str, str]
    ) -> None:
        with self._lock:
            self._check("create_network")
            self.calls.append(f"create_network {name} internal={internal}")
            self.networks[name] = {**labels, **{f"opt:{k}": v for k, v in options.items()}}

    def network_exists(self, name: str) -> bool:
        with self._lock:
            self._check("network_exists")
            return name in self.networks

    def remove_network(self, name: str) -> None:
        with self._lock:
            self._check("remove_network")
            self.calls.append(f"remove_network {name}")
            self.networks.pop(name, None)

    def connect_network(self, network: str, container: str) -> str:
        with self._lock:
            self._check("connect_network", container)
            self.attached.add((network, container))
        return "10.9.0.2"

    def disconnect_network(self, network: str, container: str) -> None:
        with self._lock:
            self.attached.discard((network, container))

    def labelled_networks(self) -> list[ContainerInfo]:
        with self._lock:
            self._check("labelled_networks")
            return [ContainerInfo(n, dict(labels), 0.0) for n, labels in self.networks.items()]

    def container_state(self, name: str) -> tuple[bool, dict[str, str]] | None:
        with self._lock:
            self._check("container_state", name)
            box = self.boxes.get(name)
            return None if box is None else (box.running, box.labels)

    def run_detached(
        self, create_kwargs: dict[str, Any], host_config_kwargs: dict[str, Any]
    ) -> None:
        name = str(create_kwargs["name"])
        with self._lock:
            self._check("run_detached")
            self.calls.append(f"run {name}")
            box = Box(name, Script(hang=True), create_kwargs, host_config_kwargs, time.time())
            box.started = True
            self.boxes[name] = box

    def exec_output(self, container: str, argv: list[str], user: str) -> tuple[int, bytes]:
        if not self.proxy_answers:
            raise SandboxUnavailable("no answer")
        if argv[-1] == "ping":
            return 0, b'{"ok": true}'
        with self._lock:
            self.calls.append(f"take {argv[-2]}")
        return 0, self.tally


def _state(box: Box) -> str:
    """What the daemon would call the container's state."""
    if box.running:
        return "running"
    return "exited" if box.started else "created"
