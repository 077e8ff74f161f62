"""What a workspace mode costs: ``shell("true")`` in ro, copy and rw, by workspace size.

Builds workspaces of a few sizes in a temporary directory (source-like files of 8 KiB and
a few 1 MiB blobs), starts one server per workspace with every mode enabled, and times the
call end to end through the SDK's ``Client``. Prints the p50 per mode and size, and the
copy cost per MiB (the slope between the smallest and the largest workspace).

Usage: ``python benchmarks/workspace_copy.py [--sizes 1,16,64,128] [--n 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

from mcp_sandbox.constants import MIB

MODES = ("ro", "copy", "rw")


def build(root: Path, mib: int) -> None:
    """``mib`` MiB: half in 8 KiB source-like files, half in 1 MiB blobs."""
    small = mib * MIB // 2 // 8192
    for i in range(small):
        d = root / f"pkg{i // 200}"
        d.mkdir(exist_ok=True)
        (d / f"mod{i}.py").write_bytes(os.urandom(4096).hex().encode())
    for i in range(mib // 2):
        (root / f"blob{i}.bin").write_bytes(os.urandom(MIB))


async def measure(root: Path, n: int) -> dict[str, float]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "MCP_SANDBOX_LOG_LEVEL": "WARNING",
        "MCP_SANDBOX_WORKSPACE": str(root),
        "MCP_SANDBOX_WORKSPACE_POLICY__MODES": json.dumps(list(MODES)),
        "MCP_SANDBOX_WORKSPACE_POLICY__COPY_MAX_MIB": "4096",
    }
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_sandbox", "serve"], env=env
    )
    out: dict[str, float] = {}
    async with Client(params) as client:
        for mode in MODES:
            await client.call_tool("shell", {"command": "true", "workspace": mode})  # warm-up
            ms = []
            for _ in range(n):
                start = time.perf_counter()
                result = await client.call_tool("shell", {"command": "true", "workspace": mode})
                ms.append((time.perf_counter() - start) * 1000)
                if result.is_error:
                    raise RuntimeError(result.content)
            out[mode] = statistics.median(ms)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,16,64,128")
    parser.add_argument("--n", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = {}
    for mib in sizes:
        with tempfile.TemporaryDirectory(prefix="mcp-sandbox-bench-") as tmp:
            build(Path(tmp), mib)
            rows[mib] = await measure(Path(tmp), args.n)
        print(f"{mib:>5} MiB  " + "  ".join(f"{m} {rows[mib][m]:7.0f} ms" for m in MODES))
    lo, hi = min(sizes), max(sizes)
    if hi > lo:
        for mode in ("copy", "rw"):
            slope = (rows[hi][mode] - rows[lo][mode]) / (hi - lo)
            print(f"{mode}: {slope:.1f} ms per MiB; {rows[lo][mode] - rows[lo]['ro']:.0f} ms fixed")


if __name__ == "__main__":
    anyio.run(main)
