"""A pool of pre-started sandboxes of one shape: each is used for one call, then removed.

Removals and refills run in the background once calls settle (``AfterReply``), off the
reply path; the pool grows while calls find it empty and shrinks while it sits idle. While
calls find it empty (under load) refills start at once: waiting for a quiet moment then
only sends more calls to cold sandboxes, which cost the daemon more (a wait, an inspect).
"""

from __future__ import annotations

import base64
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from anyio import CapacityLimiter, to_thread

from mcp_sandbox.constants import WORKDIR
from mcp_sandbox.engine.backend import Attachment, Engine
from mcp_sandbox.engine.steps import remove_quietly, step
from mcp_sandbox.errors import SandboxUnavailable
from mcp_sandbox.output.shaping import KEPT_BYTES, StreamCapture, past_stop
from mcp_sandbox.policy.limits import RunPlan
from mcp_sandbox.sandbox.after_reply import AfterReply
from mcp_sandbox.sandbox.live import watch_live
from mcp_sandbox.sandbox.runner import RawRun, stop_flooded
from mcp_sandbox.sandbox.spec import ContainerSpec
from mcp_sandbox.sandbox.warm import STALE_CODE, EndWatch, encode_request, shape_of

log = logging.getLogger("mcp_sandbox")

IDLE_SHRINK_S = 30.0  # an idle minute shrinks the pool by two
REFILL_RETRY_S = 2.0
# For this long after a call found the pool empty, refills start at once. Deferring them
# (``AfterReply.settled``) spares a running call the daemon's work only while the pool has
# a sandbox for the next call; once calls go cold it spares none, and only sends more cold.
STARVED_S = 1.0
_INLINE_REQUEST_BYTES = 32 * 1024


class StaleSandbox(Exception):
    """The warm sandbox refused the call before running anything: one of its mounts went
    away while it waited. The call goes to a cold sandbox."""


@dataclass
class Warm:
    spec: ContainerSpec
    streams: Attachment
    # What the pool's ``prepare`` gave it while it waited (a warm copy's copy), if any.
    prepared: object | None = None


class WarmPool:
    """Warm sandboxes of the shape ``make_spec`` builds."""

    def __init__(
        self,
        api: Engine,
        threads: CapacityLimiter,
        make_spec: Callable[[str], ContainerSpec | None],
        after: AfterReply,
        *,
        min_size: int,
        max_size: int,
        may_start: Callable[[], bool],
        prepare: Callable[[Warm], object | None] | None = None,
        give_up_after: int | None = None,
    ) -> None:
        """``prepare`` (blocking) readies a started sandbox for its call, and says what it
        did; None: it could not, and the sandbox goes. With ``give_up_after``, the pool
        stops making sandboxes once that many in a row failed (``failed``: found dead when
        taken, or refused by their stub) with none ``served`` between: their stub cannot
        run in this image or runtime, say."""
        self._api = api
        self._prepare = prepare
        self._give_up_after = give_up_after
        self._failed_in_a_row = 0
        self.given_up = False
        self._threads = threads
        self._make_spec = make_spec
        self._after = after
        self.min_size, self.max_size = min_size, max(min_size, max_size)
        self.target = min_size
        self._may_start = may_start
        self._ready: deque[Warm] = deque()
        self._starting = 0
        self._wake = anyio.Event()
        self._last_take = time.monotonic()
        self._last_miss = -STARVED_S  # when a take last found no warm sandbox
        self.closed = False

    def take(self, cold: ContainerSpec) -> Warm | None:
        """A warm sandbox whose spec equals ``cold`` but for identity, or None.

        Warm sandboxes of another shape (the workspace's masks changed, say) are stale:
        they are discarded, never used.
        """
        self._last_take = time.monotonic()
        shape = shape_of(cold)
        warm = None
        while self._ready and warm is None:
            candidate = self._ready.popleft()
            # One that died while it waited (killed, out of memory, a daemon restart) is gone.
            if shape_of(candidate.spec) == shape and candidate.streams.is_open():
                warm = candidate
            else:
                if not candidate.streams.is_open():
                    self.failed()
                self.discard(candidate)
        if warm is None:
            self.target = min(self.target + 1, self.max_size)
            self._last_miss = self._last_take
        self._wake.set()
        return warm

    def failed(self) -> None:
        """One of ours died before its call, or refused it: counts towards giving up."""
        self._failed_in_a_row += 1
        if self._give_up_after is not None and self._failed_in_a_row >= self._give_up_after:
            if not self.given_up:
                log.warning(
                    "%d warm sandboxes in a row died before their call or refused it: no more "
                    "are made, and such calls run cold",
                    self._failed_in_a_row,
                )
            self.given_up = True

    def served(self) -> None:
        """One of ours served its call: the failures in a row start again from none."""
        self._failed_in_a_row = 0

    def drop_dead(self) -> int:
        """Discard the warm sandboxes that died while they waited (a daemon restart kills
        them all), so the pool refills now rather than at the next calls. Returns how many."""
        dead = [w for w in self._ready if not w.streams.is_open()]
        for warm in dead:
            self._ready.remove(warm)
            self.discard(warm, at_once=True)
        self._wake.set()
        return len(dead)

    @property
    def starved(self) -> bool:
        """Whether a call found no warm sandbox within the last ``STARVED_S``."""
        return time.monotonic() - self._last_miss < STARVED_S

    @property
    def starting(self) -> int:
        """Warm sandboxes being created now."""
        return self._starting

    @property
    def ready(self) -> int:
        return len(self._ready)

    async def run(self) -> None:
        """Keep ``target`` sandboxes warm until cancelled; then remove every one left."""
        try:
            async with anyio.create_task_group() as tg:
                while True:
                    self._shrink_when_idle()
                    while (
                        not self.closed
                        and not self.given_up
                        and len(self._ready) + self._starting < self.target
                        and self._may_start()
                    ):
                        self._starting += 1
                        tg.start_soon(self._start_one)
                    self._wake = anyio.Event()
                    with anyio.move_on_after(REFILL_RETRY_S):
                        await self._wake.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await self.drain()

    def _shrink_when_idle(self) -> None:
        if time.monotonic() - self._last_take > IDLE_SHRINK_S and self.target > self.min_size:
            self.target -= 1
            self._last_take = time.monotonic()
        while len(self._ready) > self.target:
            self.discard(self._ready.pop())

    async def _start_one(self) -> None:
        streams: Attachment | None = None
        spec: ContainerSpec | None = None
        joined = False
        try:
            if not self.starved:  # a refill is no call's business: after the replies
                await self._after.settled()
            spec = await to_thread.run_sync(
                self._make_spec, secrets.token_hex(6), limiter=self._threads
            )
            if spec is None:  # this shape cannot be warm now; look again later
                await anyio.sleep(REFILL_RETRY_S * 5)
                return
            # Shielded: a creation that has begun ends in the pool or removed, never lost.
            with anyio.CancelScope(shield=True), anyio.fail_after(60):
                await to_thread.run_sync(
                    self._api.create,
                    spec.create_kwargs(),
                    spec.host_config_kwargs(),
                    limiter=self._threads,
                    abandon_on_cancel=True,
                )
                attached = await to_thread.run_sync(
                    self._api.attach, spec.name, True, limiter=self._threads, abandon_on_cancel=True
                )
                streams = attached
                await to_thread.run_sync(
                    self._api.start, spec.name, limiter=self._threads, abandon_on_cancel=True
                )
            warm = Warm(spec, attached)
            if self._prepare is not None:
                with anyio.fail_after(60):
                    warm.prepared = await to_thread.run_sync(
                        self._safely_prepared, warm, limiter=self._threads, abandon_on_cancel=True
                    )
                if warm.prepared is None:  # not now; a pause, so a failure never spins
                    await anyio.sleep(REFILL_RETRY_S)
                    return
            if not self.closed:
                self._ready.append(warm)
                joined = True
        except (SandboxUnavailable, TimeoutError) as e:
            log.warning("could not warm a sandbox: %s", e or "no answer within 60 s")
            await anyio.sleep(REFILL_RETRY_S)
        finally:
            if not joined and spec is not None:  # part-way, or the pool closed meanwhile
                if streams is not None:
                    streams.close()
                await remove_quietly(self._api, spec.name, self._threads)
            self._starting -= 1
            self._wake.set()

    def _safely_prepared(self, warm: Warm) -> object | None:
        assert self._prepare is not None
        try:
            return self._prepare(warm)
        except Exception as e:  # a sandbox not made ready is removed; the pool goes on
            log.warning("could not prepare a warm sandbox: %s", e)
            return None

    def discard(self, warm: Warm, *, at_once: bool = False) -> None:
        """Kill and remove ``warm`` once calls settle, or ``at_once``."""
        warm.streams.close()
        self._after.remove(warm.spec.name, at_once=at_once)

    async def close(self) -> None:
        """Start no more sandboxes, let those being started finish (bounded), remove all."""
        self.closed = True
        with anyio.move_on_after(30):
            while self._starting:  # noqa: ASYNC110  # starts run in worker threads
                await anyio.sleep(0.05)
        await self.drain()

    async def drain(self) -> None:
        """Remove every warm sandbox, now."""
        doomed, self._ready = list(self._ready), deque()
        async with anyio.create_task_group() as tg:
            for warm in doomed:
                warm.streams.close()
                tg.start_soon(remove_quietly, self._api, warm.spec.name, self._threads)


async def run_warm(
    api: Engine,
    warm: Warm,
    plan: RunPlan,
    cwd: str,
    keep_bytes: int,
    threads: CapacityLimiter,
) -> RawRun:
    """One call in a warm sandbox. The caller discards the sandbox afterwards.

    Raises StaleSandbox when the stub refused the call before running it.
    """
    nonce = secrets.token_hex(16)
    out, err = StreamCapture(keep_bytes, KEPT_BYTES), StreamCapture(keep_bytes, KEPT_BYTES)
    watch_live(out, err)
    watches = {1: EndWatch(nonce, out), 2: EndWatch(nonce, err)}
    stdin_b64 = base64.b64encode(plan.stdin) if plan.stdin is not None else None
    request = encode_request(nonce, plan.argv, cwd or WORKDIR, stdin_b64, report_usage=True)
    pumped = threading.Event()
    pumping = threading.Event()

    def sink(stream: int, chunk: bytes) -> bool:
        watches.get(stream, watches[2]).feed(chunk)
        return all(w.ended for w in watches.values()) or past_stop(out, err)

    # A small request on a plain socket is written at once, and the event loop reads the
    # answer. Otherwise (stdin, TLS) a writer thread and a reader thread, so that neither
    # side waits on the other.
    on_loop = len(request) <= _INLINE_REQUEST_BYTES and warm.streams.on_loop

    def pump() -> None:
        pumping.set()
        try:
            warm.streams.pump(sink)
        finally:
            pumped.set()

    if not on_loop:
        threading.Thread(target=warm.streams.send_stdin, args=(request,), daemon=True).start()
    started = time.monotonic()
    with anyio.move_on_after(plan.limits.timeout_s) as deadline:
        if on_loop:
            warm.streams.send_stdin(request)
            await warm.streams.pump_on_loop(sink)
        else:
            await to_thread.run_sync(pump, limiter=threads, abandon_on_cancel=True)
    duration_ms = int((time.monotonic() - started) * 1000)
    timed_out = deadline.cancelled_caught
    exit_code = watches[1].exit_code if watches[1].ended else None
    if exit_code == STALE_CODE and not timed_out:
        raise StaleSandbox(warm.spec.name)
    oom = watches[1].oom
    if not timed_out and not watches[1].ended and past_stop(out, err):
        oom = await stop_flooded(api, warm.spec.name, warm.streams, err, threads)
        exit_code = None
    elif timed_out:
        await step(threads, "stop the sandbox", api.kill, warm.spec.name)
        if pumping.is_set():
            await to_thread.run_sync(pumped.wait, 10.0, limiter=threads, abandon_on_cancel=True)
        exit_code = None
    elif not watches[1].ended:
        # The stub never wrote its marker (the program killed it): the exit is the answer.
        for w in watches.values():
            w.flush()
        state = await step(threads, "wait for the sandbox", api.wait, warm.spec.name)
        exit_code, oom = state.exit_code, state.oom_killed
    if exit_code == 137 and not oom:
        # SIGKILL: the memory limit, or the program's own kill. The daemon records OOM on
        # the container once it has exited, and the stub exits right after its marker.
        with anyio.move_on_after(5):
            state = await to_thread.run_sync(
                api.wait, warm.spec.name, limiter=threads, abandon_on_cancel=True
            )
            oom = state.oom_killed
    elif timed_out:
        oom = await step(threads, "inspect the sandbox", api.oom_killed, warm.spec.name)
    usage = watches[1].usage
    return RawRun(
        out, err, exit_code, timed_out, oom, duration_ms, warm.spec.name, pooled=True, usage=usage
    )
