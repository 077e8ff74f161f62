"""A running call's output as it grows, for progress notifications: the last line so far.

The transport sets ``LIVE`` for the call's task; the runner (cold or warm) hands it the
run's captures with ``watch_live``. Reading them is racy by design: a capture only grows,
and a line read mid-append is merely a shorter line.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field

from mcp_sandbox.output.shaping import StreamCapture

# Bytes of the end of a stream looked at for its last line.
_LOOK_BYTES = 1024


@dataclass
class LiveRun:
    """What a progress notification says of one call: how long, and its last line."""

    started: float = field(default_factory=time.monotonic)
    captures: tuple[StreamCapture, ...] = ()  # set once its sandbox runs (``watch_live``)
    queued: bool = False  # it waited for a slot: its place in the queue was its progress
    _totals: tuple[int, ...] = ()
    _latest: int = 0

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def last_line(self) -> tuple[str, bool]:
        """The last non-empty line of the stream written last, and whether it was cut at
        its start (then its first characters may be the end of something longer)."""
        totals = tuple(c.total for c in self.captures)
        for i, (now, before) in enumerate(zip(totals, self._totals or totals, strict=True)):
            if now != before:
                self._latest = i
        self._totals = totals
        if not self.captures:
            return "", False
        capture = self.captures[self._latest]
        end = bytes(capture.tail or capture.head)[-_LOOK_BYTES:]
        lines = [line for line in end.splitlines() if line.strip()]
        if not lines:
            return "", False
        cut = len(lines) == 1 and len(end) == _LOOK_BYTES
        return lines[-1].decode("utf-8", "replace"), cut


LIVE: ContextVar[LiveRun | None] = ContextVar("mcp_sandbox_live", default=None)


def watch_live(*captures: StreamCapture) -> None:
    """Let the call's progress (if its client asked for any) read these captures."""
    live = LIVE.get()
    if live is not None:
        live.captures = captures
