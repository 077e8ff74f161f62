"""A scrub has a time budget and runs without the GIL: a rule that turns out slow on some
text (two were quadratic) costs that call its output, never the server its event loop."""

from __future__ import annotations

import itertools
import threading
import time

import anyio
import pytest
import regex

from fake_engine import FakeEngine, Script
from mcp_sandbox.app import make_service
from mcp_sandbox.config.settings import Settings
from mcp_sandbox.output import scrubber as secrets_mod
from mcp_sandbox.output.scrubber import RULES, TIMEOUT_MARKER, Scrubber
from mcp_sandbox.policy.arguments import ShellArgs

# The Authorization rule as it was when it was quadratic: a stand-in for the next rule that
# turns out slow on some text.
_QUADRATIC = (
    r"authorization[\"']?[ \t]*[:=][ \t]*[\"']?(?P<secret>(?:[a-z0-9._~+/=-]+[ \t]+)?"
    r"[a-z0-9._~+/=-]{8,})(?![a-z0-9._~+/=-])(?![ \t]*\[redacted:)"
)
SLOW_TEXT = "authorization=" * 6000 + " [redacted:"


@pytest.fixture(autouse=True)
def slow_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    index = next(i for i, r in enumerate(RULES) if r.kind == "http-authorization")
    compiled = list(secrets_mod._COMPILED)
    compiled[index] = regex.compile(_QUADRATIC)
    monkeypatch.setattr(secrets_mod, "_COMPILED", tuple(compiled))
    monkeypatch.setattr(secrets_mod, "SCRUB_BUDGET_S", 0.3)


def test_a_slow_scrub_is_cut_at_its_budget_and_withholds_the_text() -> None:
    ticks = 0
    done = threading.Event()

    def tick() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    ticker.start()
    started = time.perf_counter()
    try:
        out = Scrubber().scrub(SLOW_TEXT + "Authorization: Bearer abcdefghijkl")
    finally:
        done.set()
        ticker.join()
    assert out == TIMEOUT_MARKER  # fails closed: nothing of it shown
    assert time.perf_counter() - started < 3.0  # unbounded, this takes about 15 s
    assert ticks > 20  # matching let go of the GIL: other threads ran meanwhile


async def test_a_slow_scrub_of_output_leaves_the_event_loop_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(secrets_mod, "SCRUB_BUDGET_S", 0.6)
    service = make_service(Settings(), FakeEngine(Script(stdout=SLOW_TEXT.encode())))
    beats: list[float] = []

    async def beat() -> None:
        while True:
            beats.append(time.perf_counter())
            await anyio.sleep(0.005)

    async with anyio.create_task_group() as tg:
        tg.start_soon(beat)
        result = await service.shell(ShellArgs(command="print it"))
        await anyio.sleep(0.05)  # a beat after the reply: a block just before it shows
        tg.cancel_scope.cancel()
    assert TIMEOUT_MARKER in result.stdout and "authorization=" not in result.stdout
    # On the loop, a scrub would have stopped it for its whole budget at least once.
    longest = max(b - a for a, b in itertools.pairwise(beats))
    assert longest < 0.3, longest
