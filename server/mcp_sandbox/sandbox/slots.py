"""The sandbox slots, and the calls waiting for one: first come, first served."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import anyio
from anyio import CapacityLimiter

from mcp_sandbox.errors import HostBusy

log = logging.getLogger("mcp_sandbox")

# A waiting call hears of its place whenever it moves up, and at least this often.
REPORT_EVERY_S = 5.0


@dataclass(frozen=True)
class QueuePlace:
    """Where a waiting call stands: ``position`` 1 is the next to get a slot."""

    position: int
    waiting: int
    slots: int
    waited_s: float


# Told of the call's place while it waits; best effort (a failure is logged and ignored).
OnWait = Callable[[QueuePlace], Awaitable[None]]


@dataclass(frozen=True)
class Load:
    """What the slots hold at one moment, for the metrics: warm sandboxes ready, calls
    running and waiting, and how many slots there are."""

    pool_ready: int
    busy: int
    waiting: int
    slots: int


class SlotQueue:
    """At most ``slots`` sandboxes at once; a call waits its turn, ``wait_s`` at most.

    A slot is also withheld while ``may_start()`` says the host is short of memory.
    """

    def __init__(
        self, slots: int, may_start: Callable[[], bool], *, memory_floor_mib: int = 0
    ) -> None:
        self.slots = slots
        self._limiter = CapacityLimiter(slots)
        self._may_start = may_start
        self._floor_mib = memory_floor_mib
        # Tickets of the calls waiting for a slot, oldest first. The limiter wakes its
        # waiters in the order they came, which is this order.
        self._waiting: list[object] = []
        self._moved = anyio.Event()

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot now."""
        return len(self._waiting)

    @property
    def busy(self) -> int:
        """Slots held now."""
        return int(self._limiter.borrowed_tokens)

    @contextlib.asynccontextmanager
    async def slot(self, wait_s: float, on_wait: OnWait | None = None) -> AsyncIterator[int]:
        """Hold a slot for the block; yields the milliseconds the call queued for it.

        Raises HostBusy once the call has waited ``wait_s`` (``bounds.queue_timeout_s``).
        A cancelled call leaves the queue at once.
        """
        ticket = object()
        self._waiting.append(ticket)
        started = time.monotonic()
        acquired = slotted = False
        try:
            with anyio.move_on_after(wait_s):
                async with anyio.create_task_group() as tg:
                    if on_wait is not None and (
                        self._limiter.available_tokens < 1 or self._waiting[0] is not ticket
                    ):
                        tg.start_soon(self._report, ticket, started, on_wait)
                    await self._limiter.acquire_on_behalf_of(ticket)
                    slotted = True
                    self._leave(ticket)
                    try:
                        while not self._may_start():  # noqa: ASYNC110  # memory has no event
                            await anyio.sleep(0.05)
                        acquired = True
                    finally:
                        if not acquired:
                            self._limiter.release_on_behalf_of(ticket)
                    tg.cancel_scope.cancel()
        finally:
            self._leave(ticket)
        if not acquired:
            why = (
                f"host busy: less than {self._floor_mib} MiB of memory stayed available "
                f"for {wait_s:g} s (pool.min_available_mib)"
                if slotted
                else f"host busy: all {self.slots} sandbox slots stayed busy for {wait_s:g} s "
                "(bounds.queue_timeout_s)"
            )
            raise HostBusy(f"{why}; try again later")
        try:
            yield round((time.monotonic() - started) * 1000)
        finally:
            self._limiter.release_on_behalf_of(ticket)

    def _leave(self, ticket: object) -> None:
        if ticket in self._waiting:
            self._waiting.remove(ticket)
            self._moved.set()
            self._moved = anyio.Event()

    def _place_of(self, ticket: object) -> int:
        return self._waiting.index(ticket) + 1 if ticket in self._waiting else 0

    async def _report(self, ticket: object, started: float, on_wait: OnWait) -> None:
        while (position := self._place_of(ticket)) > 0:
            place = QueuePlace(position, len(self._waiting), self.slots, time.monotonic() - started)
            try:
                await on_wait(place)
            except Exception:
                log.debug("could not tell a waiting call its place", exc_info=True)
            with anyio.move_on_after(REPORT_EVERY_S):
                while self._place_of(ticket) == position:
                    await self._moved.wait()
