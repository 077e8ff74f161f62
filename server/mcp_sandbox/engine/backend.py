"""What the sandbox needs of a container backend: the ``Engine`` Protocol and its values.

``sandbox/``, ``workspace/``, ``egress/`` and ``service.py`` are typed against ``Engine``
alone; ``DockerApi`` (docker_api.py) is today's one implementation, and only the wiring
(``app``, ``cli``, ``doctor``, ``images``) constructs it. Nothing here is a docker-py type:
a container is its name, a spec arrives as the two plain dicts ``ContainerSpec`` makes, a
failure is ``SandboxUnavailable``. docs/scaling.md maps each method onto Kubernetes.

Every method blocks; callers run them in worker threads, bounded by their own cancel scopes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class ExitState:
    """What the backend says about a finished container."""

    exit_code: int | None
    oom_killed: bool


@dataclass(frozen=True)
class ContainerInfo:
    """A labelled object (container, volume or network) found on the backend."""

    name: str
    labels: dict[str, str]
    created_unix: float
    state: str = ""  # a container's: "created", "running", "exited"...; "" for others


class Attachment(Protocol):
    """One container's attached streams: stdin out, stdout (1) and stderr (2) in."""

    def send(self, data: bytes) -> None:
        """Write all of ``data``; more may follow. Raises OSError when the stream is gone."""

    def send_stdin(self, data: bytes) -> None:
        """Write all of ``data``, then half-close so the program sees end of input."""

    def pump(self, sink: Callable[[int, bytes], bool | None]) -> None:
        """Feed ``(stream, chunk)`` to ``sink`` until the streams end or ``sink`` says stop."""

    @property
    def on_loop(self) -> bool:
        """Whether ``pump_on_loop`` can read it without a thread."""

    async def pump_on_loop(self, sink: Callable[[int, bytes], bool | None]) -> None:
        """``pump`` on the event loop; cancellable. Write stdin first."""

    def is_open(self) -> bool:
        """Whether the container is still there with nothing said yet."""

    def close(self) -> None:
        """Let go of the streams; never raises."""


class Engine(Protocol):
    """The container backend, as the sandbox code uses it. Raises SandboxUnavailable."""

    def ping(self) -> None:
        """Answer, or raise: the launcher's health check."""

    def runtimes(self) -> tuple[dict[str, dict[str, Any]], str]:
        """The OCI runtimes the backend offers (name -> its entry) and its default one."""

    # --- one sandbox: create, attach, start, wait, kill, remove -----------------------

    def create(self, create_kwargs: dict[str, Any], host_config_kwargs: dict[str, Any]) -> None:
        """Create (not start) the container ``create_kwargs["name"]``."""

    def attach(self, name: str, stdin: bool) -> Attachment:
        """Attach before start, so no byte of output is missed."""

    def start(self, name: str) -> None: ...

    def wait(self, name: str) -> ExitState:
        """Until the container has exited (a kill or a removal ends the wait)."""

    def kill(self, name: str) -> None:
        """SIGKILL every process; a container already stopped or gone is no error."""

    def oom_killed(self, name: str) -> bool:
        """Whether the memory limit killed a process of it."""

    def remove(self, name: str) -> None:
        """Force-remove it and its anonymous volumes; one already gone is no error."""

    def labelled_containers(self) -> list[ContainerInfo]:
        """Every container labelled ``mcp-sandbox``, running or not (for the reaper)."""

    # --- the workspace: a sized scratch volume, filled and read through a keeper --------

    def create_volume(self, name: str, *, size_bytes: int, labels: dict[str, str]) -> None: ...

    def remove_volume(self, name: str) -> None:
        """Remove it; one already gone is no error."""

    def labelled_volumes(self) -> list[ContainerInfo]: ...

    def create_local_volume(self, name: str, *, labels: dict[str, str]) -> None:
        """A volume on the daemon's disk that outlives every container (an environment)."""

    def put_archive(self, name: str, path: str, chunks: Iterable[bytes]) -> None:
        """Unpack a tar stream at ``path`` of the running container ``name``."""

    def read_archive(self, name: str, path: str, consume: Callable[[Iterator[bytes]], T]) -> T:
        """``consume`` the tar stream of ``path``; the stream is closed however it ends."""

    # --- egress: networks, the long-lived proxy, a command run in it ------------------

    def create_network(
        self, name: str, *, internal: bool, labels: dict[str, str], options: dict[str, str]
    ) -> None: ...

    def network_exists(self, name: str) -> bool: ...

    def remove_network(self, name: str) -> None:
        """Remove it; one already gone is no error."""

    def connect_network(self, network: str, container: str) -> str:
        """Attach ``container`` to ``network``; return its IPv4 address there."""

    def disconnect_network(self, network: str, container: str) -> None: ...

    def labelled_networks(self) -> list[ContainerInfo]: ...

    def container_state(self, name: str) -> tuple[bool, dict[str, str]] | None:
        """``(running, labels)``, or None when there is no container by that name."""

    def run_detached(
        self, create_kwargs: dict[str, Any], host_config_kwargs: dict[str, Any]
    ) -> None:
        """Create and start a long-lived container (the egress proxy)."""

    def exec_output(self, container: str, argv: list[str], user: str) -> tuple[int, bytes]:
        """Run ``argv`` in a running container; its exit code and stdout."""
