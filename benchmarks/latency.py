"""End-to-end latency of ``run_code(python, "print(1)")`` against plain ``docker run``.

Three paths, measured in one run and interleaved (one of each per iteration, after warm-ups)
so that daemon and page-cache drift hits all alike:

- ``run_code`` through the SDK's ``Client`` over stdio, one server session for the run;
- ``docker run --rm --network none IMAGE python3 -c "print(1)"`` of the same image;
- ``python -c "print(1)"`` on the host, with the interpreter running this script (a bare
  ``python3`` may be a version-manager shim that adds its own start-up): the floor.

Usage: ``python benchmarks/latency.py [--n 20] [--warmup 2] [--mode auto|legacy]``.
Prints one table (p50, p90 in ms, ratio to the docker run p50). No targets are asserted.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import anyio
from mcp import Client, StdioServerParameters

DEFAULT_IMAGE = "mcp-sandbox-runtime:0.1"
SNIPPET = "print(1)"
TEST_LABEL = "mcp-sandbox-test=1"

Mode = Literal["auto", "legacy"]


@dataclass
class Samples:
    path: str
    ms: list[float] = field(default_factory=list)

    def p(self, q: float) -> float:
        """Nearest-rank percentile, q in (0, 1]."""
        ordered = sorted(self.ms)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def timed(call: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await call()
    return (time.perf_counter() - start) * 1000


def check_output(path: str, done: subprocess.CompletedProcess[bytes]) -> None:
    if done.stdout != b"1\n":
        raise RuntimeError(f"{path} printed {done.stdout!r}, not 1")


def render(rows: list[Samples], baseline: Samples) -> str:
    base = baseline.p(0.5)
    width = max(len(r.path) for r in rows)
    lines = [f"{'path':<{width}}  {'p50 ms':>8}  {'p90 ms':>8}  {'x docker p50':>12}"]
    lines += [
        f"{r.path:<{width}}  {r.p(0.5):>8.1f}  {r.p(0.9):>8.1f}  {r.p(0.5) / base:>12.2f}"
        for r in rows
    ]
    return "\n".join(lines)


async def bench(n: int, warmup: int, mode: Mode, image: str) -> str:
    prefix = f"mcp-sandbox-bench-{os.getpid()}"
    counter = 0

    async def docker_run() -> None:
        nonlocal counter
        counter += 1
        argv = ["docker", "run", "--rm", "--network", "none", "--label", TEST_LABEL]
        argv += ["--name", f"{prefix}-{counter}", image, "python3", "-c", SNIPPET]
        check_output("docker run", await anyio.run_process(argv, check=True))

    async def host_python() -> None:
        check_output("host python", await anyio.run_process([sys.executable, "-c", SNIPPET]))

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_sandbox", "serve"],
        # One INFO line per run would interleave with the table.
        env={**os.environ, "MCP_SANDBOX_LOG_LEVEL": "WARNING", "MCP_SANDBOX_IMAGE": image},
    )
    mcp_path = Samples(f"run_code via Client (stdio, {mode})")
    server_side = Samples("  server-reported duration_ms")
    docker = Samples("docker run --rm --network none")
    host = Samples("host python -c (floor)")
    try:
        async with Client(params, mode=mode, read_timeout_seconds=60) as client:

            async def run_code() -> None:
                result = await client.call_tool("run_code", {"language": "python", "code": SNIPPET})
                out = result.structured_content or {}
                if result.is_error or out.get("exit_code") != 0 or out.get("stdout") != "1\n":
                    raise RuntimeError(f"run_code failed: {result}")
                server_side.ms.append(float(out["duration_ms"]))

            for _ in range(warmup):
                await run_code()
                await docker_run()
                await host_python()
            server_side.ms.clear()
            for _ in range(n):
                mcp_path.ms.append(await timed(run_code))
                docker.ms.append(await timed(docker_run))
                host.ms.append(await timed(host_python))
    finally:
        # --rm removes each container; this catches one cut short by an interrupt.
        with anyio.CancelScope(shield=True):
            await remove_leftovers(prefix)
    return render([mcp_path, server_side, docker, host], baseline=docker)


async def remove_leftovers(prefix: str) -> None:
    listed = await anyio.run_process(
        ["docker", "ps", "-aq", "--filter", f"label={TEST_LABEL}", "--filter", f"name={prefix}-"],
        check=False,
    )
    ids = listed.stdout.decode().split()
    if ids:
        await anyio.run_process(["docker", "rm", "-f", *ids], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="timed iterations per path")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per path")
    parser.add_argument("--mode", choices=["auto", "legacy"], default="auto", help="Client mode")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="sandbox image for both paths")
    args = parser.parse_args()
    if args.n < 1 or args.warmup < 0:
        parser.error("--n must be >= 1 and --warmup >= 0")
    try:
        table = anyio.run(bench, args.n, args.warmup, args.mode, args.image)
    except subprocess.CalledProcessError as e:
        print(f"latency: {e}\n{e.stderr.decode(errors='replace')}", file=sys.stderr)
        return 1
    print(f"n={args.n} warmup={args.warmup} image={args.image} host python={sys.executable}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
