"""Progress notifications of a call: its place while it queues, its last line while it runs.

Sent only when the client asked (a progress token): the SDK's ``report_progress`` is a
no-op otherwise. One ``CallProgress`` per call sends both kinds on the one token, so their
``progress`` (seconds since the call began) grows with each notification, as MCP requires.
While the call waits for a slot it hears of its place (``queue_reports``); once its sandbox
runs, of its elapsed time and the last whole line the program wrote, scrubbed and
neutralised like any output, and cut short. A call whose output is not seen here (a
launcher runs it) and that was never queued here says its elapsed time only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from mcp.server.mcpserver import Context

from mcp_sandbox.output.shaping import fit, json_chars, neutralise, safe_tail
from mcp_sandbox.sandbox.live import LIVE, LiveRun
from mcp_sandbox.sandbox.slots import OnWait, QueuePlace

T = TypeVar("T")
# A call this old gets its first running notification; then one every PROGRESS_EVERY_S.
PROGRESS_AFTER_S = 3.0
PROGRESS_EVERY_S = 2.0
# How often a call not yet running looks again whether it is.
_LOOK_EVERY_S = 0.5
LINE_CHARS = 200


def progress_message(live: LiveRun, scrub: Callable[[str], str], margin: int) -> str:
    """``"12 s: <last line>"``: scrubbed, neutralised, at most ``LINE_CHARS`` of the line."""
    line, cut = live.last_line()
    shown = safe_tail(line, scrub, margin) if cut else scrub(line)
    shown = fit(neutralise(shown).strip(), LINE_CHARS, weight=json_chars, from_end=True)
    elapsed = f"{live.elapsed_s():.0f} s"
    return f"{elapsed}: {shown}" if shown else elapsed


class CallProgress:
    """The one sender of a call's progress notifications: ``progress`` only ever grows."""

    def __init__(self, ctx: Context[Any, Any], live: LiveRun) -> None:
        self._ctx = ctx
        self.live = live
        self._last = -1.0

    async def send(self, message: str) -> None:
        """Best effort: a client that went away does not stop the call."""
        progress = self._last = max(round(self.live.elapsed_s(), 3), self._last + 0.001)
        with contextlib.suppress(Exception):
            await self._ctx.report_progress(progress, None, message)


def queue_reports(progress: CallProgress) -> OnWait:
    """A waiting call's place, as progress notifications."""

    async def report(place: QueuePlace) -> None:
        progress.live.queued = True
        await progress.send(
            f"waiting for a sandbox slot: {place.position} of {place.waiting} in the "
            f"queue, all {place.slots} slots busy"
        )

    return report


async def _tick(progress: CallProgress, scrub: Callable[[str], str], margin: int) -> None:
    live = progress.live
    await anyio.sleep(PROGRESS_AFTER_S)
    while True:
        # A queued call's progress is its place, until its sandbox runs.
        if live.captures or not live.queued:
            await progress.send(progress_message(live, scrub, margin))
            await anyio.sleep(PROGRESS_EVERY_S)
        else:
            await anyio.sleep(_LOOK_EVERY_S)


async def with_progress(
    ctx: Context[Any, Any],
    scrub: Callable[[str], str],
    margin: int,
    call: Callable[[OnWait], Awaitable[T]],
) -> T:
    """Await ``call(on_wait)``, sending progress while it queues and runs; its exception is
    raised as it was."""
    live = LiveRun()
    progress = CallProgress(ctx, live)
    token = LIVE.set(live)
    error: Exception | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_tick, progress, scrub, margin)
            try:
                result = await call(queue_reports(progress))
            except Exception as e:  # raised below, not wrapped in the task group's group
                error = e
            finally:
                tg.cancel_scope.cancel()
    finally:
        LIVE.reset(token)
    if error is not None:
        raise error
    return result
