"""The warm pool against the fake engine: it fills, each sandbox serves one call, one that
died or failed to start is retired, and shutting down leaves nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import anyio
import pytest

from fake_engine import FakeEngine, Script
from mcp_sandbox.policy.limits import Limits, RunPlan
from mcp_sandbox.sandbox import after_reply
from mcp_sandbox.sandbox.after_reply import AfterReply
from mcp_sandbox.sandbox.pool import Warm, WarmPool, run_warm
from mcp_sandbox.sandbox.spec import ContainerSpec, build_spec
from mcp_sandbox.sandbox.warm import STUB_ARGV

LIMITS = Limits(timeout_s=5)


def warm_spec(run_id: str, image: str = "img:1") -> ContainerSpec:
    plan = RunPlan(argv=STUB_ARGV, limits=LIMITS, stdin=None)
    spec = build_spec(
        plan,
        image=image,
        run_id=run_id,
        owner="host:1:2",
        seccomp_json="{}",
        extra_env={},
        runtime=None,
    )
    return replace(spec, stdin=True)


async def until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(5):
        while not condition():  # noqa: ASYNC110  # the fake changes from worker threads
            await anyio.sleep(0.005)


@asynccontextmanager
async def running_pool(
    engine: FakeEngine,
    size: int = 2,
    *,
    max_size: int | None = None,
    after: AfterReply | None = None,
    **kw: Any,
) -> AsyncIterator[WarmPool]:
    threads = anyio.CapacityLimiter(16)
    after = after or AfterReply(engine, threads)
    pool = WarmPool(
        engine,
        threads,
        warm_spec,
        after,
        min_size=size,
        max_size=size if max_size is None else max_size,
        may_start=lambda: True,
        **kw,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(after.run)
        tg.start_soon(pool.run)
        yield pool
        await pool.close()
        tg.cancel_scope.cancel()


async def test_the_pool_fills_to_its_size_and_shutdown_leaves_nothing() -> None:
    engine = FakeEngine()
    async with running_pool(engine) as pool:
        await until(lambda: pool.ready == 2)
        assert len(engine.live()) == 2
        assert all(engine.box(n).running for n in engine.live())
    assert engine.leftovers() == []


async def test_a_warm_sandbox_serves_one_call_then_is_removed() -> None:
    engine = FakeEngine(Script(stdout=b"42\n", exit_code=0))
    threads = anyio.CapacityLimiter(8)
    async with running_pool(engine) as pool:
        await until(lambda: pool.ready == 2)
        warm = pool.take(warm_spec("cold00000000"))
        assert warm is not None
        plan = RunPlan(argv=("python3", "-c", "print(42)"), limits=LIMITS, stdin=None)
        with anyio.fail_after(5):
            raw = await run_warm(engine, warm, plan, "", 4096, threads)
        assert raw.pooled and raw.exit_code == 0 and raw.stdout.total == 3
        pool.discard(warm)
        await until(lambda: warm.spec.name in engine.removed)
        await until(lambda: pool.ready == 2)  # refilled with a new one
        assert warm.spec.name not in engine.live()
    assert engine.leftovers() == []


async def test_a_sandbox_of_another_shape_is_never_used() -> None:
    engine = FakeEngine()
    async with running_pool(engine, size=1) as pool:
        await until(lambda: pool.ready == 1)
        [stale] = engine.live()
        assert pool.take(warm_spec("cold00000000", image="other:2")) is None
        await until(lambda: stale in engine.removed)
    assert engine.leftovers() == []


async def test_a_sandbox_that_died_while_it_waited_is_retired() -> None:
    engine = FakeEngine()
    async with running_pool(engine, size=1) as pool:
        await until(lambda: pool.ready == 1)
        [dead] = engine.live()
        engine.die(dead)
        assert pool.take(warm_spec("cold00000000")) is None
        await until(lambda: dead in engine.removed)
    assert engine.leftovers() == []


@pytest.mark.parametrize("step", ["create", "attach", "start"])
async def test_a_start_that_fails_is_removed_and_retried(step: str) -> None:
    engine = FakeEngine(scripts=[Script.failing(step)])
    async with running_pool(engine, size=1) as pool:
        await until(lambda: pool.ready == 1)
        first = str(engine.created[0][0]["name"])
        assert first in engine.removed and first not in engine.live()
    assert engine.leftovers() == []


async def test_a_pool_whose_sandboxes_keep_dying_gives_up() -> None:
    engine = FakeEngine()
    async with running_pool(engine, size=1, give_up_after=3) as pool:
        for _ in range(3):
            await until(lambda: pool.ready == 1)
            for name in engine.live():
                engine.die(name)
            assert pool.take(warm_spec("cold00000000")) is None
        await anyio.sleep(0.3)
        assert pool.given_up and pool.ready == 0 and pool.starting == 0
    assert engine.leftovers() == []


async def test_what_prepare_gives_travels_with_the_sandbox_and_a_failure_retires_it() -> None:
    engine = FakeEngine()
    seen: list[str] = []

    def prepare(warm: Warm) -> object | None:
        seen.append(warm.spec.name)
        if len(seen) == 1:
            raise OSError("the stream is gone")  # logged; the sandbox goes
        warm.streams.send(b"copy")
        return ("prepared", warm.spec.name)

    async with running_pool(engine, size=1, prepare=prepare) as pool:
        await until(lambda: pool.ready == 1)
        warm = pool.take(warm_spec("cold00000000"))
        assert warm is not None and warm.prepared == ("prepared", warm.spec.name)
        assert engine.box(warm.spec.name).sent_before == b"copy"
        await until(lambda: seen[0] in engine.removed)
        pool.discard(warm)


async def test_once_a_call_found_the_pool_empty_refills_no_longer_wait_for_calls_to_settle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A refill waits for a quiet moment (at most MAX_DEFER_S) while the pool still had a
    # sandbox for the next call; once calls go cold, waiting only sends more of them cold.
    monkeypatch.setattr(after_reply, "MAX_DEFER_S", 60.0)  # a deferred refill: never, here
    engine = FakeEngine()
    after = AfterReply(engine, anyio.CapacityLimiter(16))
    async with running_pool(engine, size=1, max_size=2, after=after) as pool:
        await until(lambda: pool.ready == 1)
        with after.call():  # a call runs all along
            warm = pool.take(warm_spec("cold00000000"))
            assert warm is not None
            assert not pool.starved
            assert pool.take(warm_spec("cold00000001")) is None  # this one goes cold
            assert pool.starved
            # Both refills (the first take's too: the pool saw both takes at once) ran while
            # the call still runs.
            await until(lambda: pool.ready == 2)
            pool.discard(warm, at_once=True)
    assert engine.leftovers() == []


async def test_only_failures_in_a_row_make_a_pool_give_up() -> None:
    engine = FakeEngine()
    async with running_pool(engine, size=1, give_up_after=3) as pool:
        for _ in range(2):
            pool.failed()  # a stub refused its call, say
        pool.served()
        for _ in range(2):
            pool.failed()
        assert not pool.given_up
        pool.failed()
        assert pool.given_up
    assert engine.leftovers() == []
