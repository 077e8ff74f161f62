"""/metrics of a real HTTP server, scraped after a few calls, holds their counts."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import anyio
from prometheus_client.parser import text_string_to_metric_families

from sandbox_client import call, call_error
from sandbox_http import free_port, healthy, http_client, http_server


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_scraped_metrics_hold_the_calls_of_a_run(tmp_path: Path) -> None:
    await anyio.Path(tmp_path).chmod(0o755)  # the sandbox user (65534) enters /workspace
    metrics_port = free_port()
    env = {
        "MCP_SANDBOX_HTTP__METRICS_PORT": str(metrics_port),
        "MCP_SANDBOX_MAX_CONCURRENT": "2",
        "MCP_SANDBOX_WORKSPACE": str(tmp_path),
    }
    with http_server(tmp_path, env) as server:
        assert healthy(f"http://127.0.0.1:{metrics_port}/metrics")
        async with http_client(server.url) as client:
            for _ in range(3):
                assert (await call(client, "shell", command="echo hi"))["stdout"] == "hi\n"
            timed = await call(
                client, "run_code", language="python", code="while 1: pass", timeout_s=0.5
            )
            assert timed["timed_out"]
            await call_error(client, "shell", command="true", network="egress")
        got = await anyio.to_thread.run_sync(_scrape, metrics_port)
    calls = "mcp_sandbox_calls_total"
    assert got[(calls, (("error", ""), ("outcome", "exited"), ("tool", "shell")))] == 3
    assert got[(calls, (("error", ""), ("outcome", "timed_out"), ("tool", "run_code")))] == 1
    refused = (("error", "RequestRejected"), ("outcome", "refused"), ("tool", "shell"))
    assert got[(calls, refused)] == 1
    runs = sum(v for (name, _), v in got.items() if name == "mcp_sandbox_runs_total")
    assert runs == 4
    assert got[("mcp_sandbox_queue_seconds_count", ())] == 4
    assert got[("mcp_sandbox_slots", ())] == 2
    assert got[("mcp_sandbox_audit_write_failures_total", ())] == 0
