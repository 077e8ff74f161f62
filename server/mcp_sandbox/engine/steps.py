"""One container's life, create to remove: cleanup on every path, whatever happens."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, TypeVarTuple, Unpack

import anyio
from anyio import CapacityLimiter, to_thread

from mcp_sandbox.engine.backend import Engine
from mcp_sandbox.errors import SandboxUnavailable

# Our own steps (create, start, reap) get these bounds; the user's deadline is separate.
STEP_TIMEOUT_S = 60.0
REMOVE_TIMEOUT_S = 20.0

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


async def step(
    threads: CapacityLimiter,
    what: str,
    fn: Callable[[Unpack[Ts]], T],
    *args: *Ts,
    bound_s: float = STEP_TIMEOUT_S,
) -> T:
    """One of our own blocking steps, in a worker thread, failing clearly past ``bound_s``."""
    try:
        with anyio.fail_after(bound_s):
            return await to_thread.run_sync(fn, *args, limiter=threads, abandon_on_cancel=True)
    except TimeoutError:
        raise SandboxUnavailable(f"could not {what} within {bound_s:g} s") from None


async def remove_quietly(api: Engine, name: str, threads: CapacityLimiter) -> None:
    """Force-remove ``name``; shielded and bounded, so a cancelled call still cleans up."""
    with anyio.move_on_after(REMOVE_TIMEOUT_S, shield=True):
        try:
            await to_thread.run_sync(api.remove, name, limiter=threads, abandon_on_cancel=True)
        except SandboxUnavailable:
            pass  # the start-up reaper removes what is left
