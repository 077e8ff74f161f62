"""A DockerApi stand-in at our seam, for pure logic around the daemon: records, runs nothing."""

from __future__ import annotations

import threading
from typing import Any

from mcp_sandbox.engine.docker_api import ExitState


class _Streams:
    def __init__(self, output: bytes) -> None:
        self.output = output

    def pump(self, sink: Any) -> None:
        sink(1, self.output)

    def send_stdin(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


class RecordingDocker:
    """A DockerApi stand-in at our seam: records every create, runs nothing; each sandbox
    prints ``output`` (and with ``hang``, runs until it is removed)."""

    def __init__(self, hang: bool = False, output: bytes = b"ok\n") -> None:
        self.output = output
        self.created: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.removed: list[str] = []
        self.hang = hang
        self.gone = threading.Event()

    def create(self, create_kwargs: dict[str, Any], host_config_kwargs: dict[str, Any]) -> None:
        self.created.append((create_kwargs, host_config_kwargs))

    def attach(self, name: str, stdin: bool) -> _Streams:
        return _Streams(self.output)

    def start(self, name: str) -> None:
        pass

    def wait(self, name: str) -> ExitState:
        if self.hang:
            self.gone.wait(30)  # as a real wait, it ends when the container is removed
        return ExitState(exit_code=0, oom_killed=False)

    def kill(self, name: str) -> None:
        pass

    def oom_killed(self, name: str) -> bool:
        return False

    def remove(self, name: str) -> None:
        self.removed.append(name)
        self.gone.set()

    def labelled_containers(self) -> list[Any]:
        return []

    def labelled_volumes(self) -> list[Any]:
        return []  # no environment: every call runs without one

    def ping(self) -> None:
        pass
