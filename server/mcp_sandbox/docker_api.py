"""The only module that imports ``docker``: a small typed surface, errors translated.

Every method blocks; callers run them in worker threads.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import docker
import docker.errors
import requests

from mcp_sandbox.errors import SandboxUnavailable

LABEL = "mcp-sandbox"
# Explicit, so a user's ~/.docker/config.json cannot change them; stdin is base64, which
# never holds these control bytes, so no input can detach from the attach stream.
DETACH_KEYS = "ctrl-^,ctrl-_"
_READ_CHUNK = 65_536


@dataclass(frozen=True)
class ExitState:
    """What the daemon says about a finished container."""

    exit_code: int | None
    oom_killed: bool


@dataclass(frozen=True)
class ContainerInfo:
    """A labelled container found on the daemon."""

    name: str
    labels: dict[str, str]
    created_unix: float


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    try:
        yield
    except docker.errors.ImageNotFound as e:
        raise SandboxUnavailable(
            f"sandbox image missing; run `mcp-sandbox images build` ({action})"
        ) from e
    except docker.errors.APIError as e:
        reason = (e.explanation or str(e)).splitlines()[0][:300] if e.explanation else str(e)
        raise SandboxUnavailable(f"container backend failed to {action}: {reason}") from e
    except (docker.errors.DockerException, requests.RequestException, OSError) as e:
        raise SandboxUnavailable(
            f"container backend failed to {action}; is Docker running? (`mcp-sandbox doctor`)"
        ) from e


class AttachedStreams:
    """The hijacked attach connection of one container: stdin out, stdout/stderr in."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._sock: socket.socket = getattr(raw, "_sock", raw)

    def send_stdin(self, data: bytes) -> None:
        """Write all of ``data``, then half-close so the program sees end of input."""
        with contextlib.suppress(OSError):
            self._sock.sendall(data)
            self._sock.shutdown(socket.SHUT_WR)

    def pump(self, sink: Callable[[int, bytes], None]) -> None:
        """Feed ``(stream, chunk)`` to ``sink`` until the container's streams end.

        Stream 1 is stdout, 2 is stderr. Reads in bounded chunks, so a huge frame never
        sits in memory whole.
        """
        try:
            while True:
                header = self._read_exactly(8)
                if header is None:
                    return
                stream, size = struct.unpack(">BxxxL", header)
                while size > 0:
                    chunk = self._sock.recv(min(size, _READ_CHUNK))
                    if not chunk:
                        return
                    size -= len(chunk)
                    sink(stream, chunk)
        except OSError:
            return

    def _read_exactly(self, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            chunk = self._sock.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()
        with contextlib.suppress(Exception):
            self._raw.close()


class DockerApi:
    """A typed facade over docker-py's low-level client."""

    def __init__(self) -> None:
        self._client: docker.APIClient | None = None

    @property
    def _api(self) -> docker.APIClient:
        if self._client is None:
            with _translated("connect"):
                # No HTTP timeout: callers bound every wait with their own cancel scopes.
                env_client = docker.from_env(version="auto", timeout=None)  # type: ignore[arg-type]  # docker-py accepts None: no timeout
                self._client = env_client.api
        return self._client

    def ping(self) -> None:
        with _translated("answer a ping"):
            self._api.ping()

    def version(self) -> dict[str, Any]:
        with _translated("report its version"):
            return self._api.version()

    def info(self) -> dict[str, Any]:
        with _translated("report its info"):
            return self._api.info()

    def image_exists(self, image: str) -> bool:
        with _translated("inspect an image"):
            try:
                self._api.inspect_image(image)  # type: ignore[no-untyped-call]
            except docker.errors.ImageNotFound:
                return False
            return True

    def create(self, create_kwargs: dict[str, Any], host_config_kwargs: dict[str, Any]) -> None:
        with _translated("create the sandbox"):
            host_config = self._api.create_host_config(**host_config_kwargs)
            self._api.create_container(host_config=host_config, **create_kwargs)

    def attach(self, name: str, stdin: bool) -> AttachedStreams:
        with _translated("attach to the sandbox"):
            params = {
                "stdin": 1 if stdin else 0,
                "stdout": 1,
                "stderr": 1,
                "stream": 1,
                "logs": 0,
                "detachKeys": DETACH_KEYS,
            }
            return AttachedStreams(self._api.attach_socket(name, params=params))

    def start(self, name: str) -> None:
        with _translated("start the sandbox"):
            self._api.start(name)

    def wait(self, name: str) -> ExitState:
        with _translated("wait for the sandbox"):
            self._api.wait(name)
            state = cast(dict[str, Any], self._api.inspect_container(name))["State"]
            return ExitState(
                exit_code=int(state["ExitCode"]), oom_killed=bool(state.get("OOMKilled"))
            )

    def kill(self, name: str) -> None:
        with _translated("kill the sandbox"):
            try:
                self._api.kill(name)
            except docker.errors.APIError as e:
                # 404: already removed; 409: already stopped. Both are the outcome we want.
                if e.status_code not in (404, 409):
                    raise

    def oom_killed(self, name: str) -> bool:
        with _translated("inspect the sandbox"):
            state = cast(dict[str, Any], self._api.inspect_container(name))["State"]
            return bool(state.get("OOMKilled"))

    def remove(self, name: str) -> None:
        with _translated("remove the sandbox"):
            try:
                self._api.remove_container(name, force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as e:
                # 409 "removal already in progress" means another path is removing it.
                if e.status_code != 409:
                    raise

    def labelled_containers(self) -> list[ContainerInfo]:
        with _translated("list sandboxes"):
            rows = cast(
                list[dict[str, Any]],
                self._api.containers(all=True, filters={"label": LABEL}),
            )
            return [
                ContainerInfo(
                    name=str(r["Names"][0]).lstrip("/"),
                    labels=dict(r.get("Labels") or {}),
                    created_unix=float(r.get("Created", 0)),
                )
                for r in rows
            ]

    def import_image(self, tarball: Path, tag: str) -> None:
        with _translated("import the base image"):
            repo, _, version = tag.partition(":")
            self._api.import_image_from_file(str(tarball), repository=repo, tag=version or None)

    def build(self, context: Path, tag: str, buildargs: dict[str, str]) -> Iterator[str]:
        """Build an image; yields progress lines. Raises SandboxUnavailable on failure."""
        with _translated("build an image"):
            for chunk in self._api.build(
                path=str(context),
                tag=tag,
                buildargs=buildargs,
                rm=True,
                forcerm=True,
                decode=True,
                labels={"mcp-sandbox.image": tag},
            ):
                if "error" in chunk:
                    raise SandboxUnavailable(f"image build failed: {chunk['error'].strip()}")
                text = chunk.get("stream") or chunk.get("status") or ""
                if text.strip():
                    yield text.rstrip()
