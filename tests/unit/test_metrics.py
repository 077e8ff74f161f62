"""The metrics an operator scrapes hold the right counts, and are served on their own port."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import anyio
from mcp import Client
from prometheus_client.parser import text_string_to_metric_families

from fake_engine import FakeEngine
from mcp_sandbox.app import make_service
from mcp_sandbox.config.settings import Settings
from mcp_sandbox.oversight.metrics import CallMetrics, serve_metrics
from mcp_sandbox.transport.tools import build_server


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_scraped_metrics_count_calls_by_tool_and_outcome(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    settings = Settings(
        max_concurrent=3,
        pool={"enabled": False},
        audit={"path": tmp_path / "audit.jsonl"},
        workspace=tmp_path / "ws",
    )
    service = make_service(settings, FakeEngine())
    metrics = CallMetrics()
    metrics.watch(service.load)
    async with Client(build_server(service, metrics)) as client:
        for _ in range(2):
            assert not (await client.call_tool("shell", {"command": "true"})).is_error
        ran = await client.call_tool("run_code", {"language": "python", "code": "1"})
        assert not ran.is_error
        refused = await client.call_tool("shell", {"command": "true", "network": "egress"})
        assert refused.is_error
    got = _samples(metrics.text().decode())
    calls = "mcp_sandbox_calls_total"
    assert got[(calls, (("error", ""), ("outcome", "exited"), ("tool", "shell")))] == 2
    assert got[(calls, (("error", ""), ("outcome", "exited"), ("tool", "run_code")))] == 1
    refusal = (("error", "RequestRejected"), ("outcome", "refused"), ("tool", "shell"))
    assert got[(calls, refusal)] == 1
    assert got[("mcp_sandbox_runs_total", (("pooled", "false"),))] == 3
    assert got[("mcp_sandbox_queue_seconds_count", ())] == 3
    assert got[("mcp_sandbox_run_seconds_count", ())] == 3
    assert got[("mcp_sandbox_call_seconds_count", (("tool", "shell"),))] == 3
    assert got[("mcp_sandbox_audit_write_failures_total", ())] == 0
    assert got[("mcp_sandbox_slots", ())] == 3
    assert got[("mcp_sandbox_sandboxes_running", ())] == 0


async def test_an_unwritable_audit_log_is_counted(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "audit").mkdir()
    settings = Settings(
        pool={"enabled": False},
        audit={"path": tmp_path / "audit"},  # a directory: no record can be written
        workspace=tmp_path / "ws",
    )
    service = make_service(settings, FakeEngine())
    metrics = CallMetrics()
    async with Client(build_server(service, metrics)) as client:
        assert (await client.call_tool("shell", {"command": "true"})).is_error
    got = _samples(metrics.text().decode())
    assert got[("mcp_sandbox_audit_write_failures_total", ())] == 1


async def test_metrics_are_served_on_their_own_loopback_port() -> None:
    metrics = CallMetrics()
    listener = serve_metrics(metrics, "127.0.0.1", 0)

    def scrape() -> bytes:
        url = f"http://127.0.0.1:{listener.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return bytes(response.read())

    try:
        body = await anyio.to_thread.run_sync(scrape)
    finally:
        listener.close()
    assert b"# TYPE mcp_sandbox_calls_total counter" in body
    assert b"mcp_sandbox_audit_write_failures_total 0.0" in body
