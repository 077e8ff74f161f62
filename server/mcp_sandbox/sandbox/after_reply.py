"""Work that must not compete with a call's reply: removing used sandboxes, warming new ones.

Removing a container and starting one cost the daemon a few hundred CPU-milliseconds; done
while a call is still running or replying, on a small host, they slow that call down. So
this work waits until no call has been running for ``SETTLE_S`` (time for the audit record
and the reply to go out), but never longer than ``MAX_DEFER_S``, so a steady stream of
calls still gets its sandboxes removed and replaced.

What is handed over here has already stopped running, or is killed by its removal.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import anyio
from anyio import CapacityLimiter
from anyio.abc import TaskGroup

from mcp_sandbox.engine.backend import Engine
from mcp_sandbox.engine.steps import remove_quietly
from mcp_sandbox.errors import SandboxUnavailable

SETTLE_S = 0.1
MAX_DEFER_S = 0.5


class AfterReply:
    """Counts the calls in flight; runs deferred removals in its own task group."""

    def __init__(self, api: Engine, threads: CapacityLimiter) -> None:
        self._api = api
        self._threads = threads
        self._busy = 0
        self._last_end = 0.0
        self._idle = anyio.Event()
        self._idle.set()
        self._tg: TaskGroup | None = None

    @property
    def in_flight(self) -> int:
        """Calls running now."""
        return self._busy

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """Around a call: while one runs, deferred work waits."""
        if self._busy == 0:
            self._idle = anyio.Event()
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
            self._last_end = time.monotonic()
            if self._busy == 0:
                self._idle.set()

    async def settled(self) -> None:
        """Return once no call has run for ``SETTLE_S``, or after ``MAX_DEFER_S``."""
        with anyio.move_on_after(MAX_DEFER_S):
            while True:
                await self._idle.wait()
                quiet_in = self._last_end + SETTLE_S - time.monotonic()
                if quiet_in <= 0 and not self._busy:
                    return
                await anyio.sleep(max(quiet_in, 0.0))

    def remove(self, name: str, *, at_once: bool = False) -> None:
        """Remove container ``name`` once calls settle, or ``at_once`` (what may still be
        running, a cancelled call's program say, is not left to run)."""
        if self._tg is not None:
            if at_once:
                self._tg.start_soon(remove_quietly, self._api, name, self._threads)
            else:
                self._tg.start_soon(self._remove_later, name)
        else:
            threading.Thread(target=self._remove_blocking, args=(name,)).start()

    async def _remove_later(self, name: str) -> None:
        try:
            await self.settled()
        finally:  # cancelled (the server is stopping): removed all the same
            await remove_quietly(self._api, name, self._threads)

    def _remove_blocking(self, name: str) -> None:
        try:
            self._api.remove(name)
        except SandboxUnavailable:
            pass  # the start-up reaper removes what is left

    async def run(self) -> None:
        """Hold the task group of deferred work until cancelled; removals still finish."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                await anyio.sleep_forever()
        finally:
            self._tg = None
