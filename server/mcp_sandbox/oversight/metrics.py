"""What an operator watches: counters and histograms of the calls, in Prometheus's format.

Fed from the call wrapper (one ``observe`` per call, as its audit record is written) and read,
for the gauges, from the service at scrape time. Each server has its own registry: nothing
here is process-global. ``serve_metrics`` exposes it on a listener of its own, loopback by
default (``http.metrics_port``); the MCP endpoint never serves it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.exposition import generate_latest

from mcp_sandbox.oversight.audit import CallRecord
from mcp_sandbox.sandbox.slots import Load

# Seconds: from a warm sandbox's tens of milliseconds to a long test run.
_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class CallMetrics:
    """The counters of one server. ``observe`` is called once per call, whatever its end."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls = Counter(
            "mcp_sandbox_calls",
            "Tool calls, by tool and outcome (exited, timed_out, oom_killed, refused, "
            "failed, cancelled); error names the failure's type (HostBusy, ...)",
            ["tool", "outcome", "error"],
            registry=r,
        )
        self.queue_seconds = Histogram(
            "mcp_sandbox_queue_seconds",
            "Time a call waited for a sandbox slot",
            buckets=_SECONDS,
            registry=r,
        )
        self.run_seconds = Histogram(
            "mcp_sandbox_run_seconds",
            "Time a sandbox ran, start to exit",
            buckets=_SECONDS,
            registry=r,
        )
        self.call_seconds = Histogram(
            "mcp_sandbox_call_seconds",
            "Time of a whole call, screening to audit record",
            ["tool"],
            buckets=_SECONDS,
            registry=r,
        )
        self.runs = Counter(
            "mcp_sandbox_runs",
            "Runs, by whether a warm sandbox served them (the pool's hit rate)",
            ["pooled"],
            registry=r,
        )
        self.egress = Counter(
            "mcp_sandbox_egress_requests",
            "Requests of sandboxes through the egress proxy, by verdict",
            ["verdict"],
            registry=r,
        )
        self.approvals = Counter(
            "mcp_sandbox_approvals",
            "Escalation decisions, by kind, who decided (config, session grant, human) and "
            "the answer",
            ["kind", "by", "answer"],
            registry=r,
        )
        self.audit_failures = Counter(
            "mcp_sandbox_audit_write_failures",
            "Audit records that could not be written (each call then fails closed)",
            registry=r,
        )
        self.pool_ready = Gauge("mcp_sandbox_pool_ready", "Warm sandboxes ready now", registry=r)
        self.sandboxes = Gauge(
            "mcp_sandbox_sandboxes_running", "Sandbox slots held by calls now", registry=r
        )
        self.queued = Gauge(
            "mcp_sandbox_calls_queued", "Calls waiting for a sandbox slot now", registry=r
        )
        self.slots = Gauge("mcp_sandbox_slots", "Sandbox slots (max_concurrent)", registry=r)

    def watch(self, load: Callable[[], Load | None]) -> None:
        """Read the gauges from ``load()`` at each scrape (a launcher's stay at 0)."""
        self.pool_ready.set_function(lambda: _field(load(), "pool_ready"))
        self.sandboxes.set_function(lambda: _field(load(), "busy"))
        self.queued.set_function(lambda: _field(load(), "waiting"))
        self.slots.set_function(lambda: _field(load(), "slots"))

    def observe(self, record: CallRecord, error: BaseException | None) -> None:
        """One finished call: its outcome, times, egress and decisions."""
        tool = record.args.tool
        self.calls.labels(tool, record.outcome, type(error).__name__ if error else "").inc()
        self.call_seconds.labels(tool).observe(time.monotonic() - record.started)
        for d in record.decisions:
            answer = d.answer or ("allow" if d.allowed else "deny")
            self.approvals.labels(d.kind, d.by, answer).inc()
        result = record.result
        if result is None:
            return
        self.run_seconds.observe(result.duration_ms / 1000)
        if result.queued_ms is not None:
            self.queue_seconds.observe(result.queued_ms / 1000)
        self.runs.labels("true" if result.pooled else "false").inc()
        if result.egress_allowed:
            self.egress.labels("allowed").inc(result.egress_allowed)
        if result.egress_denied:
            self.egress.labels("denied").inc(len(result.egress_denied))

    def text(self) -> bytes:
        """The registry in Prometheus's text format."""
        return generate_latest(self.registry)


class MetricsListener:
    """The metrics' own HTTP listener, served from a thread of its own."""

    def __init__(self, server: Any, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.port = int(server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve_metrics(metrics: CallMetrics, host: str, port: int) -> MetricsListener:
    """Serve ``/metrics`` on ``host:port`` (0: any free port) until ``close()``."""
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    return MetricsListener(server, thread)


def _field(load: Load | None, name: str) -> float:
    return 0.0 if load is None else float(getattr(load, name))
