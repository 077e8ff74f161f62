"""One cold container's life against the fake engine: every outcome, and no container left
on any path (an error at any step, a cancelled call)."""

from __future__ import annotations

import anyio
import pytest

from fake_engine import FakeEngine, Script
from mcp_sandbox.errors import SandboxUnavailable
from mcp_sandbox.output import shaping
from mcp_sandbox.policy.limits import Limits, RunPlan
from mcp_sandbox.sandbox.runner import RawRun, run_once
from mcp_sandbox.sandbox.spec import ContainerSpec, build_spec


def spec(timeout_s: float = 5.0, run_id: str = "0123456789ab") -> ContainerSpec:
    plan = RunPlan(argv=("sh", "-c", "x"), limits=Limits(timeout_s=timeout_s), stdin=None)
    return build_spec(
        plan,
        image="img:1",
        run_id=run_id,
        owner="host:1:2",
        seccomp_json="{}",
        extra_env={},
        runtime=None,
    )


async def run(engine: FakeEngine, s: ContainerSpec | None = None) -> RawRun:
    with anyio.fail_after(10):
        return await run_once(engine, s or spec(), None, 4096, anyio.CapacityLimiter(8))


async def test_an_exit_is_a_result_with_its_code_and_output() -> None:
    engine = FakeEngine(Script(stdout=b"hi\n", stderr=b"warn\n", exit_code=3))
    raw = await run(engine)
    assert (raw.exit_code, raw.timed_out, raw.oom_killed) == (3, False, False)
    assert raw.stdout.total == 3 and raw.stderr.total == 5
    assert engine.leftovers() == [] and engine.removed == [raw.container]


async def test_a_hang_times_out_is_killed_and_removed() -> None:
    engine = FakeEngine(Script(hang=True))
    raw = await run(engine, spec(timeout_s=0.2))
    assert raw.timed_out and raw.exit_code is None and not raw.oom_killed
    assert f"kill {raw.container}" in engine.calls
    assert engine.leftovers() == []


async def test_an_oom_kill_is_reported_as_oom_killed() -> None:
    engine = FakeEngine(Script(oom=True))
    raw = await run(engine)
    assert raw.oom_killed and raw.exit_code == 137 and not raw.timed_out
    assert engine.leftovers() == []


async def test_a_flood_is_stopped_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shaping, "STOP_BYTES", 1 << 20)
    engine = FakeEngine(Script(flood=True))
    raw = await run(engine)
    assert not raw.timed_out and raw.exit_code is None
    assert raw.stdout.total > 1 << 20
    assert f"kill {raw.container}" in engine.calls
    assert engine.leftovers() == []


@pytest.mark.parametrize("step", ["create", "attach", "start", "wait", "inspect"])
async def test_a_daemon_error_at_any_step_raises_and_leaves_nothing(step: str) -> None:
    # "inspect" fails only after the deadline: the hang makes the runner ask.
    engine = FakeEngine(Script(hang=step == "inspect", fail_at=frozenset({step})))
    with pytest.raises(SandboxUnavailable, match="scripted"):
        await run(engine, spec(timeout_s=0.2))
    assert engine.leftovers() == []
    assert engine.removed == ["mcp-sandbox-0123456789ab"]


async def test_a_cancelled_call_still_removes_its_container() -> None:
    engine = FakeEngine(Script(hang=True))
    async with anyio.create_task_group() as tg:
        tg.start_soon(run, engine)
        with anyio.fail_after(5):
            while not engine.calls or not engine.calls[-1].startswith("start"):  # noqa: ASYNC110  # the fake records from a thread
                await anyio.sleep(0.005)
        tg.cancel_scope.cancel()
    assert engine.leftovers() == []
    assert engine.removed == ["mcp-sandbox-0123456789ab"]


async def test_dispose_takes_the_removal_of_an_ended_run() -> None:
    engine = FakeEngine()
    handed: list[str] = []
    with anyio.fail_after(10):
        raw = await run_once(engine, spec(), None, 4096, anyio.CapacityLimiter(8), handed.append)
    assert handed == [raw.container] and engine.removed == []
    engine.remove(raw.container)
    assert engine.leftovers() == []
