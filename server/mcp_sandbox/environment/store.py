"""The environments on the daemon: find one, remove one, reap what the rules doom."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import anyio
from anyio import CapacityLimiter, to_thread

from mcp_sandbox.constants import ENVIRONMENT_LABEL
from mcp_sandbox.engine.backend import ContainerInfo, Engine
from mcp_sandbox.engine.owners import owner_is_alive
from mcp_sandbox.engine.steps import step
from mcp_sandbox.environment.volumes import (
    DATA,
    KEY_LABEL,
    Environment,
    current,
    doomed,
    environment_key,
    seal_volume,
    sealed,
)
from mcp_sandbox.errors import SandboxUnavailable

REMOVE_BOUND_S = 20.0


async def environment_rows(api: Engine, threads: CapacityLimiter) -> list[ContainerInfo]:
    """Every volume of an environment (data and seals). Raises SandboxUnavailable."""
    rows = await step(threads, "list the environments", api.labelled_volumes)
    return [r for r in rows if r.labels.get(ENVIRONMENT_LABEL)]


async def find_environment(
    api: Engine, threads: CapacityLimiter, root: Path, image: str
) -> Environment | None:
    """The sealed environment calls of this workspace and image mount, if there is one."""
    rows = await environment_rows(api, threads)
    return current(rows, environment_key(str(root), image))


async def all_environments(api: Engine, threads: CapacityLimiter) -> list[Environment]:
    return sealed(await environment_rows(api, threads))


async def remove_volumes(api: Engine, threads: CapacityLimiter, names: list[str]) -> int:
    """Remove ``names`` in order, shielded; one still mounted by a call stays (reaped later)."""
    removed = 0
    for name in names:
        with anyio.move_on_after(REMOVE_BOUND_S, shield=True):
            with contextlib.suppress(SandboxUnavailable):
                await to_thread.run_sync(api.remove_volume, name, limiter=threads)
                removed += 1
    return removed


async def remove_environments(
    api: Engine, threads: CapacityLimiter, root: Path, image: str
) -> list[str]:
    """Remove every environment of this workspace and image, seals first (so none stays
    ready while its data goes); returns the data volumes it removed."""
    key = environment_key(str(root), image)
    rows = [r for r in await environment_rows(api, threads) if r.labels.get(KEY_LABEL) == key]
    data = [r.name for r in rows if r.labels.get(ENVIRONMENT_LABEL) == DATA]
    seals = [r.name for r in rows if r.name not in data]
    await remove_volumes(api, threads, seals)
    return [name for name in data if await remove_volumes(api, threads, [name])]


async def remove_superseded(api: Engine, threads: CapacityLimiter, key: str, keep: str) -> None:
    """After a new build of ``key``: the older builds go, seal first."""
    rows = await environment_rows(api, threads)
    older = [
        r.name
        for r in rows
        if r.labels.get(KEY_LABEL) == key
        and r.labels.get(ENVIRONMENT_LABEL) == DATA
        and r.name != keep
    ]
    for name in older:
        await remove_volumes(api, threads, [seal_volume(name), name])


async def reap_environments(api: Engine, threads: CapacityLimiter, max_age_s: float) -> int:
    """Remove half-built, superseded and old environments. Never raises."""
    try:
        rows = await environment_rows(api, threads)
    except SandboxUnavailable:
        return 0
    names = doomed(rows, now=time.time(), owner_alive=owner_is_alive, max_age_s=max_age_s)
    return await remove_volumes(api, threads, names)
