"""Progress messages: elapsed time and the last whole line, scrubbed, neutralised, short."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from mcp import Client

from fake_engine import FakeEngine, Script
from mcp_sandbox.app import make_service
from mcp_sandbox.config.settings import Settings
from mcp_sandbox.output.shaping import StreamCapture
from mcp_sandbox.sandbox.live import LiveRun
from mcp_sandbox.transport import progress as progress_mod
from mcp_sandbox.transport.progress import LINE_CHARS, progress_message
from mcp_sandbox.transport.tools import build_server


def _scrub(text: str) -> str:
    return text.replace("sk-SECRET-VALUE", "[redacted]")


def _live(out: bytes, err: bytes = b"") -> LiveRun:
    o, e = StreamCapture(10_000), StreamCapture(10_000)
    live = LiveRun(captures=(o, e))
    live.last_line()  # the first look: nothing has been written since
    o.feed(out)
    e.feed(err)
    return live


def test_the_message_is_the_elapsed_time_and_the_last_line() -> None:
    message = progress_message(_live(b"one\ntwo\n\n"), _scrub, 20)
    assert message.endswith(" s: two") and message.split(" s", 1)[0].isdigit()


def test_the_last_line_is_scrubbed_neutralised_and_short() -> None:
    line = b"key sk-SECRET-VALUE \x1b[2J" + b"x" * 5000 + b"\n"
    message = progress_message(_live(b"start\n" + line), _scrub, 20)
    assert "sk-SECRET" not in message and "\x1b" not in message
    assert len(message) <= LINE_CHARS + 10


def test_a_secret_cut_by_the_window_is_never_shown_in_part() -> None:
    # The last 1024 bytes start inside the secret: its end alone matches no rule.
    line = b"sk-SECRET-VALUE" + b"y" * 1015 + b"\n"
    message = progress_message(_live(line), _scrub, 20)
    assert "VALUE" not in message and message.endswith("yyy")


def test_no_output_yet_is_just_the_time() -> None:
    assert progress_message(LiveRun(), _scrub, 20).endswith(" s")


async def _until(check: Callable[[], object], within: float = 5) -> None:
    with anyio.fail_after(within):
        while not check():  # noqa: ASYNC110  # the checks read plain state
            await anyio.sleep(0.01)


async def test_a_queued_call_hears_its_place_then_its_last_line_on_one_growing_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#19's place in the queue and #18's running line share the call's progress token."""
    monkeypatch.setattr(progress_mod, "PROGRESS_AFTER_S", 0.05)
    monkeypatch.setattr(progress_mod, "PROGRESS_EVERY_S", 0.05)
    (tmp_path / "ws").mkdir()
    settings = Settings(
        max_concurrent=1,
        pool={"enabled": False},
        audit={"path": tmp_path / "audit.jsonl"},
        workspace=tmp_path / "ws",
    )
    line = Script(stdout=b"step one\nstep two\n", hang=True)
    api = FakeEngine(scripts=[Script(hang=True), line])
    service = make_service(settings, api)
    seen: list[tuple[float, str]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, message or ""))

    async with Client(build_server(service)) as client, anyio.create_task_group() as tg:
        tg.start_soon(client.call_tool, "shell", {"command": "sleep 60", "timeout_s": 0.5})
        await _until(lambda: api.created)
        result = await client.call_tool(
            "shell", {"command": "sleep 60", "timeout_s": 0.4}, progress_callback=on_progress
        )
    assert not result.is_error
    values = [v for v, _ in seen]
    assert values == sorted(values) and len(set(values)) == len(values)
    kinds = ["queue" if m.startswith("waiting for a sandbox slot") else "run" for _, m in seen]
    # While it waits, only its place; once it runs, only its time and its last line.
    assert kinds[0] == "queue" and "run" in kinds
    assert kinds == sorted(kinds, key=lambda k: k == "run")
    assert any(m.endswith(" s: step two") for _, m in seen)
