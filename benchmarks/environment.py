"""What a project environment costs: one build, and a call with it mounted against one without.

Serves the integration test's local index (h2's test dependencies, real wheels downloaded
once by pip on the host) in a container on an internal network of its own, then:

- ``mcp-sandbox env build`` of h2's sdist: wall time, size;
- ``shell("true")`` cold (pool off) and warm (pool on) on two servers, one per copy of the
  project: one copy has the environment (mounted at /env), the other none. Their calls
  alternate, so the host's drift taxes both alike; warm calls are spaced so the pool has
  refilled before the next timed one.

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
from contextlib import AsyncExitStack
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


async def interleaved(
    envs: dict[str, dict[str, str]], n: int, pooled: bool
) -> dict[str, tuple[list[float], str, int]]:
    """``shell("true")`` on one server per workspace, one call of each per round, so the
    host's load drift (other tenants) taxes both alike."""
    out: dict[str, tuple[list[float], str, int]] = {k: ([], "", 0) for k in envs}
    async with AsyncExitStack() as stack:
        clients = {}
        for name, env in envs.items():
            args = ["-m", "mcp_sandbox", "serve"]
            params = StdioServerParameters(command=sys.executable, args=args, env=env)
            clients[name] = await stack.enter_async_context(Client(params))
        for i in range(n + 1):
            for name, client in clients.items():
                if pooled:
                    await anyio.sleep(2.0)  # untimed: the pool refills
                t = time.perf_counter()
                result = await client.call_tool("shell", {"command": "true"})
                ms = (time.perf_counter() - t) * 1000
                sc = result.structured_content or {}
                times, _, warm = out[name]
                if i:  # the first round warms the servers up
                    times.append(ms)
                    warm += bool(sc.get("pooled"))
                out[name] = (times, sc.get("environment", {}).get("state", ""), warm)
    return out


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
    project, bare = tmp / "with-env" / "h2", tmp / "without" / "h2"
    shutil.copytree(sdist, project)
    shutil.copytree(sdist, bare)
    docker("network", "create", "--internal", "--label", "mcp-sandbox.bench=env", network)
    try:
        docker(
            "run", "-d", "--name", index, "--label", "mcp-sandbox.bench=env", "--network",
            network, "--read-only", "--cap-drop", "ALL", "-v", f"{root}:/srv:ro", IMAGE,
            "python3", "-m", "http.server", "80", "--directory", "/srv",
        )  # fmt: skip
        fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        ip = docker("inspect", "-f", fmt, index).strip()
        t = time.perf_counter()
        built = env_cli("build", server_env(ip, network, project, False), project)
        build_s = time.perf_counter() - t
        assert built.returncode == 0, built.stderr
        print(f"env build of h2 4.2.0 (CLI, wall): {build_s:.1f} s; {built.stdout.splitlines()[0]}")
        print(f"{'shell(true)':24} {'p50 ms':>8} {'p90 ms':>8} {'warm':>6}")
        for pooled in (False, True):
            envs = {
                "none": server_env(ip, network, bare, pooled),
                "ready": server_env(ip, network, project, pooled),
            }
            for name, (times, state, warm) in (await interleaved(envs, n, pooled)).items():
                label = f"{'warm' if pooled else 'cold'}, {state or name}"
                print(
                    f"{label:24} {p(times, 0.5):8.0f} {p(times, 0.9):8.0f} {warm:>3}/{len(times)}"
                )
    finally:
        # Removing needs no index: just the workspace (and this tree's code).
        keep = ("PATH", "HOME", "PYTHONPATH")
        plain = {k: v for k, v in os.environ.items() if k in keep}
        env_cli("rm", {**plain, "MCP_SANDBOX_WORKSPACE": str(project)}, project)
        remove("rm", "-f", index)
        remove("network", "rm", network)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    anyio.run(main)
