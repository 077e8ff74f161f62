"""The launcher: the one process that holds the Docker API, behind a narrow request.

Whoever holds the Docker API is root on the host, so a server that faces the network must not
hold it. The server sends the launcher a tool's arguments (``run_code`` or ``shell``, exactly
as the tool validated them) over a Unix socket; the launcher validates them again, decides
them against *its own* settings and builds every container itself (``spec.build_spec``). No
request can name an image, a mount, a capability, a namespace, a device or a profile: the
request has no field for them, and an unknown field is refused. Besides runs it answers
``output``: the kept full text of a cut stream of one of its runs, by run id (48 random bits,
named in that run's result), and ``ping``.

Wire format, both ways: a 4-byte big-endian length, then that many bytes of JSON. One request
per connection. The caller keeps the connection open until the reply; when it closes early
(its client cancelled, or it died), the launcher stops the run and removes the container.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
import os
import re
import signal
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from anyio import to_thread
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from mcp_sandbox.config.settings import Settings
from mcp_sandbox.config.workspace import default_root
from mcp_sandbox.environment.build import BuildReport, Progress
from mcp_sandbox.errors import HostBusy, RequestRejected, SandboxError, SandboxUnavailable
from mcp_sandbox.output.output_files import FILES_TOTAL_BYTES
from mcp_sandbox.output.result import Image, RunResult
from mcp_sandbox.output.scrubber import Scrubber
from mcp_sandbox.policy.arguments import RunCodeArgs, ShellArgs
from mcp_sandbox.policy.limits import CallBounds
from mcp_sandbox.sandbox.slots import OnWait
from mcp_sandbox.service import SandboxService, make_scrubber

log = logging.getLogger("mcp_sandbox.launcher")

_HEADER = struct.Struct(">I")
MAX_REPLY_BYTES = 8 * 1024 * 1024
# The request must arrive whole this soon after connecting: a slow sender holds no slot.
REQUEST_READ_TIMEOUT_S = 30.0
# Errors the server re-raises as they are; anything else is an internal error.
_ERROR_KINDS: dict[str, type[SandboxError]] = {
    "RequestRejected": RequestRejected,
    "HostBusy": HostBusy,
    "SandboxUnavailable": SandboxUnavailable,
}


class _Request(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RunCodeRequest(_Request):
    op: Literal["run_code"]
    args: RunCodeArgs


class ShellRequest(_Request):
    op: Literal["shell"]
    args: ShellArgs


class PingRequest(_Request):
    op: Literal["ping"]


KEPT_NAME = r"^(stdout|stderr|files/[A-Za-z0-9_-][A-Za-z0-9._-]{0,63})$"


class OutputRequest(_Request):
    """The kept full text of a cut stream of a run the launcher made (``full_output``), or
    of a text file it left (``files``)."""

    op: Literal["output"]
    run_id: str = Field(pattern=r"^[0-9a-f]{12}$")
    # A cut stream, or a kept text file of the run's (``output_files``).
    stream: str = Field(pattern=KEPT_NAME)


AnyRequest = RunCodeRequest | ShellRequest | PingRequest | OutputRequest
LauncherRequest = Annotated[AnyRequest, Field(discriminator="op")]
_REQUEST: TypeAdapter[AnyRequest] = TypeAdapter(LauncherRequest)


def max_request_bytes(bounds: CallBounds) -> int:
    """Largest request frame: code and stdin at their bounds, every byte JSON-escaped."""
    return 6 * (bounds.max_code_bytes + bounds.max_stdin_bytes) + 64 * 1024


def frame(message: dict[str, Any]) -> bytes:
    """``message`` as one frame. ASCII JSON, so lone surrogates cross intact."""
    body = json.dumps(message, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return _HEADER.pack(len(body)) + body


def frame_length(header: bytes, limit: int) -> int:
    """The body length a 4-byte header announces. Raises RequestRejected past ``limit``.

    Anything that is not our protocol (an HTTP request to the Docker API, say) reads as a
    length in the gigabytes and ends here.
    """
    length: int = _HEADER.unpack(header)[0]
    if length == 0 or length > limit:
        raise RequestRejected(f"frame of {length} bytes; the limit is {limit}")
    return length


def parse_request(body: bytes) -> AnyRequest:
    """A request body, or RequestRejected. The message never echoes the request."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RequestRejected("the request is not JSON") from None
    try:
        return _REQUEST.validate_python(data)
    except ValidationError as e:
        where = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'request'}: {err['type']}"
            for err in e.errors()[:5]
        )
        raise RequestRejected(
            f"the launcher accepts run_code, shell, output or ping only ({where})"
        ) from None


async def _read_frame(stream: BufferedByteReceiveStream, limit: int) -> bytes:
    length = frame_length(await stream.receive_exactly(_HEADER.size), limit)
    return await stream.receive_exactly(length)


class LauncherClient:
    """What the tools call instead of ``SandboxService`` when a launcher holds Docker.

    ``settings`` are this server's (default: built-in): they decide approvals and the audit
    here; the launcher decides each run against its own.
    """

    def __init__(self, socket_path: Path, settings: Settings | None = None) -> None:
        self.socket_path = socket_path
        self.settings = settings or Settings()

    @functools.cached_property
    def _scrubber(self) -> Scrubber:
        return make_scrubber(self.settings)

    def scrub(self, text: str) -> str:
        """This server's scrubber (the launcher scrubbed its results and errors already)."""
        return self._scrubber.scrub(text)

    @property
    def workspace_root(self) -> Path | None:
        return default_root(self.settings.workspace)

    @property
    def checks_its_own_workspace(self) -> bool:
        """True: the launcher checks each call against its own workspace."""
        return True

    async def run_background(self) -> None:
        """Nothing: the launcher keeps its own warm pool."""

    async def shutdown(self) -> None:
        """The launcher removes what it made; closing a connection stops its run."""
        await self.reap(own_too=True)

    def load(self) -> None:
        """None: the slots are the launcher's, behind its socket."""
        return None

    # ``waiting`` is not heard of: the launcher's queue stays behind its socket (the result
    # still says how long the call queued there).
    async def run_code(self, args: RunCodeArgs, *, waiting: OnWait | None = None) -> RunResult:
        return _result(await self._call({"op": "run_code", "args": args.model_dump(mode="json")}))

    async def shell(self, args: ShellArgs, *, waiting: OnWait | None = None) -> RunResult:
        return _result(await self._call({"op": "shell", "args": args.model_dump(mode="json")}))

    async def build_environment(self, progress: Progress) -> BuildReport:
        """Not through a launcher: a build needs this server's own Docker access."""
        raise RequestRejected("prepare_env needs the server's own Docker access (not a launcher)")

    @property
    def scrub_margin(self) -> int:
        """0: a run's output is the launcher's, not seen here while it runs."""
        return 0

    async def kept_output(self, run_id: str, stream: str) -> str | None:
        """Asked of the launcher, which keeps what its runs cut."""
        if re.fullmatch(KEPT_NAME, stream) is None or re.fullmatch(r"[0-9a-f]{12}", run_id) is None:
            return None
        reply = await self._call({"op": "output", "run_id": run_id, "stream": stream})
        text = reply.get("text")
        return text if isinstance(text, str) else None

    async def ping(self) -> None:
        await self._call({"op": "ping"})

    async def reap(self, *, own_too: bool) -> int:
        """The launcher reaps what it made; closing a connection stops its run."""
        return 0

    async def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            stream = await anyio.connect_unix(self.socket_path)
        except OSError:
            raise SandboxUnavailable(
                f"the launcher is not reachable at {self.socket_path}; is it running?"
            ) from None
        async with stream:
            try:
                await stream.send(frame(request))
                body = await _read_frame(BufferedByteReceiveStream(stream), MAX_REPLY_BYTES)
                reply = json.loads(body)
            except (anyio.EndOfStream, anyio.IncompleteRead, OSError, anyio.BrokenResourceError):
                raise SandboxUnavailable("the launcher closed the connection mid-call") from None
            except (RequestRejected, ValueError):
                raise SandboxUnavailable("the launcher sent a malformed reply") from None
        if not isinstance(reply, dict):
            raise SandboxUnavailable("the launcher sent a malformed reply")
        if "error" in reply:
            error = reply["error"] if isinstance(reply["error"], dict) else {}
            kind = _ERROR_KINDS.get(str(error.get("kind")), SandboxError)
            message = str(error.get("message") or "internal error in the launcher")
            raise kind(message.splitlines()[0][:500] if message else message)
        return reply


class _SentImage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    mime_type: Literal["image/png", "image/jpeg", "image/svg+xml"]
    data: str = Field(max_length=(FILES_TOTAL_BYTES + 2) // 3 * 4)


def _result(reply: dict[str, Any]) -> RunResult:
    """The launcher's result, with the images it sent beside it (``files``)."""
    try:
        result = RunResult.model_validate(reply.get("result"))
        sent = [_SentImage.model_validate(i) for i in reply.get("images") or []]
        images = tuple(Image(i.mime_type, base64.b64decode(i.data, validate=True)) for i in sent)
    except (ValidationError, ValueError, TypeError):
        raise SandboxUnavailable("the launcher sent a malformed result") from None
    if sum(len(i.data) for i in images) > FILES_TOTAL_BYTES:
        raise SandboxUnavailable("the launcher sent a malformed result")
    return result.with_images(images)


async def _dispatch(service: SandboxService, request: AnyRequest) -> dict[str, Any]:
    try:
        if isinstance(request, PingRequest):
            await to_thread.run_sync(service.api.ping)
            return {"pong": True}
        if isinstance(request, OutputRequest):
            return {"text": await service.kept_output(request.run_id, request.stream)}
        if isinstance(request, RunCodeRequest):
            result = await service.run_code(request.args)
        else:
            result = await service.shell(request.args)
        images = [
            {"mime_type": i.mime_type, "data": base64.b64encode(i.data).decode("ascii")}
            for i in result.images
        ]
        return {"result": result.model_dump(mode="json"), "images": images}
    except SandboxError as e:
        kind = type(e).__name__ if type(e).__name__ in _ERROR_KINDS else "SandboxError"
        return {"error": {"kind": kind, "message": str(e)}}
    except Exception:
        log.exception("%s failed", request.op)
        return {"error": {"kind": "internal", "message": "internal error in the launcher"}}


async def handle_connection(
    stream: SocketStream, service: SandboxService, connections: anyio.CapacityLimiter
) -> None:
    """Serve one request on ``stream``; a hang-up before the reply stops the run."""
    async with stream:
        try:
            connections.acquire_nowait()
        except anyio.WouldBlock:
            await _send_quietly(stream, _error(HostBusy("the launcher has too many connections")))
            return
        try:
            await _serve_one(stream, service)
        finally:
            connections.release()


async def _serve_one(stream: SocketStream, service: SandboxService) -> None:
    buffered = BufferedByteReceiveStream(stream)
    try:
        with anyio.fail_after(REQUEST_READ_TIMEOUT_S):
            body = await _read_frame(buffered, max_request_bytes(service.settings.bounds))
        if buffered.buffer:
            raise RequestRejected("one request per connection")
        request = parse_request(body)
    except RequestRejected as e:
        log.warning("refused a request: %s", e)
        await _send_quietly(stream, _error(e))
        return
    except (TimeoutError, anyio.EndOfStream, anyio.IncompleteRead, OSError):
        return
    async with anyio.create_task_group() as tg:

        async def stop_on_hangup() -> None:
            # The caller sends nothing more: data or end of stream both mean it is gone.
            with contextlib.suppress(Exception):
                await stream.receive(1)
            log.info("caller hung up; stopping its %s", request.op)
            tg.cancel_scope.cancel()

        tg.start_soon(stop_on_hangup)
        reply = await _dispatch(service, request)
        await _send_quietly(stream, reply)
        tg.cancel_scope.cancel()


def _error(e: SandboxError) -> dict[str, Any]:
    return {"error": {"kind": type(e).__name__, "message": str(e)}}


async def _send_quietly(stream: SocketStream, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        await stream.send(frame(message))


def _clear_stale_socket(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SandboxUnavailable(f"{path} exists and is not a socket; refusing to replace it")
    path.unlink()


async def serve_launcher(
    service: SandboxService,
    socket_path: Path,
    *,
    ready: Callable[[], None] | None = None,
) -> None:
    """Accept requests on ``socket_path`` until SIGTERM/SIGINT; then remove our sandboxes."""
    _clear_stale_socket(socket_path)
    # Only those who can reach the path (the server's container, through a shared volume)
    # can connect; the server runs as another uid, so the socket itself is open to all.
    listener = await anyio.create_unix_listener(socket_path, mode=0o666)
    connections = anyio.CapacityLimiter(service.max_concurrent * 4 + 16)
    try:
        async with listener, anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for sig in signals:
                        log.info(
                            "%s: stopping runs and removing this launcher's sandboxes", sig.name
                        )
                        tg.cancel_scope.cancel()

            async def reap_at_start() -> None:
                removed = await service.reap(own_too=False)
                if removed:
                    log.info("removed %d sandbox(es) left by launchers that died", removed)

            tg.start_soon(stop_on_signal)
            tg.start_soon(reap_at_start)
            # The warm pool, deferred removals and recovery after a daemon outage: the
            # launcher is the process that holds Docker, so they run here, not in the server.
            tg.start_soon(service.run_background)
            log.info("launcher listening on %s", socket_path)
            if ready is not None:
                ready()
            await listener.serve(
                lambda stream: handle_connection(stream, service, connections), task_group=tg
            )
    finally:
        with anyio.CancelScope(shield=True):
            await service.shutdown()  # the warm pool, then every sandbox of ours
        with contextlib.suppress(OSError):
            os.unlink(socket_path)
