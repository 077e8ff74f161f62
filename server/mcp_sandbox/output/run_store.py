"""The full output of recent runs whose streams were cut, for the session to page through.

Held in memory, scrubbed and neutralised as any output, each stream up to the capture's
``KEPT_BYTES``; the oldest go first once all of them pass ``STORE_BYTES``. A run id is 48
random bits, and the store lives as long as the server: on stdio, one session.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

# The most of one stream kept, and of all kept streams together.
STORE_BYTES = 32 * 1024 * 1024
Stream = str  # "stdout" or "stderr"


def output_uri(run_id: str, stream: Stream) -> str:
    """Where the kept ``stream`` of ``run_id`` is read (an MCP resource)."""
    return f"sandbox://runs/{run_id}/{stream}"


class RunStore:
    """Kept streams by run id: bounded, oldest out first. Safe to use from any thread."""

    def __init__(self, max_bytes: int = STORE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._texts: OrderedDict[tuple[str, Stream], str] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def keep(self, run_id: str, stream: Stream, text: str) -> None:
        size = len(text.encode("utf-8"))
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._texts.pop((run_id, stream), None)
            if old is not None:
                self._bytes -= len(old.encode("utf-8"))
            self._texts[(run_id, stream)] = text
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, dropped = self._texts.popitem(last=False)
                self._bytes -= len(dropped.encode("utf-8"))

    def read(self, run_id: str, stream: Stream) -> str | None:
        with self._lock:
            return self._texts.get((run_id, stream))
