"""The queue for sandbox slots: its own limit, its place told, a cancelled call gone at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from fake_engine import FakeEngine, Script
from mcp_sandbox.app import make_service
from mcp_sandbox.config.settings import Settings
from mcp_sandbox.errors import HostBusy
from mcp_sandbox.policy.arguments import ShellArgs
from mcp_sandbox.sandbox.slots import QueuePlace, SlotQueue
from mcp_sandbox.transport.tools import build_server


def _always() -> bool:
    return True


async def _until(check: Any, within: float = 5) -> None:
    with anyio.fail_after(within):
        while not check():  # noqa: ASYNC110  # the checks read plain state
            await anyio.sleep(0.01)


async def test_a_waiting_call_hears_its_place_as_it_moves_up() -> None:
    queue = SlotQueue(1, _always)
    heard: dict[str, list[int]] = {"b": [], "c": []}
    held = anyio.Event()
    free = anyio.Event()

    async def holder() -> None:
        async with queue.slot(5):
            held.set()
            await free.wait()

    async def waiter(name: str) -> None:
        async def on_wait(place: QueuePlace) -> None:
            heard[name].append(place.position)

        async with queue.slot(5, on_wait) as queued_ms:
            assert queued_ms >= 0

    async with anyio.create_task_group() as tg:
        tg.start_soon(holder)
        await held.wait()
        tg.start_soon(waiter, "b")
        await _until(lambda: heard["b"])
        tg.start_soon(waiter, "c")
        await _until(lambda: heard["c"])
        assert queue.waiting == 2
        free.set()
    assert heard["b"] == [1]
    assert heard["c"][:2] == [2, 1]
    assert queue.waiting == 0 and queue.busy == 0


async def test_a_call_with_a_free_slot_is_told_nothing() -> None:
    queue = SlotQueue(2, _always)
    heard: list[QueuePlace] = []

    async def on_wait(place: QueuePlace) -> None:
        heard.append(place)

    async with queue.slot(5, on_wait) as queued_ms:
        assert queue.busy == 1
    assert heard == [] and queued_ms < 1_000


async def test_a_cancelled_waiting_call_leaves_the_queue_at_once() -> None:
    queue = SlotQueue(1, _always)
    got: list[str] = []
    scope = anyio.CancelScope()

    async def gives_up() -> None:
        with scope:
            async with queue.slot(60):
                got.append("gave up")

    async def behind() -> None:
        async with queue.slot(60):
            got.append("behind")

    async with anyio.create_task_group() as tg:
        async with queue.slot(5):
            tg.start_soon(gives_up)
            await _until(lambda: queue.waiting == 1)
            tg.start_soon(behind)
            await _until(lambda: queue.waiting == 2)
            scope.cancel()
            await _until(lambda: queue.waiting == 1, within=0.1)
        # The slot goes to the call behind, not to the one that left.
    assert got == ["behind"]
    assert queue.waiting == 0 and queue.busy == 0


async def test_the_queue_timeout_is_host_busy_naming_its_setting() -> None:
    queue = SlotQueue(1, _always)
    async with queue.slot(5):
        with pytest.raises(HostBusy, match=r"stayed busy for 0\.1 s \(bounds\.queue_timeout_s\)"):
            async with queue.slot(0.1):
                pass
        assert queue.waiting == 0
    assert queue.busy == 0


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    return Settings(
        max_concurrent=1,
        pool={"enabled": False},
        audit={"path": tmp_path / "audit.jsonl"},
        workspace=tmp_path / "ws",
        **kw,
    )


async def test_a_call_may_queue_longer_than_it_may_run(tmp_path: Path) -> None:
    """The slot wait is bounds.queue_timeout_s, not the call's own timeout_s."""
    (tmp_path / "ws").mkdir()
    api = FakeEngine(scripts=[Script(hang=True)])
    service = make_service(_settings(tmp_path), api)
    async with anyio.create_task_group() as tg:
        tg.start_soon(service.shell, ShellArgs(command="sleep 60", timeout_s=0.6))
        await _until(lambda: api.created)
        result = await service.shell(ShellArgs(command="true", timeout_s=0.1))
    assert result.queued_ms is not None and result.queued_ms >= 300
    assert not result.timed_out


async def test_progress_tells_a_waiting_tool_call_its_place(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    api = FakeEngine(scripts=[Script(hang=True)])
    service = make_service(_settings(tmp_path), api)
    messages: list[str] = []

    async def progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    async with Client(build_server(service)) as client, anyio.create_task_group() as tg:
        tg.start_soon(client.call_tool, "shell", {"command": "sleep 60", "timeout_s": 0.6})
        await _until(lambda: api.created)
        result = await client.call_tool("shell", {"command": "true"}, progress_callback=progress)
    assert not result.is_error
    assert result.structured_content is not None
    assert result.structured_content["queued_ms"] >= 300
    assert "waiting for a sandbox slot: 1 of 1 in the queue, all 1 slots busy" in messages


async def test_a_tool_call_cancelled_while_it_waits_leaves_the_queue(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    api = FakeEngine(scripts=[Script(hang=True)])
    service = make_service(_settings(tmp_path), api)
    async with Client(build_server(service)) as client, anyio.create_task_group() as tg:
        tg.start_soon(client.call_tool, "shell", {"command": "sleep 60", "timeout_s": 2})
        await _until(lambda: api.created)
        with anyio.move_on_after(0.3):
            await client.call_tool("shell", {"command": "true"})
        await _until(lambda: service.queue.waiting == 0)
        assert len(api.created) == 1
        api.die(api.live()[0])
