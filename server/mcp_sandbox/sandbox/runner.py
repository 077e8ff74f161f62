"""One container's life, create to remove: cleanup on every path, whatever happens."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import anyio
from anyio import CapacityLimiter, to_thread

from mcp_sandbox.engine.backend import Attachment, Engine
from mcp_sandbox.engine.steps import remove_quietly, step
from mcp_sandbox.output.shaping import KEPT_BYTES, STOPPED_NOTE, StreamCapture, past_stop
from mcp_sandbox.sandbox.live import watch_live
from mcp_sandbox.sandbox.spec import ContainerSpec
from mcp_sandbox.sandbox.usage import RunTail, Usage, ships_files, tail_bytes


@dataclass(frozen=True)
class RawRun:
    stdout: StreamCapture
    stderr: StreamCapture
    exit_code: int | None
    timed_out: bool
    oom_killed: bool
    duration_ms: int
    container: str = ""  # the container's name
    pooled: bool = False  # a warm sandbox, pre-started for this one call
    usage: Usage | None = None  # what it used, as the sandbox reported it (``usage``)
    reports: Mapping[str, bytes] = field(default_factory=dict)  # name -> base64 (``usage``)
    files: tuple[tuple[bytes, bytes, bytes, bytes], ...] = ()  # file frames (``usage``)


async def stop_flooded(
    api: Engine,
    name: str,
    streams: Attachment,
    err: StreamCapture,
    threads: CapacityLimiter,
) -> bool:
    """End a run whose output passed ``STOP_BYTES`` and say so at the end of its stderr.
    Returns whether the memory limit had killed a process of it."""
    # Unread, the stream would hold the daemon's copy, and with it the kill: close it.
    streams.close()
    await step(threads, "stop the sandbox", api.kill, name)
    err.note(STOPPED_NOTE)
    return await step(threads, "inspect the sandbox", api.oom_killed, name)


async def run_once(
    api: Engine,
    spec: ContainerSpec,
    stdin: bytes | None,
    keep_bytes: int,
    threads: CapacityLimiter,
    dispose: Callable[[str], None] | None = None,
) -> RawRun:
    """Run ``spec`` to exit or deadline. When this raises, the container is gone; when it
    returns, the container has stopped and is gone, or handed to ``dispose`` to remove."""
    out, err = StreamCapture(keep_bytes, KEPT_BYTES), StreamCapture(keep_bytes, KEPT_BYTES)
    watch_live(out, err)
    # The usage wrapper's report ends stderr: held back from the capture, then parsed.
    report = RunTail(err, tail_bytes(spec.env), files=ships_files(spec.env))
    captures = {1: out.feed, 2: report.feed}
    streams: Attachment | None = None
    pumped = threading.Event()
    pumping = threading.Event()

    def pump() -> None:
        assert streams is not None
        pumping.set()

        def sink(stream: int, chunk: bytes) -> bool:
            captures.get(stream, report.feed)(chunk)
            return past_stop(out, err)

        try:
            streams.pump(sink)
        finally:
            report.finish()
            pumped.set()

    try:
        await step(
            threads,
            "create the sandbox",
            api.create,
            spec.create_kwargs(),
            spec.host_config_kwargs(),
        )
        streams = await step(threads, "attach to the sandbox", api.attach, spec.name, spec.stdin)
        await step(threads, "start the sandbox", api.start, spec.name)
        started = time.monotonic()
        if stdin is not None:
            assert streams is not None
            threading.Thread(
                target=streams.send_stdin, args=(base64.b64encode(stdin),), daemon=True
            ).start()
        exit_code: int | None = None
        oom = False
        with anyio.move_on_after(spec.limits.timeout_s) as deadline:
            await to_thread.run_sync(pump, limiter=threads, abandon_on_cancel=True)
            if not past_stop(out, err):
                state = await to_thread.run_sync(
                    api.wait, spec.name, limiter=threads, abandon_on_cancel=True
                )
                exit_code, oom = state.exit_code, state.oom_killed
        duration_ms = int((time.monotonic() - started) * 1000)
        timed_out = deadline.cancelled_caught
        stopped = past_stop(out, err) and not timed_out
        if stopped:
            assert streams is not None
            oom = await stop_flooded(api, spec.name, streams, err, threads)
        elif timed_out:
            # Killing the container ends every process in it, and with them the stream.
            await step(threads, "kill the sandbox", api.kill, spec.name)
            if pumping.is_set():  # a deadline that passed before the pump began has no stream
                await to_thread.run_sync(pumped.wait, 10.0, limiter=threads, abandon_on_cancel=True)
            oom = await step(threads, "inspect the sandbox", api.oom_killed, spec.name)
        run = RawRun(
            out,
            err,
            exit_code,
            timed_out,
            oom,
            duration_ms,
            spec.name,
            usage=report.usage,
            reports=report.reports,
            files=tuple(report.files),
        )
    except BaseException:
        if streams is not None:
            streams.close()
        await remove_quietly(api, spec.name, threads)
        raise
    if streams is not None:
        streams.close()
    if dispose is not None:
        dispose(spec.name)
    else:
        await remove_quietly(api, spec.name, threads)
    return run
