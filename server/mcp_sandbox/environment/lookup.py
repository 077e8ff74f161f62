"""Which environment a call mounts, without a volume listing on every call.

Every call of a server with a workspace, and every warm sandbox it makes, needs the sealed
environment of that workspace and image: one listing of the daemon's labelled volumes each.
Under load that is more requests to the daemon than the sandbox's own create or start.

``EnvironmentLookup`` keeps one answer only, *none*, and only for ``ttl_s`` seconds:

- "none" may be a few seconds old: a build by another process (``mcp-sandbox env build``,
  another server) is seen at most ``ttl_s`` after it sealed, and until then calls run
  without it, as they did before it began. This server's own build and removal ``forget``
  the answer, so they are seen at once (a lookup that was already under way when one
  forgot keeps its answer to itself: it may predate the change).
- A found environment is looked up again on each call: the call mounts it by name, and
  a volume removed meanwhile by another process would be created anew, empty and
  unlabelled, by the daemon in its place. Only the daemon's own race of a few milliseconds
  (between the listing and the create) is left, as before.

Thread-safe: calls look up from worker threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mcp_sandbox.constants import ENVIRONMENT_LABEL
from mcp_sandbox.environment.volumes import Environment, VolumeRow, current, environment_key

# Long enough that calls under load share one listing, short enough that another process's
# build shows within a breath.
NONE_TTL_S = 2.0


@dataclass(frozen=True)
class _Absent:
    key: str
    until: float  # on ``clock``


class EnvironmentLookup:
    """The sealed environment of a workspace and image, with "none" kept ``ttl_s``."""

    def __init__(
        self,
        list_volumes: Callable[[], Iterable[VolumeRow]],
        *,
        ttl_s: float = NONE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._list = list_volumes
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._absent: _Absent | None = None
        self._generation = 0  # bumped by ``forget``: an answer of before it is not kept

    def find(self, root: str, image: str) -> Environment | None:
        """Blocking: the environment calls of ``root`` under ``image`` mount, or None.

        Raises what ``list_volumes`` raises (SandboxUnavailable); nothing is kept then.
        """
        key = environment_key(root, image)
        with self._lock:
            absent, generation = self._absent, self._generation
            asked = self._clock()
            if absent is not None and absent.key == key and asked < absent.until:
                return None
        rows = [r for r in self._list() if r.labels.get(ENVIRONMENT_LABEL)]
        found = current(rows, key)
        if found is None:
            with self._lock:
                if generation == self._generation:
                    # From when it was asked: the daemon may have answered of that moment.
                    self._absent = _Absent(key, asked + self._ttl_s)
        return found

    def forget(self) -> None:
        """This server changed the environments: the next lookup asks the daemon."""
        with self._lock:
            self._generation += 1
            self._absent = None
