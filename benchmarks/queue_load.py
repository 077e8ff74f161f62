"""Throughput and queue times under the load of issue 19: calls past the slots, some cancelled.

``--calls`` calls of ``run_code(python)`` (a print, a 5 s sleep cut by the 1 s timeout, a
100 kB print), ``--concurrency`` at a time, against a stdio server with ``--slots`` sandbox
slots; a fifth of them cancelled by the client after 0.05 to 1.5 s. Prints calls/s, how the
calls ended (results, cancels, "host busy" and other errors) and the queue times the results
report (``queued_ms``: p50, p90, max). tests/integration/test_load.py checks the same load's
correctness (no error, nothing left); this measures it. Nothing is asserted.

Usage: ``python benchmarks/queue_load.py [--calls 160] [--concurrency 8] [--slots 4]``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

SNIPPETS = ("print(1)", "import time; time.sleep(5)", "print('x' * 100_000)")


def percentile(values: list[int], q: float) -> int:
    """Nearest rank, q in (0, 1]; 0 for no values."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))] if ordered else 0


async def run(calls: int, concurrency: int, slots: int, seed: int) -> None:
    rng = random.Random(seed)
    plan = [
        (rng.choice(SNIPPETS), rng.random() < 0.2, rng.uniform(0.05, 1.5)) for _ in range(calls)
    ]
    queued: list[int] = []
    ended = {"result": 0, "cancelled": 0, "host busy": 0, "other error": 0}
    with tempfile.TemporaryDirectory(prefix="mcp-sandbox-bench-") as tmp:
        workspace = Path(tmp)
        await anyio.Path(workspace).chmod(0o755)  # the sandbox user (65534) enters /workspace
        params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "mcp_sandbox", "serve", "--workspace", str(workspace)],
            env={
                **os.environ,
                "MCP_SANDBOX_LOG_LEVEL": "ERROR",
                "MCP_SANDBOX_MAX_CONCURRENT": str(slots),
                "MCP_SANDBOX_AUDIT__PATH": str(workspace / "audit.jsonl"),
            },
        )

        async with Client(params, read_timeout_seconds=600) as client:
            todo = iter(plan)

            async def one(code: str, cancel: bool, after_s: float) -> None:
                args: dict[str, Any] = {"language": "python", "code": code, "timeout_s": 1}
                with anyio.move_on_after(after_s if cancel else 600) as scope:
                    result = await client.call_tool("run_code", args)
                if scope.cancelled_caught:
                    ended["cancelled"] += 1
                elif result.is_error:
                    text = str(getattr(result.content[0], "text", ""))
                    ended["host busy" if "host busy" in text else "other error"] += 1
                else:
                    ended["result"] += 1
                    assert result.structured_content is not None
                    queued.append(int(result.structured_content["queued_ms"]))

            async def worker() -> None:
                for code, cancel, after_s in todo:
                    await one(code, cancel, after_s)

            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(concurrency):
                    tg.start_soon(worker)
            elapsed = time.perf_counter() - started
    print(f"{calls} calls, concurrency {concurrency}, {slots} slots, {os.cpu_count()} cores")
    print(f"{elapsed:.1f} s, {calls / elapsed:.2f} calls/s")
    print(", ".join(f"{k}: {v}" for k, v in ended.items()))
    print(
        f"queued_ms p50 {percentile(queued, 0.5)}, p90 {percentile(queued, 0.9)}, "
        f"max {max(queued, default=0)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=160)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--seed", type=int, default=19)
    a = parser.parse_args()
    anyio.run(run, a.calls, a.concurrency, a.slots, a.seed)


if __name__ == "__main__":
    main()
