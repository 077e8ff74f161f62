"""Where a pooled server's daemon work goes under load: Engine API requests per tool call.

A stdio server (pool on, a near-empty workspace, as ``latency.py``'s) runs with docker-py's
client counted: every HTTP request it sends to the daemon, by method and path (a container's
or volume's name shown as ``{}``), with the time it took, and every ``Engine`` method called.
``--concurrency`` clients call ``run_code(python, "print(1)")`` for ``--seconds``; what the
server sent meanwhile is divided by the calls made. Also the server's CPU per call (user +
system of its whole process) and, with ``--profile``, the event loop thread's hottest
functions (cProfile sees that thread only; docker-py's calls run in worker threads).

The server writes its counts when it gets SIGUSR1 (before and after the load phase), so the
start-up and warm-up are left out. Nothing is asserted.

Usage: ``python benchmarks/daemon_calls.py [--seconds 20] [--concurrency 4] [--profile
[tottime|cumulative]]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

SNIPPET = {"language": "python", "code": "print(1)"}
_OUT_VAR = "DAEMON_CALLS_OUT"  # not MCP_SANDBOX_*: that prefix is the server's config
_PROFILE_VAR = "DAEMON_CALLS_PROFILE"
# /v1.41/containers/NAME/start -> containers/{}/start; create and json stay as they are.
_OBJECT = re.compile(r"^/v[0-9.]+/(containers|volumes|networks|exec)/(?!create$|json$)[^/]+")


def request_key(method: str, path: str) -> str:
    """``POST containers/{}/start``: a request without the object's name or the version."""
    shaped = _OBJECT.sub(r"\1/{}", path)
    return f"{method} {re.sub(r'^/v[0-9.]+/', '', shaped)}"


def serve(argv: list[str]) -> int:
    """The server, counted: run as this script's ``--serve`` by the driver below."""
    import docker
    import requests

    from mcp_sandbox.cli import main
    from mcp_sandbox.engine.docker_api import DockerApi

    lock = threading.Lock()
    requests_n: Counter[str] = Counter()
    requests_s: defaultdict[str, float] = defaultdict(float)
    methods: Counter[str] = Counter()
    send = requests.Session.send

    def counted_send(self: Any, request: Any, **kwargs: Any) -> Any:
        from urllib.parse import urlsplit

        key = request_key(str(request.method), urlsplit(str(request.url)).path)
        start = time.perf_counter()
        try:
            return send(self, request, **kwargs)
        finally:
            with lock:
                requests_n[key] += 1
                requests_s[key] += time.perf_counter() - start

    docker.APIClient.send = counted_send  # type: ignore[method-assign]  # counting, a benchmark

    def counted(name: str, fn: Any) -> Any:
        def method(*args: Any, **kwargs: Any) -> Any:
            with lock:
                methods[name] += 1
            return fn(*args, **kwargs)

        return method

    for name, fn in list(vars(DockerApi).items()):
        if callable(fn) and not name.startswith("_"):
            setattr(DockerApi, name, counted(name, fn))

    profile = cProfile.Profile() if os.environ.get(_PROFILE_VAR) else None
    out = Path(os.environ[_OUT_VAR])
    snapshots: list[dict[str, Any]] = []

    def snapshot(_sig: int, _frame: object) -> None:
        cpu = os.times()
        with lock:
            snapshots.append(
                {
                    "cpu_s": cpu.user + cpu.system,
                    "requests": dict(requests_n),
                    "request_s": dict(requests_s),
                    "methods": dict(methods),
                }
            )
        if profile is not None:
            if len(snapshots) == 1:
                profile.enable()
            elif len(snapshots) == 2:
                profile.disable()
                text = io.StringIO()
                stats = pstats.Stats(profile, stream=text).sort_stats(
                    os.environ.get(_PROFILE_VAR, "tottime")
                )
                stats.print_stats(25)
                # Who sends work to worker threads, and how often: each hop costs the loop.
                stats.print_callers("to_thread.py.*run_sync")
                snapshots[-1]["profile"] = text.getvalue()
        out.write_text(json.dumps(snapshots))

    signal.signal(signal.SIGUSR1, snapshot)
    return main(argv)


async def drive(seconds: float, concurrency: int, profile: str) -> str:
    with tempfile.TemporaryDirectory(prefix="mcp-sandbox-bench-") as tmp:
        workspace = make_workspace(Path(tmp, "ws"))
        out = Path(tmp, "counts.json")
        params = StdioServerParameters(
            command=sys.executable,
            args=[__file__, "--serve", "serve", "--workspace", str(workspace)],
            env={
                **os.environ,
                "MCP_SANDBOX_LOG_LEVEL": "WARNING",
                "MCP_SANDBOX_AUDIT__PATH": str(Path(tmp, "audit.jsonl")),
                _OUT_VAR: str(out),
                **({_PROFILE_VAR: profile} if profile else {}),
            },
        )
        calls = errors = warm = 0
        async with Client(params, read_timeout_seconds=60) as client:
            pid = server_pid(workspace)
            for _ in range(3):  # warm-up: the first calls grow the pool
                await client.call_tool("run_code", SNIPPET)
            await anyio.sleep(2)  # the warm-up's removals and refills, out of the count
            os.kill(pid, signal.SIGUSR1)
            deadline = time.monotonic() + seconds

            async def worker() -> None:
                nonlocal calls, errors, warm
                while time.monotonic() < deadline:
                    result = await client.call_tool("run_code", SNIPPET)
                    body = result.structured_content or {}
                    if result.is_error or body.get("stdout") != "1\n":
                        errors += 1
                    else:
                        calls += 1
                        warm += bool(body.get("pooled"))

            started = time.monotonic()
            async with anyio.create_task_group() as tg:
                for _ in range(concurrency):
                    tg.start_soon(worker)
            elapsed = time.monotonic() - started
            await anyio.sleep(2)  # the last calls' removals and refills belong to them
            os.kill(pid, signal.SIGUSR1)
            await anyio.sleep(0.5)
            snaps = json.loads(await anyio.Path(out).read_text())
        return render(snaps[0], snaps[-1], calls, errors, warm, elapsed)


def make_workspace(workspace: Path) -> Path:
    workspace.mkdir()
    workspace.chmod(0o755)  # the sandbox user (65534) enters /workspace
    (workspace / "README").write_text("benchmark workspace\n")
    return workspace


def server_pid(workspace: Path) -> int:
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "--serve" in cmd and cmd[-2:] == ["--workspace", str(workspace)]:
            return int(proc.pid)
    raise RuntimeError("no server process found")


def render(
    before: dict[str, Any],
    after: dict[str, Any],
    calls: int,
    errors: int,
    warm: int,
    elapsed: float,
) -> str:
    n = max(calls, 1)
    lines = [
        f"{calls} calls ({warm} warm), {errors} errors in {elapsed:.1f} s: {calls / elapsed:.2f}"
        f" calls/s; server CPU {1000 * (after['cpu_s'] - before['cpu_s']) / n:.1f} ms per call",
        f"{'Engine API request':<40} {'per call':>8} {'ms each':>8}",
    ]
    total = 0.0
    for key in sorted(after["requests"], key=lambda k: -after["requests"][k]):
        count = after["requests"][key] - before["requests"].get(key, 0)
        if not count:
            continue
        spent = after["request_s"][key] - before["request_s"].get(key, 0.0)
        total += count / n
        lines.append(f"{key:<40} {count / n:>8.2f} {1000 * spent / count:>8.1f}")
    lines.append(f"{'all requests':<40} {total:>8.2f}")
    lines.append(f"{'Engine method':<40} {'per call':>8}")
    for key in sorted(after["methods"], key=lambda k: -after["methods"][k]):
        count = after["methods"][key] - before["methods"].get(key, 0)
        if count:
            lines.append(f"{key:<40} {count / n:>8.2f}")
    if "profile" in after:
        lines.append(after["profile"])
    return "\n".join(lines)


def main() -> int:
    if sys.argv[1:2] == ["--serve"]:
        return serve(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20, help="the load phase")
    parser.add_argument("--concurrency", type=int, default=4, help="clients at once")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="tottime",
        default="",
        choices=["tottime", "cumulative"],
        help="cProfile the event loop; print its functions by this order",
    )
    args = parser.parse_args()
    print(anyio.run(drive, args.seconds, args.concurrency, args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
