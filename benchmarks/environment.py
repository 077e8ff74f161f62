"""What a project environment costs: one build, and a call with it mounted against one without.

Serves the integration test's local index (h2's test dependencies, real wheels downloaded
once by pip on the host) in a container on an internal network of its own, then:

- ``mcp-sandbox env build`` of h2's sdist: wall time, size;
- ``shell("true")`` on a server whose workspace is that project, cold (pool off) and warm
  (pool on), before the build (no environment) and after it (mounted at /env). Warm calls
  are spaced so the pool has refilled before the next timed one.

Usage: ``python benchmarks/environment.py [--n 10]``. Prints p50 and p90 in ms. Nothing is
asserted; everything it made is removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from integration.package_index import fetch

IMAGE = "mcp-sandbox-runtime:0.1"


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def env_cli(action: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "mcp_sandbox", "env", action]
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)


def remove(*args: str) -> None:
    subprocess.run(["docker", *args], capture_output=True, check=False)


def server_env(ip: str, network: str, workspace: Path, pool: bool) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "MCP_SANDBOX_LOG_LEVEL": "WARNING",
        "MCP_SANDBOX_WORKSPACE": str(workspace),
        "MCP_SANDBOX_POOL__ENABLED": "true" if pool else "false",
        "MCP_SANDBOX_AUDIT__PATH": str(workspace.parent / "audit.jsonl"),
        "MCP_SANDBOX_ENVIRONMENT__PIP_INDEX_URL": "http://index.test/simple",
        "MCP_SANDBOX_ENVIRONMENT__INDEXES": '["index.test"]',
        "MCP_SANDBOX_EGRESS__HOSTS": f'{{"index.test": "{ip}"}}',
        "MCP_SANDBOX_EGRESS__OPENED_CIDRS": f'["{ip}/32"]',
        "MCP_SANDBOX_EGRESS__OUTBOUND_NETWORK": network,
    }


async def calls(env: dict[str, str], n: int, pooled: bool) -> tuple[list[float], str, int]:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "mcp_sandbox", "serve"], env=env
    )
    times, state, warm = [], "", 0
    async with Client(params) as client:
        for i in range(n + 1):
            if pooled:
                await anyio.sleep(2.0)  # untimed: the pool refills
            t = time.perf_counter()
            result = await client.call_tool("shell", {"command": "true"})
            ms = (time.perf_counter() - t) * 1000
            sc = result.structured_content or {}
            state = sc.get("environment", {}).get("state", "")
            if i:  # the first call warms the server up
                times.append(ms)
                warm += bool(sc.get("pooled"))
    return times, state, warm


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=10)[int(q * 10) - 1] if len(values) > 1 else values[0]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10)
    n = ap.parse_args().n
    sdist, root = fetch()
    tag = uuid.uuid4().hex[:8]
    network, index = f"mcp-sandbox-bench-envnet-{tag}", f"mcp-sandbox-bench-envidx-{tag}"
    tmp = Path(tempfile.mkdtemp(prefix="mcp-sandbox-bench-env-"))
    project = tmp / "h2"
    shutil.copytree(sdist, project)
    docker("network", "create", "--internal", "--label", "mcp-sandbox.bench=env", network)
    try:
        docker(
            "run", "-d", "--name", index, "--label", "mcp-sandbox.bench=env", "--network",
            network, "--read-only", "--cap-drop", "ALL", "-v", f"{root}:/srv:ro", IMAGE,
            "python3", "-m", "http.server", "80", "--directory", "/srv",
        )  # fmt: skip
        fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        ip = docker("inspect", "-f", fmt, index).strip()
        rows = []
        for pooled in (False, True):
            times, state, warm = await calls(server_env(ip, network, project, pooled), n, pooled)
            rows.append((f"shell(true) {'warm' if pooled else 'cold'}, {state}", times, warm))
        t = time.perf_counter()
        built = env_cli("build", server_env(ip, network, project, False), project)
        assert built.returncode == 0, built.stderr
        build_s = time.perf_counter() - t
        for pooled in (False, True):
            times, state, warm = await calls(server_env(ip, network, project, pooled), n, pooled)
            rows.append((f"shell(true) {'warm' if pooled else 'cold'}, {state}", times, warm))
        print(f"env build of h2 4.2.0 (CLI, wall): {build_s:.1f} s; {built.stdout.splitlines()[0]}")
        print(f"{'path':34} {'p50 ms':>8} {'p90 ms':>8} {'warm':>6}")
        for name, times, warm in rows:
            print(f"{name:34} {p(times, 0.5):8.0f} {p(times, 0.9):8.0f} {warm:>3}/{len(times)}")
    finally:
        env_cli("rm", server_env("127.0.0.1", network, project, False), project)
        remove("rm", "-f", index)
        remove("network", "rm", network)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    anyio.run(main)
