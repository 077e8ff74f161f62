"""One `copy` or `rw` call in a warm sandbox: the copy in on stdin, back out after the program.

No keeper container, no volume and no archive call of the daemon (each costs it tens of
milliseconds): the sandbox's ``/workspace`` is a tmpfs of the copy's room, owned by the
sandbox user as the cold path's volume is. Its stub gets the copy while it waits (``pool``'s
``prepare``), and at the call only what changed in the tree since (``workspace.copy_delta``).
Once the program has ended and every other process of the sandbox is killed, the stub sends
the copy back on stdout after its end marker, closed by a trailer with the call's nonce.
A copy that does not come back whole (the program killed the stub, the call timed out, its
output flooded) is reported as lost, and nothing of it is applied.
"""

from __future__ import annotations

import base64
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import anyio
from anyio import CapacityLimiter, to_thread

from mcp_sandbox.constants import WORKDIR
from mcp_sandbox.engine.backend import Engine
from mcp_sandbox.engine.steps import step
from mcp_sandbox.output.shaping import KEPT_BYTES, StreamCapture, past_stop
from mcp_sandbox.policy.limits import RunPlan
from mcp_sandbox.sandbox.live import watch_live
from mcp_sandbox.sandbox.pool import StaleSandbox, Warm
from mcp_sandbox.sandbox.runner import RawRun, stop_flooded
from mcp_sandbox.sandbox.warm import (
    STALE_CODE,
    EndWatch,
    copy_trailer,
    encode_request,
)

T = TypeVar("T")
READ_BACK_S = 120.0  # our own step, as the cold path's archive read is
_PUT_WAIT_S = 0.1
# What may follow a tar stream's end before the trailer: its padding to a whole record.
_DRAIN_BYTES = 1 << 20


class ArchiveFeed:
    """The bytes after the end marker on stdout, from the pump's thread to the reader's.

    Bounded (a few chunks in flight); holds back what could be the trailer, and ``whole``
    says the stream ended with it.
    """

    def __init__(self, trailer: bytes) -> None:
        self._trailer = trailer
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        self._abandoned = threading.Event()
        self.whole = False

    def put(self, chunk: bytes) -> bool:
        """From the pump: True once the reader has gone (stop reading)."""
        while not self._abandoned.is_set():
            try:
                self._queue.put(chunk, timeout=_PUT_WAIT_S)
                return False
            except queue.Full:
                continue
        return True

    def end(self) -> None:
        """The stream ended."""
        self.put(None)  # type: ignore[arg-type]  # the queue's end mark

    def abandon(self) -> None:
        self._abandoned.set()

    def chunks(self) -> Iterator[bytes]:
        """The archive, without the trailer; sets ``whole`` once the stream has ended."""
        held = b""
        size = len(self._trailer)
        while (chunk := self._queue.get()) is not None:
            held += chunk
            if len(held) > size:
                yield held[:-size]
                held = held[-size:]
            if held == self._trailer:
                # The stub's last write: no need to wait for the stream to close (the
                # container's end). Only the stub knows the nonce, and it is the last
                # process of the sandbox.
                break
        self.whole = held == self._trailer


def _read(
    feed: ArchiveFeed,
    consume: Callable[[Iterator[bytes]], T],
    whole_only: Callable[[T], bool] = lambda _: True,
) -> T | None:
    """Blocking: ``consume`` the copy, or None when it did not come back whole. A result
    for which ``whole_only`` is false (the reader stopped at its bounds: nothing of it is
    applied) stands without the trailer: the rest is not waited for."""
    chunks = feed.chunks()
    result = consume(chunks)
    if not whole_only(result):
        return result
    # Past the archive's end, to the trailer: a little padding.
    rest = 0
    for chunk in chunks:
        rest += len(chunk)
        if rest > _DRAIN_BYTES:
            return None
    return result if feed.whole else None


async def run_warm_copy(
    api: Engine,
    warm: Warm,
    plan: RunPlan,
    cwd: str,
    keep_bytes: int,
    threads: CapacityLimiter,
    prefix: bytes,
    consume: Callable[[Iterator[bytes]], T],
    whole_only: Callable[[T], bool] = lambda _: True,
) -> tuple[RawRun, T | None]:
    """Run ``plan`` in ``warm`` once its stub has read ``prefix`` (what brings its copy up
    to date: ``warm.encode_patch``). ``consume`` reads the
    copy the run left; its answer is None when the copy did not come back whole (but see
    ``_read``'s ``whole_only``). The caller
    discards the sandbox afterwards. Raises StaleSandbox when the stub refused the call
    before running anything (the copy did not land, or a mount went away).
    """
    nonce = secrets.token_hex(16)
    out, err = StreamCapture(keep_bytes, KEPT_BYTES), StreamCapture(keep_bytes, KEPT_BYTES)
    watch_live(out, err)
    watches = {1: EndWatch(nonce, out), 2: EndWatch(nonce, err)}
    feed = ArchiveFeed(copy_trailer(nonce))
    stdin_b64 = base64.b64encode(plan.stdin) if plan.stdin is not None else None
    request = prefix + encode_request(
        nonce, plan.argv, cwd or WORKDIR, stdin_b64, report_usage=True
    )
    first_part = threading.Event()  # both markers seen, the stream ended, or a flood
    pumped = threading.Event()

    def sink(stream: int, chunk: bytes) -> bool:
        if stream == 1 and watches[1].ended:
            return feed.put(chunk)
        watch = watches.get(stream, watches[2])
        was = watch.ended
        watch.feed(chunk)
        if stream == 1 and watch.ended and not was and watch.after:
            feed.put(watch.after)
        if all(w.ended for w in watches.values()):
            first_part.set()
        elif past_stop(out, err):
            first_part.set()
            return True
        return False

    def pump() -> None:
        try:
            warm.streams.pump(sink)
        finally:
            feed.end()
            first_part.set()
            pumped.set()

    threading.Thread(target=warm.streams.send_stdin, args=(request,), daemon=True).start()
    threading.Thread(target=pump, daemon=True).start()
    started = time.monotonic()
    try:
        with anyio.move_on_after(plan.limits.timeout_s) as deadline:
            await to_thread.run_sync(first_part.wait, limiter=threads, abandon_on_cancel=True)
        duration_ms = int((time.monotonic() - started) * 1000)
        timed_out = deadline.cancelled_caught
        ended = watches[1].ended
        exit_code = watches[1].exit_code if ended else None
        if exit_code == STALE_CODE and not timed_out:
            raise StaleSandbox(warm.spec.name)
        oom = watches[1].oom
        back: T | None = None
        if not timed_out and not ended and past_stop(out, err):
            oom = await stop_flooded(api, warm.spec.name, warm.streams, err, threads)
            exit_code = None
        elif timed_out:
            await step(threads, "stop the sandbox", api.kill, warm.spec.name)
            feed.abandon()  # no one reads the copy: the pump must not wait on it
            await to_thread.run_sync(pumped.wait, 10.0, limiter=threads, abandon_on_cancel=True)
            exit_code = None
            oom = await step(threads, "inspect the sandbox", api.oom_killed, warm.spec.name)
        elif not ended:
            # The stub never wrote its marker (the program killed it): the exit is the
            # answer, and the copy went with the sandbox.
            for w in watches.values():
                w.flush()
            state = await step(threads, "wait for the sandbox", api.wait, warm.spec.name)
            exit_code, oom = state.exit_code, state.oom_killed
        else:
            back = await step(
                threads,
                "copy the workspace out",
                _read,
                feed,
                consume,
                whole_only,
                bound_s=READ_BACK_S,
            )
        if exit_code == 137 and not oom:
            # SIGKILL: the memory limit, or the program's own kill. The daemon records OOM
            # once the container has exited, which it does after the copy went out.
            with anyio.move_on_after(5):
                state = await to_thread.run_sync(
                    api.wait, warm.spec.name, limiter=threads, abandon_on_cancel=True
                )
                oom = state.oom_killed
    finally:
        feed.abandon()
    usage = watches[1].usage
    run = RawRun(
        out, err, exit_code, timed_out, oom, duration_ms, warm.spec.name, pooled=True, usage=usage
    )
    return run, back
