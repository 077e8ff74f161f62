"""Under load, calls queue for a slot instead of failing: 160 calls at concurrency 8 on 4 slots,
with random cancels and 1 s timeouts, end in results or cancels, never in "host busy", and
nothing is left. (benchmarks/queue_load.py measures the same load's throughput.)"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

from sandbox_client import (
    connect,
    containers_of,
    describe_labelled_containers,
    eventually,
    labelled_volumes,
    our_servers,
)

CALLS = 160
CONCURRENCY = 8
SLOTS = 4
# Each call is one of these, with a 1 s timeout; some are cancelled by the client mid-way.
SNIPPETS = ("print(1)", "import time; time.sleep(5)", "print('x' * 100_000)")


async def test_calls_past_the_slots_queue_instead_of_failing(tmp_path: Path) -> None:
    rng = random.Random(19)  # the same mix each run
    plan = [
        (rng.choice(SNIPPETS), rng.random() < 0.2, rng.uniform(0.05, 1.5)) for _ in range(CALLS)
    ]
    results: list[tuple[str, dict[str, Any]]] = []
    errors: list[str] = []
    cancelled = 0
    await anyio.Path(tmp_path).chmod(0o755)  # the sandbox user (65534) enters /workspace
    env = {"MCP_SANDBOX_MAX_CONCURRENT": str(SLOTS), "MCP_SANDBOX_WORKSPACE": str(tmp_path)}

    async def one(client: Client, code: str, cancel: bool, after_s: float) -> None:
        nonlocal cancelled
        args = {"language": "python", "code": code, "timeout_s": 1}
        with anyio.move_on_after(after_s if cancel else 600) as scope:
            result = await client.call_tool("run_code", args)
        if scope.cancelled_caught:
            cancelled += 1
            return
        if result.is_error:
            errors.append(result.content[0].text)  # type: ignore[union-attr]
            return
        assert result.structured_content is not None
        results.append((code, result.structured_content))

    before = our_servers()
    async with connect(env=env) as client:
        (server,) = our_servers() - before
        todo = iter(plan)

        async def worker() -> None:
            for code, cancel, after_s in todo:
                await one(client, code, cancel, after_s)

        with anyio.fail_after(600):
            async with anyio.create_task_group() as tg:
                for _ in range(CONCURRENCY):
                    tg.start_soon(worker)
    assert errors == []
    assert len(results) + cancelled == CALLS
    for code, r in results:
        if code == "print(1)":
            assert (r["exit_code"], r["stdout"]) == (0, "1\n"), r
    queued = sorted(r["queued_ms"] for _, r in results)
    assert all(isinstance(q, int) and q >= 0 for q in queued)
    # Twice the slots' worth of callers: calls did wait, and said so.
    assert queued[-1] > 0
    assert any(r["timed_out"] for _, r in results)
    print(
        f"\n{len(results)} results, {cancelled} cancelled; queued_ms p50 "
        f"{queued[len(queued) // 2]}, max {queued[-1]}"
    )
    # Removals still under way on a loaded daemon finish; none of this server's may stay
    # (the session's shared servers keep their warm ones meanwhile).
    await eventually(
        lambda: containers_of(server) == [], timeout_s=30, describe=describe_labelled_containers
    )
    assert labelled_volumes() == []
