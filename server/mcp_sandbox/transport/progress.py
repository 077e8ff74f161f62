"""Progress notifications for a call that runs a while: elapsed time and its last line.

Sent only when the client asked (a progress token): the SDK's ``report_progress`` is a
no-op otherwise. The line is the last whole line the program wrote, scrubbed and
neutralised like any output, and cut short.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from mcp.server.mcpserver import Context

from mcp_sandbox.output.shaping import fit, json_chars, neutralise, safe_tail
from mcp_sandbox.sandbox.live import LIVE, LiveRun

T = TypeVar("T")
# A call this old gets its first notification; then one every PROGRESS_EVERY_S.
PROGRESS_AFTER_S = 3.0
PROGRESS_EVERY_S = 2.0
LINE_CHARS = 200


def progress_message(live: LiveRun, scrub: Callable[[str], str], margin: int) -> str:
    """``"12 s: <last line>"``: scrubbed, neutralised, at most ``LINE_CHARS`` of the line."""
    line, cut = live.last_line()
    shown = safe_tail(line, scrub, margin) if cut else scrub(line)
    shown = fit(neutralise(shown).strip(), LINE_CHARS, weight=json_chars, from_end=True)
    elapsed = f"{live.elapsed_s():.0f} s"
    return f"{elapsed}: {shown}" if shown else elapsed


async def _tick(
    ctx: Context[Any, Any], live: LiveRun, scrub: Callable[[str], str], margin: int
) -> None:
    await anyio.sleep(PROGRESS_AFTER_S)
    while True:
        message = progress_message(live, scrub, margin)
        with contextlib.suppress(Exception):  # a client that went away: the call goes on
            await ctx.report_progress(round(live.elapsed_s(), 1), None, message)
        await anyio.sleep(PROGRESS_EVERY_S)


async def with_progress(
    ctx: Context[Any, Any], scrub: Callable[[str], str], margin: int, call: Awaitable[T]
) -> T:
    """Await ``call``, sending progress while it runs; its exception is raised as it was."""
    live = LiveRun()
    token = LIVE.set(live)
    error: Exception | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_tick, ctx, live, scrub, margin)
            try:
                result = await call
            except Exception as e:  # raised below, not wrapped in the task group's group
                error = e
            finally:
                tg.cancel_scope.cancel()
    finally:
        LIVE.reset(token)
    if error is not None:
        raise error
    return result
