"""The only module that imports ``docker``: ``Engine`` (backend.py) over docker-py, errors
translated.

Every method blocks; callers run them in worker threads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import quote

import docker
import docker.errors
import requests

from mcp_sandbox.constants import LABEL
from mcp_sandbox.engine.attach import AttachedStreams
from mcp_sandbox.engine.backend import ContainerInfo, ExitState
from mcp_sandbox.errors import SandboxUnavailable

# Explicit, so a user's ~/.docker/config.json cannot change them; stdin is base64, which
# never holds these control bytes, so no input can detach from the attach stream.
DETACH_KEYS = "ctrl-^,ctrl-_"
_READ_CHUNK = 65_536
T = TypeVar("T")


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


class DockerApi:
    """``Engine`` over docker-py's low-level client, plus what only the wiring uses: the
    doctor's version and info, image builds and imports."""

    def __init__(self) -> None:
        self._client: docker.APIClient | None = None

    @property
    def _api(self) -> docker.APIClient:
        if self._client is None:
            with _translated("connect"):
                # No HTTP timeout: callers bound every wait with their own cancel scopes.
                env_client = docker.from_env(version="auto", timeout=None)  # type: ignore[arg-type]  # docker-py accepts None: no timeout
                # requests would read proxy and netrc settings from the environment on
                # every request: useless for the daemon's socket, and a large share of our
                # CPU per call.
                env_client.api.trust_env = False
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

    def runtimes(self) -> tuple[dict[str, dict[str, Any]], str]:
        """The daemon's OCI runtimes (name -> ``path``, ``runtimeArgs``) and its default's name."""
        with _translated("list its runtimes"):
            info = self._api.info()
            offered = {str(k): dict(v or {}) for k, v in (info.get("Runtimes") or {}).items()}
            return offered, str(info.get("DefaultRuntime") or "runc")

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

    # --- the workspace: a tmpfs volume, filled and read through a keeper container ---------

    def create_volume(self, name: str, *, size_bytes: int, labels: dict[str, str]) -> None:
        """A local tmpfs volume of ``size_bytes``: it lives while a container holds it."""
        with _translated("create the workspace volume"):
            opts = f"size={size_bytes},uid=65534,gid=65534,mode=0755,nosuid,nodev"
            self._api.create_volume(
                name,
                driver="local",
                driver_opts={"type": "tmpfs", "device": "tmpfs", "o": opts},
                labels=labels,
            )

    def create_local_volume(self, name: str, *, labels: dict[str, str]) -> None:
        """A volume on the daemon's disk: it outlives every container (an environment)."""
        with _translated("create the environment volume"):
            self._api.create_volume(name, driver="local", labels=labels)

    def remove_volume(self, name: str) -> None:
        with _translated("remove the workspace volume"):
            try:
                self._api.remove_volume(name, force=True)
            except docker.errors.NotFound:
                pass

    def labelled_volumes(self) -> list[ContainerInfo]:
        """Volumes labelled ``mcp-sandbox`` (same shape as a container's entry)."""
        with _translated("list volumes"):
            found = self._api.volumes(filters={"label": LABEL}).get("Volumes") or []
            return [
                ContainerInfo(
                    name=str(v["Name"]),
                    labels=dict(v.get("Labels") or {}),
                    created_unix=_created_unix(str(v.get("CreatedAt", ""))),
                )
                for v in found
            ]

    def put_archive(self, name: str, path: str, chunks: Iterable[bytes]) -> None:
        """Unpack a tar stream at ``path`` of a running container (into a volume there)."""
        with _translated("copy the workspace in"):
            self._api.put_archive(name, path, chunks)

    def read_archive(self, name: str, path: str, consume: Callable[[Iterator[bytes]], T]) -> T:
        """``consume`` the tar stream of ``path``; the connection is closed however it ends.

        docker-py's ``get_archive`` cannot be closed early, and the daemon holds the
        container's lock while it streams, so a stream left open would stall its removal.
        """
        with _translated("copy the workspace out"):
            url = f"{self._api.base_url}/v{self._api.api_version}/containers/{quote(name)}/archive"
            # requests asks for gzip by default, and the daemon would compress the archive.
            headers = {"Accept-Encoding": "identity"}
            res = self._api.get(url, params={"path": path}, stream=True, headers=headers)
            try:
                if res.status_code != 200:
                    raise SandboxUnavailable(
                        f"container backend failed to copy the workspace out: {res.status_code}"
                    )
                return consume(res.iter_content(_READ_CHUNK))
            finally:
                res.close()

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
                    state=str(r.get("State", "")),
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

    # --- egress: networks, the proxy container, its control channel ---------------------

    def create_network(
        self, name: str, *, internal: bool, labels: dict[str, str], options: dict[str, str]
    ) -> None:
        with _translated("create a network"):
            self._api.create_network(
                name,
                driver="bridge",
                internal=internal,
                enable_ipv6=False,
                labels=labels,
                options=options,
                check_duplicate=True,
            )

    def network_exists(self, name: str) -> bool:
        with _translated("inspect a network"):
            try:
                self._api.inspect_network(name)
            except docker.errors.NotFound:
                return False
            return True

    def remove_network(self, name: str) -> None:
        with _translated("remove a network"):
            try:
                self._api.remove_network(name)
            except docker.errors.NotFound:
                pass

    def connect_network(self, network: str, container: str) -> str:
        """Attach ``container`` to ``network``; return its IPv4 address there."""
        with _translated("connect the egress proxy"):
            self._api.connect_container_to_network(container, network)
            info = cast(dict[str, Any], self._api.inspect_container(container))
            address = info["NetworkSettings"]["Networks"][network]["IPAddress"]
            if not address:
                raise SandboxUnavailable(f"the egress proxy got no address on {network}")
            return str(address)

    def disconnect_network(self, network: str, container: str) -> None:
        with _translated("disconnect the egress proxy"):
            try:
                self._api.disconnect_container_from_network(container, network, force=True)
            except docker.errors.APIError as e:
                # Already gone, or not attached: the outcome we want.
                if e.status_code not in (404, 409, 500):
                    raise

    def labelled_networks(self) -> list[ContainerInfo]:
        """Networks labelled ``mcp-sandbox`` (same shape as a container's entry)."""
        with _translated("list networks"):
            rows = cast(list[dict[str, Any]], self._api.networks(filters={"label": LABEL}))
            return [
                ContainerInfo(
                    name=str(r["Name"]),
                    labels=dict(r.get("Labels") or {}),
                    created_unix=_unix_time(str(r.get("Created", ""))),
                )
                for r in rows
            ]

    def container_state(self, name: str) -> tuple[bool, dict[str, str]] | None:
        """``(running, labels)`` of a container, or None when there is none by that name."""
        with _translated("inspect a container"):
            try:
                info = cast(dict[str, Any], self._api.inspect_container(name))
            except docker.errors.NotFound:
                return None
            labels = dict(info.get("Config", {}).get("Labels") or {})
            return bool(info["State"].get("Running")), labels

    def run_detached(
        self, create_kwargs: dict[str, Any], host_config_kwargs: dict[str, Any]
    ) -> None:
        """Create and start a long-lived container (the egress proxy)."""
        with _translated("start the egress proxy"):
            host_config = self._api.create_host_config(**host_config_kwargs)
            self._api.create_container(host_config=host_config, **create_kwargs)
            self._api.start(create_kwargs["name"])

    def exec_output(self, container: str, argv: list[str], user: str) -> tuple[int, bytes]:
        """Run ``argv`` in a running container; return its exit code and stdout."""
        with _translated("ask the egress proxy"):
            created = self._api.exec_create(container, argv, stdout=True, stderr=False, user=user)
            exec_id = str(created["Id"])
            out = self._api.exec_start(exec_id)
            code = self._api.exec_inspect(exec_id).get("ExitCode")
            return (int(code) if code is not None else -1), out


def _unix_time(text: str) -> float:
    """Docker's RFC 3339 time with nanoseconds, as unix seconds (0 when unreadable)."""
    from datetime import datetime

    head, dot, frac = text.replace("Z", "+00:00").partition(".")
    digits = len(frac) - len(frac.lstrip("0123456789"))
    stamp = f"{head}.{frac[:digits][:6]}{frac[digits:]}" if dot else head
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return 0.0


def _created_unix(text: str) -> float:
    """A volume's ``CreatedAt`` (RFC 3339, seconds) as unix time; 0 when unreadable."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
