"""End-to-end latency of a call, cold and warm, against plain ``docker run``; then a load test.

Latency paths, measured in one run and interleaved (one of each per iteration, after warm-ups)
so that daemon and page-cache drift hits all alike:

- ``python -c "print(1)"`` on the host, with the interpreter running this script (a bare
  ``python3`` may be a version-manager shim that adds its own start-up): the floor;
- ``docker run --rm --network none IMAGE python3 -c "print(1)"`` of the same image;
- ``run_code(python, "print(1)")`` through the SDK's ``Client`` over stdio, on a server with
  the warm pool off (the cold path);
- the same, ``shell("true")`` and ``run_code(javascript, "console.log(1)")`` on a second server
  with the pool on. After each of its calls the benchmark waits, untimed, until the pool has
  removed the used sandbox and warmed its successor: a refill running beside the next timed
  path would tax that path, and an agent's calls are seconds apart anyway.
- on a third pooled server with a 1 MiB workspace (half 8 KiB files, half one blob), the same
  ``run_code(python, "print(1)")`` in ``ro`` and in ``copy``: their p50s give the copy's
  ratio (#20's target: at most 3x), the copy served by a warm sandbox that holds it already
  and gets only what changed.

Then the load phase. First its baselines: ``--concurrency`` loops of the same ``docker run
--rm --network none`` for ``--load-seconds``, its calls/s and errors; then, right before the
server's phase, as many threads of the bare Engine API loop (docker-py's ``APIClient``:
create, start, wait, remove of ``true`` with ``network_disabled``) for as long, so that the
server's rate can be read against what this machine's daemon sustains at all. Then
``--concurrency`` clients call ``run_code(python)`` on the pooled server for as long. The two
take turns in ``--load-slices`` slices (the bare loop first in each), so that another
tenant's load, which drifts over tens of seconds, weighs on both alike. Of the load: calls/s
(absolute and as ratios to the baselines), errors, the share served warm. Afterwards: the
containers each server left behind once it exited, the pooled server's peak RSS (sampled all
run long) and its CPU seconds per load call, and what one idle warm sandbox costs, measured
before the load phase: its memory cgroup's usage and its containerd shim's USS, PSS and RSS.
The shim's RSS mostly counts pages of the Go binary that every shim shares; its USS (memory
only it holds, freed when it exits) is what one more pooled sandbox adds, so the 8 MiB target
is judged on cgroup + shim USS. A lone shim's USS would hold the binary's pages too (about
9 MiB), so a companion ``sleep`` container runs while it is read, and its shim shares them.
The load average is printed at the start and at the end: the machine may be shared.

Each server gets a near-empty temporary workspace: every call scans the workspace for masked
files, and the project tree would add its own cost.

With ``--runtime runsc`` the whole table is measured twice in one run, under runc and then
under gVisor (the servers get ``runtime = "runsc"``, ``docker run`` gets ``--runtime
runsc-nonet``), and both tables are printed one after the other.

Usage: ``python benchmarks/latency.py [--n 20] [--warmup 2] [--load-seconds 60] [--load-slices 4]
[--runtime runsc]``.
Prints one table: p50, p90 in ms, ratios to the docker run p50, and issue 6's targets with
PASS/MISS. The targets are informational: nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import psutil
from anyio import to_thread
from mcp import Client, StdioServerParameters

from mcp_sandbox.constants import MIB
from mcp_sandbox.engine.owners import process_identity

DEFAULT_IMAGE = "mcp-sandbox-runtime:0.1"
# `docker run` flags of the runtime being measured (set per table by main()).
DOCKER_RUNTIME: list[str] = []
SNIPPET = "print(1)"
TEST_LABEL = "mcp-sandbox-test=1"
PREFIX = "mcp-sandbox-bench-"
OWNER_LABEL = "mcp-sandbox.owner"  # set by the server on every container it creates

Mode = Literal["auto", "legacy"]


@dataclass
class Samples:
    path: str
    ms: list[float] = field(default_factory=list)
    in_sandbox_ms: list[float] = field(default_factory=list)  # the server's duration_ms
    warm: int = 0

    def p(self, q: float, values: list[float] | None = None) -> float:
        """Nearest-rank percentile, q in (0, 1]."""
        ordered = sorted(self.ms if values is None else values)
        if not ordered:
            return math.nan
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class Server:
    """One ``mcp-sandbox serve`` on stdio, with the process behind it."""

    client: Client
    proc: psutil.Process
    owner: str  # the label value on every container this server creates
    pooled: bool


@dataclass
class Load:
    seconds: float = 0.0
    calls: int = 0
    errors: int = 0
    warm: int = 0
    first_error: str = ""
    server_cpu_s: float = 0.0  # the server process's user + system CPU over the phase

    def add(self, other: Load) -> None:
        """Count ``other`` (a later slice of the same phase) in."""
        self.seconds += other.seconds
        self.calls += other.calls
        self.errors += other.errors
        self.warm += other.warm
        self.first_error = self.first_error or other.first_error
        self.server_cpu_s += other.server_cpu_s


@dataclass
class Footprint:
    left_pooled: int = -1
    left_cold: int = -1
    server_rss_max: int = 0
    idle_cgroup_bytes: int | None = None
    idle_cgroup_rss_bytes: int | None = None
    shim_uss_bytes: int | None = None  # private to the shim: freed when it exits
    shim_pss_bytes: int | None = None  # USS plus its share of the pages shims share
    shim_rss_bytes: int | None = None
    other_shims: int = 0  # running while the shim was read: they share its binary's pages

    @property
    def idle_total_bytes(self) -> int | None:
        """What one more idle pooled sandbox costs: its memory cgroup plus its shim's USS."""
        if self.idle_cgroup_bytes is None or self.shim_uss_bytes is None:
            return None
        return self.idle_cgroup_bytes + self.shim_uss_bytes


async def timed(call: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await call()
    return (time.perf_counter() - start) * 1000


def check_output(path: str, done: subprocess.CompletedProcess[bytes]) -> None:
    if done.stdout != b"1\n":
        raise RuntimeError(f"{path} printed {done.stdout!r}, not 1")


async def open_server(
    stack: AsyncExitStack, image: str, mode: Mode, *, pooled: bool, workspace_mib: int = 0
) -> Server:
    workspace = make_workspace(
        stack.enter_context(tempfile.TemporaryDirectory(prefix=PREFIX)), workspace_mib
    )
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_sandbox", "serve", "--workspace", str(workspace)],
        env={
            **os.environ,
            # One INFO line per run would interleave with the table.
            "MCP_SANDBOX_LOG_LEVEL": "WARNING",
            "MCP_SANDBOX_IMAGE": image,
            "MCP_SANDBOX_POOL__ENABLED": "true" if pooled else "false",
            # The audit trail goes with the temporary workspace, not the user's state dir.
            "MCP_SANDBOX_AUDIT__PATH": str(Path(workspace).parent / "audit.jsonl"),
        },
    )
    client = await stack.enter_async_context(Client(params, mode=mode, read_timeout_seconds=60))
    proc = find_server(workspace)
    return Server(client, proc, process_identity(proc.pid), pooled)


def make_workspace(path: str, mib: int = 0) -> Path:
    """A workspace of about ``mib`` MiB: half source-like 8 KiB files, half one blob."""
    workspace = Path(path)
    # mkdtemp makes it 0700: the sandbox user (65534) could not enter /workspace.
    workspace.chmod(0o755)
    (workspace / "README").write_text("benchmark workspace\n")
    if mib:
        (workspace / "pkg").mkdir(mode=0o755)
        for i in range(mib * MIB // 2 // 8192):
            (workspace / "pkg" / f"mod{i}.py").write_bytes(os.urandom(4096).hex().encode())
        (workspace / "blob.bin").write_bytes(os.urandom(mib * MIB // 2))
        for p in workspace.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
    return workspace


def find_server(workspace: Path) -> psutil.Process:
    """The server process: the only ``serve`` with this run's unique workspace."""
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "serve" in cmd and cmd[-2:] == ["--workspace", str(workspace)]:
            return proc
    raise RuntimeError(f"no server process found for workspace {workspace}")


async def call(server: Server, tool: str, args: dict[str, Any], stdout: str) -> dict[str, Any]:
    result = await server.client.call_tool(tool, args)
    out = result.structured_content or {}
    if result.is_error or out.get("exit_code") != 0 or out.get("stdout") != stdout:
        raise RuntimeError(f"{tool} failed: {result}")
    return out


async def containers(owner: str) -> list[tuple[str, str, str]]:
    """(full id, name, state) of every container ``owner`` created, running or not."""
    listed = await anyio.run_process(
        [
            *("docker", "ps", "-a", "--no-trunc", "--filter", f"label={OWNER_LABEL}={owner}"),
            *("--format", "{{.ID}} {{.Names}} {{.State}}"),
        ],
        check=True,
    )
    rows = [line.split() for line in listed.stdout.decode().splitlines()]
    return [(r[0], r[1], r[2]) for r in rows if len(r) == 3]


async def settle(server: Server, used: str | None) -> None:
    """Until the pool has dropped ``used`` and every warm sandbox runs, twice in a row."""
    steady = 0
    with anyio.fail_after(60):
        while steady < 2:
            rows = await containers(server.owner)
            ok = bool(rows) and all(state == "running" and name != used for _, name, state in rows)
            steady = steady + 1 if ok else 0
            await anyio.sleep(0.1)


@dataclass
class Step:
    """One timed tool call per iteration."""

    server: Server
    samples: Samples
    tool: str
    args: dict[str, Any]
    stdout: str

    async def run(self, record: bool) -> None:
        result: dict[str, Any] = {}

        async def once() -> None:
            result.update(await call(self.server, self.tool, self.args, self.stdout))

        ms = await timed(once)
        if record:
            self.samples.ms.append(ms)
            self.samples.in_sandbox_ms.append(float(result["duration_ms"]))
            self.samples.warm += bool(result["pooled"])
        if self.server.pooled:
            await settle(self.server, result["sandbox"])


class RssSampler:
    """The peak RSS of one process, sampled every 0.2 s on a thread of its own."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc = proc
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


async def bench(
    n: int,
    warmup: int,
    mode: Mode,
    image: str,
    load_seconds: float,
    concurrency: int,
    slices: int,
) -> str:
    prefix = f"{PREFIX}{os.getpid()}"
    counter = 0

    async def docker_run() -> None:
        nonlocal counter
        counter += 1
        argv = ["docker", "run", *DOCKER_RUNTIME, "--rm", "--network", "none"]
        argv += ["--label", TEST_LABEL]
        argv += ["--name", f"{prefix}-{counter}", image, "python3", "-c", SNIPPET]
        check_output("docker run", await anyio.run_process(argv, check=True))

    async def host_python() -> None:
        check_output("host python", await anyio.run_process([sys.executable, "-c", SNIPPET]))

    host = Samples("host python -c (floor)")
    docker = Samples("docker run --rm --network none")
    cold = Samples("run_code python, cold (pool off)")
    pooled = Samples("run_code python, pooled")
    shell = Samples('shell "true", pooled')
    node = Samples("run_code javascript, pooled")
    ws_ro = Samples("run_code python, pooled, 1 MiB ws, ro")
    ws_copy = Samples("run_code python, pooled, 1 MiB ws, copy")
    foot = Footprint()
    servers: list[Server] = []
    try:
        async with AsyncExitStack() as stack:
            cold_server = await open_server(stack, image, mode, pooled=False)
            warm_server = await open_server(stack, image, mode, pooled=True)
            copy_server = await open_server(stack, image, mode, pooled=True, workspace_mib=1)
            servers += [cold_server, warm_server, copy_server]
            rss = RssSampler(warm_server.proc)
            py = {"language": "python", "code": SNIPPET}
            js = {"language": "javascript", "code": "console.log(1)"}
            steps = [
                Step(cold_server, cold, "run_code", py, "1\n"),
                Step(warm_server, pooled, "run_code", py, "1\n"),
                Step(warm_server, shell, "shell", {"command": "true"}, ""),
                Step(warm_server, node, "run_code", js, "1\n"),
                Step(copy_server, ws_ro, "run_code", py, "1\n"),
                Step(copy_server, ws_copy, "run_code", {**py, "workspace": "copy"}, "1\n"),
            ]
            await settle(warm_server, None)
            for i in range(warmup + n):
                record = i >= warmup
                for samples, run in ((host, host_python), (docker, docker_run)):
                    ms = await timed(run)
                    if record:
                        samples.ms.append(ms)
                for step in steps:
                    await step.run(record)
            await measure_idle(warm_server, foot, image, f"{prefix}-peer")

            async def docker_run_load() -> bool:
                await docker_run()
                return False  # never warm

            async def run_code_load() -> bool:
                return bool((await call(warm_server, "run_code", py, "1\n"))["pooled"])

            baseline = await sustain(docker_run_load, load_seconds, concurrency)
            bare, load = Load(), Load()
            # Slices, each bare loop right before the server's: the machine's other load
            # drifts over tens of seconds, and then hits both alike.
            for _ in range(slices):
                piece = load_seconds / slices
                bare.add(await to_thread.run_sync(bare_loop, image, piece, concurrency, prefix))
                cpu_before = warm_server.proc.cpu_times()
                part = await sustain(run_code_load, piece, concurrency)
                cpu_after = warm_server.proc.cpu_times()
                part.server_cpu_s = (cpu_after.user + cpu_after.system) - (
                    cpu_before.user + cpu_before.system
                )
                load.add(part)
        foot.server_rss_max = rss.stop()
    finally:
        with anyio.CancelScope(shield=True):
            # --rm removes each container; this catches one cut short by an interrupt.
            await remove_leftovers(prefix)
            for server in servers:
                left = await left_behind(server)
                if server.pooled:
                    foot.left_pooled = max(foot.left_pooled, 0) + left
                else:
                    foot.left_cold = left
    rows = [host, docker, cold, pooled, shell, node, ws_ro, ws_copy]
    return render(rows, docker, baseline, bare, load, foot, n=n, concurrency=concurrency)


def bare_loop(image: str, seconds: float, concurrency: int, prefix: str) -> Load:
    """The daemon's own pace: ``concurrency`` threads of create, start, wait, remove of
    ``true`` through the Engine API (docker-py), ``network_disabled`` as the server's
    sandboxes are; no attach, no limits, no seccomp: the bare container life."""
    import docker

    api = docker.from_env(version="auto").api
    api.trust_env = False  # as the server's client: no proxy settings read per request
    labels = dict([TEST_LABEL.split("=", 1)])
    load = Load()
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + seconds

    def worker(k: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            i += 1
            name = f"{prefix}-bare-{k}-{i}"
            try:
                api.create_container(
                    image, ["true"], name=name, network_disabled=True, labels=labels
                )
                api.start(name)
                api.wait(name)
                api.remove_container(name)
            except Exception as e:  # an error under load is a measurement, not a crash
                with lock:
                    load.errors += 1
                    load.first_error = load.first_error or str(e)[:200]
                with contextlib.suppress(Exception):
                    api.remove_container(name, force=True)
            else:
                with lock:
                    load.calls += 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    load.seconds = time.monotonic() - start
    api.close()
    return load


async def measure_idle(server: Server, foot: Footprint, image: str, peer: str) -> None:
    """Memory of one warm sandbox that has sat idle: its cgroup and its containerd shim.

    A companion container, ``peer``, runs meanwhile, so that at least one other shim maps the
    shim binary and the sandbox's shim USS is what it adds, not the binary's pages as well.
    """
    argv = ["docker", "run", *DOCKER_RUNTIME, "-d", "--rm", "--network", "none"]
    argv += ["--label", TEST_LABEL]
    await anyio.run_process([*argv, "--name", peer, image, "sleep", "300"], check=True)
    try:
        await settle(server, None)
        await anyio.sleep(2)
        running = [cid for cid, _, state in await containers(server.owner) if state == "running"]
        if running:
            await to_thread.run_sync(read_footprint, running[0], foot)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.run_process(["docker", "rm", "-f", peer], check=False)


def read_footprint(cid: str, foot: Footprint) -> None:
    v1 = Path("/sys/fs/cgroup/memory/docker", cid)  # cgroup v1, cgroupfs driver
    v2 = Path("/sys/fs/cgroup/system.slice", f"docker-{cid}.scope")  # v2, systemd driver
    if (v1 / "memory.usage_in_bytes").exists():
        foot.idle_cgroup_bytes = int((v1 / "memory.usage_in_bytes").read_text())
        stat = dict(line.split() for line in (v1 / "memory.stat").read_text().splitlines())
        foot.idle_cgroup_rss_bytes = int(stat["total_rss"])
    elif (v2 / "memory.current").exists():
        foot.idle_cgroup_bytes = int((v2 / "memory.current").read_text())
    for proc in psutil.process_iter(["name", "cmdline"]):
        if not (proc.info["name"] or "").startswith("containerd-shim"):
            continue
        if cid not in (proc.info["cmdline"] or []):
            foot.other_shims += 1
        else:
            try:
                # USS and PSS come from /proc/PID/smaps_rollup: the shim runs as root.
                mem = proc.memory_full_info()
            except psutil.AccessDenied:
                foot.shim_rss_bytes = proc.memory_info().rss
            else:
                foot.shim_uss_bytes, foot.shim_pss_bytes = mem.uss, mem.pss
                foot.shim_rss_bytes = mem.rss


async def sustain(attempt: Callable[[], Awaitable[bool]], seconds: float, concurrency: int) -> Load:
    """``concurrency`` loops of ``attempt`` (which returns whether it was served warm)."""
    load = Load()
    start = time.monotonic()
    deadline = start + seconds

    async def worker() -> None:
        while time.monotonic() < deadline:
            try:
                warm = await attempt()
            except Exception as e:  # an error under load is a measurement, not a crash
                load.errors += 1
                load.first_error = load.first_error or describe(e)[:200]
            else:
                load.calls += 1
                load.warm += warm

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    load.seconds = time.monotonic() - start
    return load


async def left_behind(server: Server) -> int:
    """Containers ``server`` left once it exited; removed here, after counting."""
    try:
        await to_thread.run_sync(server.proc.wait, 30)
    except psutil.TimeoutExpired:
        print(f"latency: server {server.proc.pid} still running after 30 s", file=sys.stderr)
    ids = [cid for cid, _, _ in await containers(server.owner)]
    if ids:
        await anyio.run_process(["docker", "rm", "-f", *ids], check=False)
    return len(ids)


async def remove_leftovers(prefix: str) -> None:
    listed = await anyio.run_process(
        ["docker", "ps", "-aq", "--filter", f"label={TEST_LABEL}", "--filter", f"name={prefix}-"],
        check=False,
    )
    ids = listed.stdout.decode().split()
    if ids:
        await anyio.run_process(["docker", "rm", "-f", *ids], check=False)


def describe(e: Exception) -> str:
    """The error, with the stderr of a failed command (``docker run`` says why on stderr)."""
    if isinstance(e, subprocess.CalledProcessError) and e.stderr:
        return f"{e}: {e.stderr.decode(errors='replace').strip()}"
    return str(e)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def render(
    rows: list[Samples],
    baseline: Samples,
    load_baseline: Load,
    bare: Load,
    load: Load,
    foot: Footprint,
    *,
    n: int,
    concurrency: int,
) -> str:
    base = baseline.p(0.5)
    targets: dict[str, tuple[str, bool]] = {}
    cold, pooled = rows[2], rows[3]
    targets[cold.path] = ("p50 <= 0.6x", cold.p(0.5) / base <= 0.6)
    pooled_ok = pooled.p(0.5) / base <= 0.06 and pooled.p(0.9) / base <= 0.15
    targets[pooled.path] = ("p50 <= 0.06x, p90 <= 0.15x", pooled_ok)
    ws_ro, ws_copy = rows[6], rows[7]
    copy_ratio = ws_copy.p(0.5) / ws_ro.p(0.5)
    targets[ws_copy.path] = (f"p50 <= 3x ro's: {copy_ratio:.2f}x", copy_ratio <= 3)
    width = 38
    head = f"{'latency, n=' + str(n):<{width}}  {'p50 ms':>7}  {'p90 ms':>7}  {'p50 x':>6}  "
    head += f"{'p90 x':>6}  {'in-box':>6}  {'warm':>5}  {'target (x = docker run p50)':<28}  "
    lines = [head + "result"]
    for r in rows:
        in_box = f"{r.p(0.5, r.in_sandbox_ms):.0f}" if r.in_sandbox_ms else ""
        warm = f"{r.warm}/{len(r.ms)}" if r.in_sandbox_ms else ""
        target, ok = targets.get(r.path, ("", True))
        line = f"{r.path:<{width}}  {r.p(0.5):>7.1f}  {r.p(0.9):>7.1f}  {r.p(0.5) / base:>6.3f}  "
        line += f"{r.p(0.9) / base:>6.3f}  {in_box:>6}  {warm:>5}  {target:<28}  "
        lines.append((line + (verdict(ok) if target else "")).rstrip())

    def fmt(value: int | None, unit: int, suffix: str) -> str:
        return "n/a" if value is None else f"{value / unit:.1f} {suffix}"

    def section(title: str, section_rows: list[tuple[str, str, str, bool]]) -> None:
        lines.append(title)
        for name, value, target, ok in section_rows:
            line = f"  {name:<{width - 2}}  {value:<47}  {target:<28}  "
            lines.append((line + (verdict(ok) if target else "")).rstrip())

    def baseline_section(title: str, what: str, run: Load) -> float:
        """A baseline's section (``title`` names it, ``what`` its unit); returns its rate."""
        rate = run.calls / run.seconds if run.seconds else 0.0
        section(
            f"load baseline: {title}, {run.seconds:.0f} s",
            [
                (f"{what}/s", f"{rate:.1f}", "", True),
                (f"{what} / errors", f"{run.calls} / {run.errors}", "", True),
            ],
        )
        if run.first_error:
            lines.append(f"  first error: {run.first_error}")
        return rate

    base_rate = baseline_section(
        f"docker run --rm, {concurrency} concurrent", "calls", load_baseline
    )
    bare_rate = baseline_section(f"bare Engine API loop, {concurrency} threads", "containers", bare)

    rate = load.calls / load.seconds if load.seconds else 0.0
    ratio = f"{rate / base_rate:.2f}x docker run" if base_rate else "docker run: n/a"
    bare_ratio = rate / bare_rate if bare_rate else 0.0
    cpu_ms = load.server_cpu_s * 1000 / load.calls if load.calls else 0.0
    share = load.warm / load.calls if load.calls else 0.0
    left_ok = foot.left_pooled == 0 and foot.left_cold == 0
    rss_note = fmt(foot.idle_cgroup_rss_bytes, MIB, "MiB rss")
    shim = [foot.shim_uss_bytes, foot.shim_pss_bytes, foot.shim_rss_bytes]
    shim_mib = " / ".join("n/a" if v is None else f"{v / MIB:.1f}" for v in shim) + " MiB"
    shim_mib += f" (other shims up: {foot.other_shims})"
    total = foot.idle_total_bytes
    load_rows = [
        (
            "calls/s",
            f"{rate:.1f} ({ratio})",
            ">= 8 at 0 errors",
            rate >= 8 and load.errors == 0,
        ),
        (
            "calls/s vs the bare loop",
            f"{bare_ratio:.2f}x",
            ">= 0.95x",
            bare_ratio >= 0.95 and load.errors == 0,
        ),
        ("calls / errors", f"{load.calls} / {load.errors}", "0 errors", load.errors == 0),
        ("server CPU per call", f"{cpu_ms:.1f} ms", "", True),
        ("served warm", f"{share:.0%}", "", True),
        (
            "containers left at exit, warm/cold",
            f"{foot.left_pooled} / {foot.left_cold}",
            "0",
            left_ok,
        ),
        (
            "server RSS max (pooled server)",
            f"{foot.server_rss_max / 1e6:.0f} MB",
            "< 150 MB",
            foot.server_rss_max < 150e6,
        ),
        (
            "idle warm sandbox, memory cgroup",
            f"{fmt(foot.idle_cgroup_bytes, MIB, 'MiB')} ({rss_note})",
            "",
            True,
        ),
        ("  its containerd shim USS/PSS/RSS", shim_mib, "", True),
        (
            "idle warm sandbox, cgroup + shim USS",
            fmt(total, MIB, "MiB"),
            "<= 8 MiB",
            total is not None and total <= 8 * MIB,
        ),
    ]
    section(f"load, {concurrency} concurrent run_code python, {load.seconds:.0f} s", load_rows)
    if load.first_error:
        lines.append(f"  first error: {load.first_error}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="timed iterations per path")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per path")
    parser.add_argument("--mode", choices=["auto", "legacy"], default="auto", help="Client mode")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="sandbox image for every path")
    parser.add_argument("--load-seconds", type=float, default=60, help="sustained-load phase")
    parser.add_argument("--concurrency", type=int, default=4, help="clients in the load phase")
    parser.add_argument(
        "--load-slices",
        type=int,
        default=4,
        help="the bare loop and the server's load take turns in this many slices",
    )
    parser.add_argument(
        "--runtime",
        choices=["runc", "runsc"],
        default="runc",
        help="runsc: measure under runc, then under gVisor, and print both tables",
    )
    args = parser.parse_args()
    if (
        args.n < 1
        or args.warmup < 0
        or args.load_seconds <= 0
        or args.concurrency < 1
        or args.load_slices < 1
    ):
        parser.error(
            "--n, --load-seconds, --concurrency and --load-slices must be positive, --warmup >= 0"
        )
    print(f"n={args.n} warmup={args.warmup} image={args.image} cpus={os.cpu_count()}")
    print(f"host python={sys.executable}")
    print(f"load average at start: {load_average()}", flush=True)
    for runtime in ["runc"] + (["runsc"] if args.runtime == "runsc" else []):
        os.environ["MCP_SANDBOX_RUNTIME"] = runtime  # the servers inherit the environment
        DOCKER_RUNTIME[:] = ["--runtime", "runsc-nonet"] if runtime == "runsc" else []
        try:
            table = anyio.run(
                bench,
                args.n,
                args.warmup,
                args.mode,
                args.image,
                args.load_seconds,
                args.concurrency,
                args.load_slices,
            )
        except subprocess.CalledProcessError as e:
            print(f"latency: {e}\n{e.stderr.decode(errors='replace')}", file=sys.stderr)
            return 1
        print(f"\n== runtime {runtime} ==")
        print(table, flush=True)
    print(f"\nload average at the end: {load_average()} (a shared machine: read the ratios)")
    return 0


def load_average() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1, 5, 15 min)"


if __name__ == "__main__":
    sys.exit(main())
