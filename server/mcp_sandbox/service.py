"""One call, start to end: arguments -> policy -> spec -> runner -> output -> result."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets as pysecrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from pathlib import Path

import anyio
import psutil
from anyio import CapacityLimiter, to_thread

from mcp_sandbox.config.settings import Settings
from mcp_sandbox.config.workspace import default_root
from mcp_sandbox.constants import OWNER_LABEL, WORKDIR
from mcp_sandbox.egress.credentials import load_credentials, scrub_values
from mcp_sandbox.egress.proxy import EgressProxy, EgressTally, reap_networks
from mcp_sandbox.engine.backend import ContainerInfo, Engine
from mcp_sandbox.engine.owners import owner_is_alive
from mcp_sandbox.engine.steps import remove_quietly, step
from mcp_sandbox.environment import build as env_build
from mcp_sandbox.environment import store as env_store
from mcp_sandbox.environment.lookup import EnvironmentLookup
from mcp_sandbox.environment.mount import with_environment
from mcp_sandbox.environment.volumes import Environment
from mcp_sandbox.errors import RequestRejected, SandboxError, SandboxUnavailable
from mcp_sandbox.output.output_files import ShapedFiles, parse_frames, shape_files
from mcp_sandbox.output.result import (
    NO_ENVIRONMENT,
    RESULT_CHARS,
    EnvironmentReport,
    RunResult,
    WorkspaceReport,
)
from mcp_sandbox.output.run_store import RunStore, output_uri
from mcp_sandbox.output.scrubber import Scrubber, secret_values_from_env
from mcp_sandbox.output.shaping import (
    SHAPE_ON_LOOP_BYTES,
    StreamCapture,
    capture_bytes,
    json_chars,
    neutralise,
    safe_head,
    shape,
)
from mcp_sandbox.output.test_report import SUMMARY_CHARS, summarise, wanted_runners
from mcp_sandbox.policy.arguments import CallArgs, Mode, RunCodeArgs, ShellArgs
from mcp_sandbox.policy.limits import LimitRequest, Limits, RunPlan, plan_run
from mcp_sandbox.sandbox.after_reply import AfterReply
from mcp_sandbox.sandbox.pool import StaleSandbox, Warm, WarmPool, run_warm
from mcp_sandbox.sandbox.runner import RawRun, run_once
from mcp_sandbox.sandbox.runtime import EGRESS_UNDER_GVISOR, Runtime, choose_runtime
from mcp_sandbox.sandbox.seccomp import for_gvisor
from mcp_sandbox.sandbox.slots import Load, OnWait, SlotQueue
from mcp_sandbox.sandbox.spec import (
    ContainerSpec,
    build_spec,
    with_copy_room,
    with_egress,
    with_workspace,
)
from mcp_sandbox.sandbox.usage import outputs_env, report_env, resources, with_usage
from mcp_sandbox.sandbox.warm import COPY_STUB_ARGV, STUB_ARGV, encode_copy, encode_patch
from mcp_sandbox.sandbox.warm_copy import run_warm_copy
from mcp_sandbox.workspace.changes import LISTED_CHARS
from mcp_sandbox.workspace.copy_delta import PreparedCopy
from mcp_sandbox.workspace.read_back import Readback
from mcp_sandbox.workspace.session import (
    KEEPER_ARGV,
    KEEPER_LIMITS,
    Session,
    Workspace,
    WorkspaceAsk,
    WorkspacePlan,
    copy_report,
    discard_blanks,
    open_session,
    patch_for,
    prepared_copy,
    read_back_of,
    reap_volumes,
    ro_mounts,
    warm_copy_room,
)

log = logging.getLogger("mcp_sandbox")

# A container of another host (a server in compose, say) is only reaped once it is surely
# past any run's deadline.
_FOREIGN_GRACE_S = 600.0
# How long shutdown waits for running calls to end once their sandboxes are gone.
SHUTDOWN_WAIT_S = 10.0
# After an outage of the daemon: how often we ask whether it is back (each ask bounded by
# PING_BOUND_S), and how long the sweep of what the outage left waits for a quiet moment.
DAEMON_RETRY_S = 0.5
PING_BOUND_S = 5.0
SWEEP_WAIT_S = 60.0
# A whole result stays under RESULT_CHARS: its streams take output_bytes at most, the rest
# of its fields and the text block's first lines RESERVE_CHARS, and the workspace change
# list what is left, up to LISTED_CHARS.
RESERVE_CHARS = 4_000
# An environment build reaches the package indexes through a proxy: egress, which gVisor
# does not have on this daemon (``EGRESS_UNDER_GVISOR``). Its calls may still mount one.
ENVIRONMENT_UNDER_GVISOR = (
    "an environment build needs egress to the package indexes, which is not available under "
    "runsc: gVisor does not start on a Docker network on this daemon; its operator can build "
    "it with runtime = 'runc' (`mcp-sandbox env build`), and calls under runsc then mount it"
)


def make_scrubber(settings: Settings, environ: Mapping[str, str] | None = None) -> Scrubber:
    """Known values: the server's secret-looking variables, `scrub_values` and the egress
    credentials' values. Raises ConfigError when a credential's value is missing."""
    environ = os.environ if environ is None else environ
    known = secret_values_from_env(environ)
    known.update({f"scrub_values[{i}]": v for i, v in enumerate(settings.scrub_values)})
    # With a launcher, the launcher runs the proxy: the values are its to hold (and scrub).
    remote = settings.launcher_socket is not None
    known.update(scrub_values(load_credentials(settings.egress, environ, skip_missing=remote)))
    return Scrubber(known)


# Warm copy sandboxes that failed in a row (refused their copy, or died before their call)
# before the server stops making them.
COPY_REFUSALS_OFF = 5
# How long a call waits for the daemon's list of environments (one volume listing).
ENVIRONMENT_LOOKUP_S = 10.0


class SandboxService:
    """Runs calls; holds what lives as long as the server: slots, threads, the profile."""

    def __init__(
        self,
        settings: Settings,
        api: Engine,
        *,
        seccomp_json: Callable[[], str],
        scrub: Callable[[str], str],
        scrub_margin: int,
        sandbox_env: Mapping[str, str] | None = None,
        max_concurrent: int,
        owner: str,
    ) -> None:
        self.settings = settings
        self.api = api
        self.owner = owner
        self.max_concurrent = max_concurrent
        self._seccomp_json = seccomp_json
        self._scrub = scrub
        self._margin = scrub_margin
        self._env = dict(settings.env if sandbox_env is None else sandbox_env)
        self.queue = SlotQueue(
            max_concurrent, self._may_start, memory_floor_mib=settings.pool.min_available_mib
        )
        # Each run holds a stream-pump thread and makes short calls besides.
        self._threads = CapacityLimiter(max_concurrent * 3 + 8)
        self._after = AfterReply(api, self._threads)
        self.runs = RunStore()  # the full text of cut streams, by run id
        self._closing = False
        self._daemon_failed = anyio.Event()
        self.outages = 0  # times the daemon stopped answering, and came back
        self._runtime: Runtime | None = None  # asked of the daemon at the first sandbox
        self._egress = EgressProxy(
            settings.egress,
            api,
            owner=owner,
            seccomp_json=seccomp_json,
            extra_labels=settings.labels,
        )
        self.workspace = Workspace(default_root(settings.workspace), settings.workspace_policy)
        self._environments = EnvironmentLookup(api.labelled_volumes)
        if self.workspace.root is None:
            log.warning("started in / or a home directory: no workspace (use --workspace PATH)")
        ps = settings.pool
        self.pool = (
            WarmPool(
                api,
                self._threads,
                self._warm_spec,
                self._after,
                min_size=ps.min_size,
                max_size=min(ps.max_size, max_concurrent),
                may_start=self._may_start,
            )
            if ps.enabled and ps.max_size > 0
            else None
        )
        # Warm sandboxes for `copy` and `rw` calls: none until such a call finds none.
        self.copy_pool = (
            WarmPool(
                api,
                self._threads,
                self._warm_copy_spec,
                self._after,
                min_size=0,
                max_size=min(ps.max_size, max_concurrent),
                may_start=self._may_start,
                prepare=self._prepare_copy,
                give_up_after=COPY_REFUSALS_OFF,
            )
            if ps.enabled and ps.max_size > 0
            else None
        )

    @property
    def scrub_margin(self) -> int:
        """Characters the scrubber needs past a cut to be sure no secret is split."""
        return self._margin

    def scrub(self, text: str) -> str:
        """The one scrubber everything that leaves the server passes."""
        return self._scrub(text)

    @property
    def workspace_root(self) -> Path | None:
        """The workspace calls see (None: none)."""
        return self.workspace.root

    @property
    def checks_its_own_workspace(self) -> bool:
        """False: calls run here, so the server's oversight checks their workdirs."""
        return False

    async def kept_output(self, run_id: str, stream: str) -> str | None:
        """The kept full text of a cut stream of ``run_id`` (None: none, or dropped)."""
        return self.runs.read(run_id, stream)

    def load(self) -> Load:
        """The slots' load now: warm sandboxes ready, calls running and waiting."""
        ready = sum(p.ready for p in (self.pool, self.copy_pool) if p is not None)
        q = self.queue
        return Load(pool_ready=ready, busy=q.busy, waiting=q.waiting, slots=q.slots)

    async def run_code(self, args: RunCodeArgs, *, waiting: OnWait | None = None) -> RunResult:
        return await self._run(args, waiting)

    async def shell(self, args: ShellArgs, *, waiting: OnWait | None = None) -> RunResult:
        return await self._run(args, waiting)

    async def _run(self, args: CallArgs, waiting: OnWait | None) -> RunResult:
        """``args`` as oversight passes them on: their profile (if any) already applied.

        ``waiting`` hears of the call's place in the queue while it waits for a slot.
        """
        s = self.settings
        request = LimitRequest.of(args)
        plan = plan_run(s.limits, s.bounds, args.argv, args.source, args.stdin, request)
        network = args.network
        where = WorkspaceAsk(args.workdir, args.workspace)
        if network != "none" and not s.egress.enabled:
            raise RequestRejected(
                'network "egress" is not enabled on this server; its operator can turn it on '
                "with egress.enabled = true (then calls reach only egress.allow)"
            )
        # Checked, and the tree read, before any container starts.
        ws_plan = await to_thread.run_sync(self.workspace.plan, where, limiter=self._threads)
        found = await self._environment_for(ws_plan.root if ws_plan is not None else None)
        run_id = pysecrets.token_hex(6)
        if (
            args.network != "none"
            and (await to_thread.run_sync(self.runtime, limiter=self._threads)).gvisor
        ):
            raise SandboxUnavailable(EGRESS_UNDER_GVISOR)  # before any container: none leaks
        spec = self._spec(plan, run_id, networked=args.network != "none")
        try:
            return await self._run_planned(args, plan, spec, ws_plan, found, run_id, waiting)
        except SandboxUnavailable:
            self._daemon_failed.set()  # perhaps the daemon went away: see _recover
            raise

    async def _run_planned(
        self,
        args: CallArgs,
        plan: RunPlan,
        spec: ContainerSpec,
        ws_plan: WorkspacePlan | None,
        found: tuple[Environment | None, EnvironmentReport],
        run_id: str,
        waiting: OnWait | None,
    ) -> RunResult:
        network = args.network
        environment, env_report = found
        tests = _wants_tests(args)
        outputs = args.outputs
        # A cold run reports what it used through the usage wrapper (outermost: it ends every
        # other process of the sandbox before it reports); a warm stub, itself.
        spec = replace(spec, argv=with_usage(spec.argv))
        if tests:  # the runners write a report; only the cold wrapper ships it out
            env = dict(spec.env)
            spec = replace(spec, env=tuple(sorted({**env, **report_env(env)}.items())))
        if outputs:  # only the cold wrapper ships /tmp/outputs out, once the program ends
            spec = replace(spec, env=tuple(sorted({**dict(spec.env), **outputs_env()}.items())))
        with self._after.call():  # removals and refills wait for the reply
            self._refuse_if_closing()
            async with self.queue.slot(self.settings.bounds.queue_timeout_s, waiting) as queued_ms:
                served = None
                report: WorkspaceReport | None
                if network == "none" and not (tests or outputs):
                    warm_spec = self._mounting(spec, environment)
                    served, ws_plan = await self._copy_warm(warm_spec, plan, ws_plan, args)
                if served is not None:
                    raw, report = served
                    tally = None
                else:
                    async with self._workspace_session(ws_plan, run_id, plan) as ws:
                        if ws is not None:
                            # The workspace's mounts replace the spec's: the environment after.
                            spec = with_workspace(spec, ws.mounts, ws.plan.working_dir)
                        spec = self._mounting(spec, environment)
                        raw, tally = await self._launch(
                            spec, plan, run_id, network, ws, cold=tests or outputs
                        )
                        report = await ws.finish() if ws is not None else None
        shaping = (raw, run_id, plan.limits, queued_ms, tally, report, env_report, tests, outputs)
        if raw.stdout.total + raw.stderr.total <= SHAPE_ON_LOOP_BYTES and not raw.files:
            result = self._result(*shaping)
        else:  # scrubbing it takes milliseconds, hostile text up to the scrubber's budget
            result = await to_thread.run_sync(self._result, *shaping, limiter=self._threads)
        log.info(
            "run %s %s exit=%s timed_out=%s oom=%s %dms queued=%dms out=%dB err=%dB",
            run_id,
            "warm" if result.pooled else "cold",
            result.exit_code,
            result.timed_out,
            result.oom_killed,
            result.duration_ms,
            queued_ms,
            result.stdout_bytes,
            result.stderr_bytes,
        )
        return result

    async def _launch(
        self,
        spec: ContainerSpec,
        plan: RunPlan,
        run_id: str,
        network: str,
        ws: Session | None,
        *,
        cold: bool = False,
    ) -> tuple[RawRun, EgressTally | None]:
        """Run ``spec``; with ``network="egress"``, on a network of its own behind the proxy.

        A warm sandbox stands in only when its spec equals ``spec`` but for identity. A used
        container is removed after the reply, unless a volume or network of the call's own
        must outlive it (those are removed, after it, before the reply).
        """
        keep = capture_bytes(plan.limits.output_bytes, self._margin)
        self._refuse_if_closing()
        if network == "none":
            warm = self.pool.take(spec) if self.pool is not None and not cold else None
            if warm is not None:
                assert self.pool is not None
                try:
                    raw = await run_warm(
                        self.api, warm, plan, spec.working_dir, keep, self._threads
                    )
                except StaleSandbox:
                    self.pool.discard(warm, at_once=True)
                    log.info("warm sandbox %s lost a mount while it waited; cold", warm.spec.name)
                except BaseException:  # cancelled, or failed: the program may still run
                    self.pool.discard(warm, at_once=True)
                    raise
                else:
                    self.pool.discard(warm)  # it has ended: removed after the reply
                    return raw, None
            own_volume = ws is not None and ws.plan.mode != "ro"
            dispose = None if own_volume else self._after.remove
            return await run_once(self.api, spec, plan.stdin, keep, self._threads, dispose), None
        async with self._egress.attached(run_id, plan.limits.timeout_s, self._threads) as call:
            spec = with_egress(spec, call.link)
            raw = await run_once(self.api, spec, plan.stdin, keep, self._threads)
        return raw, call.tally

    @staticmethod
    def _mounting(spec: ContainerSpec, environment: Environment | None) -> ContainerSpec:
        """``spec`` with the workspace's environment mounted at /env, if it has one."""
        return spec if environment is None else with_environment(spec, environment.id)

    async def _copy_warm(
        self, spec: ContainerSpec, plan: RunPlan, ws_plan: WorkspacePlan | None, args: CallArgs
    ) -> tuple[tuple[RawRun, WorkspaceReport] | None, WorkspacePlan | None]:
        """A `copy` or `rw` call served by a warm sandbox, and the plan a cold run would use
        (None, and the plan as it was: no warm sandbox of its shape, so it runs cold).

        When the warm sandbox refuses before running anything, the tree is scanned again
        for the cold run: its copy may not have landed because the tree changed.
        """
        if self.copy_pool is None or ws_plan is None:
            return None, ws_plan
        room = warm_copy_room(ws_plan, plan.limits.workdir_mib)
        if room is None:
            return None, ws_plan
        self._refuse_if_closing()
        warm = self.copy_pool.take(with_copy_room(spec, room))
        if warm is None:
            return None, ws_plan
        policy = self.settings.workspace_policy
        keep = capture_bytes(plan.limits.output_bytes, self._margin)
        try:
            if not isinstance(warm.prepared, PreparedCopy):
                raise StaleSandbox(warm.spec.name)  # not prepared: no copy to bring up to date
            removed, patch = await to_thread.run_sync(
                patch_for, warm.prepared, ws_plan, limiter=self._threads
            )
            raw, back = await run_warm_copy(
                self.api,
                warm,
                plan,
                ws_plan.working_dir,
                keep,
                self._threads,
                encode_patch(removed, patch),
                read_back_of(ws_plan, policy, room, from_stub=True),
                _whole_only,
            )
        except StaleSandbox:
            self.copy_pool.discard(warm, at_once=True)
            self.copy_pool.failed()
            log.info("warm sandbox %s refused its copy; cold", warm.spec.name)
            where = WorkspaceAsk(args.workdir, args.workspace)
            return None, await to_thread.run_sync(self.workspace.plan, where, limiter=self._threads)
        except BaseException:  # cancelled, or failed: the program may still run
            self.copy_pool.discard(warm, at_once=True)
            raise
        self.copy_pool.discard(warm)  # it has ended: removed after the reply
        self.copy_pool.served()
        listed = _listed_chars(plan.limits.output_bytes)
        report = await copy_report(ws_plan, back, self._threads, policy, self._scrub, listed)
        return (raw, report), ws_plan

    @contextlib.asynccontextmanager
    async def _workspace_session(
        self, ws_plan: WorkspacePlan | None, run_id: str, plan: RunPlan
    ) -> AsyncIterator[Session | None]:
        """The run's workspace mounts (None: no workspace), set up and torn down around it."""
        if ws_plan is None:
            yield None
            return
        s = self.settings
        keeper_plan = RunPlan(argv=KEEPER_ARGV, limits=KEEPER_LIMITS, stdin=None)
        keeper = self._spec(keeper_plan, f"{run_id}-keeper", env={})
        # It runs only our own sleep, never the call's code: the daemon's default runtime,
        # because gVisor does not even start within its 8 pids and 32 MiB.
        keeper = replace(keeper, runtime=None, seccomp_json=self._seccomp_json())
        async with open_session(
            ws_plan,
            api=self.api,
            threads=self._threads,
            policy=s.workspace_policy,
            keeper=keeper,
            volume=f"{keeper.name}-ws",
            workdir_mib=plan.limits.workdir_mib,
            scrub=self._scrub,
            listed_chars=_listed_chars(plan.limits.output_bytes),
        ) as ws:
            yield ws

    def runtime(self) -> Runtime:
        """The runtime sandboxes run under, asked of the daemon once it answers. Blocking.

        Raises SandboxUnavailable, with the fix, while the configured one is not there:
        every call is refused rather than run under another.
        """
        if self._runtime is None:
            offered, default = self.api.runtimes()
            self._runtime = choose_runtime(self.settings.runtime, offered, default)
        return self._runtime

    def _spec(
        self,
        plan: RunPlan,
        run_id: str,
        env: Mapping[str, str] | None = None,
        *,
        networked: bool = False,
    ) -> ContainerSpec:
        """The one way this server turns a plan into a container: cold, warm or keeper."""
        s = self.settings
        runtime = self.runtime()  # known by now: asked before any spec is made
        profile = self._seccomp_json()
        return build_spec(
            plan,
            image=s.image,
            run_id=run_id,
            owner=self.owner,
            seccomp_json=for_gvisor(profile) if runtime.gvisor else profile,
            extra_env=self._env if env is None else env,
            runtime=runtime.entry(networked=networked),
            extra_labels=s.labels,
        )

    def _warm_spec(self, run_id: str) -> ContainerSpec | None:
        """A warm sandbox of the default call's shape (None: that shape cannot be warm).

        Built by the same functions as a cold call's spec; blocking (it scans the tree).
        """
        s = self.settings
        stub = RunPlan(argv=STUB_ARGV, limits=s.limits, stdin=None)
        try:
            spec = self._spec(stub, run_id)
            ws_plan = self.workspace.plan(WorkspaceAsk())
        except SandboxError:
            return None
        spec = replace(spec, stdin=True)  # the stub reads its one request from stdin
        if ws_plan is None:
            return spec
        if ws_plan.mode != "ro":
            return None
        mounts = ro_mounts(ws_plan)
        if len(mounts) > 1 and self.runtime().gvisor:
            # gVisor: a masked file replaced on the host shows through in a sandbox that
            # waits (its mask stays mounted, so the stub cannot see it go): with masks,
            # none waits.
            return None
        spec = with_workspace(spec, mounts, WORKDIR)
        try:
            environment = self._environment_now(ws_plan.root)
        except SandboxError:
            return None
        return spec if environment is None else with_environment(spec, environment.id)

    def _prepare_copy(self, warm: Warm) -> PreparedCopy | None:
        """Blocking: send a waiting copy sandbox the tree as it is now (None: the tree no
        longer fits the room it was made for, or no copy can be made of it)."""
        modes = self.settings.workspace_policy.modes
        mode: Mode = "copy" if "copy" in modes else "rw"
        scanned_at = time.time_ns()
        try:
            ws_plan = self.workspace.plan(WorkspaceAsk(mode=mode))
        except SandboxError:
            return None
        room = None if ws_plan is None else warm_copy_room(ws_plan, warm.spec.limits.workdir_mib)
        if ws_plan is None or (WORKDIR, room) not in warm.spec.owned_tmpfs:
            return None
        prepared, archive = prepared_copy(ws_plan, scanned_at)
        warm.streams.send(encode_copy(archive))
        return prepared

    def _warm_copy_spec(self, run_id: str) -> ContainerSpec | None:
        """A warm sandbox for `copy` and `rw` calls of the default limits, its room made for
        the tree as it is now (None: such a call would run cold). Blocking: it scans."""
        s = self.settings
        modes = s.workspace_policy.modes
        mode: Mode | None = "copy" if "copy" in modes else "rw" if "rw" in modes else None
        if mode is None:
            return None
        try:
            if self.runtime().gvisor:
                # gVisor has no MADV_WIPEONFORK: its stub could not keep the nonce from the
                # program, and a copy only comes back from a stub whose nonce is secret.
                return None
        except SandboxError:
            return None
        stub = RunPlan(argv=COPY_STUB_ARGV, limits=s.limits, stdin=None)
        try:
            spec = self._spec(stub, run_id)
            ws_plan = self.workspace.plan(WorkspaceAsk(mode=mode))
            room = None if ws_plan is None else warm_copy_room(ws_plan, s.limits.workdir_mib)
            if ws_plan is None or room is None:
                return None
            environment = self._environment_now(ws_plan.root)
        except SandboxError:
            return None
        spec = replace(with_copy_room(spec, room), stdin=True)
        return spec if environment is None else with_environment(spec, environment.id)

    def _may_start(self) -> bool:
        floor = self.settings.pool.min_available_mib * 1024 * 1024
        return floor == 0 or psutil.virtual_memory().available >= floor

    async def shutdown(self) -> None:
        """Stop the pool, then remove every container, network and volume of this server.

        Calls may still be running (a signal stops the server under them): no call starts a
        sandbox from now on, the first reap kills theirs so they end, and a second one,
        once they have (or after ``SHUTDOWN_WAIT_S``), takes what a create already under way
        made meanwhile.
        """
        self._closing = True
        for pool in (self.pool, self.copy_pool):
            if pool is not None:
                await pool.close()
        await self.reap(own_too=True)
        with anyio.move_on_after(SHUTDOWN_WAIT_S):
            while self._after.in_flight:  # noqa: ASYNC110  # a counter, not an event
                await anyio.sleep(0.05)
        await self.reap(own_too=True)
        discard_blanks()  # no container mounts them any more

    def _refuse_if_closing(self) -> None:
        if self._closing:
            raise SandboxUnavailable("the server is shutting down; no new sandbox is started")

    async def run_background(self) -> None:
        """What runs beside the calls for the server's life: the warm pool, and removals."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._after.run)
            tg.start_soon(self._recover)
            for pool in (self.pool, self.copy_pool):
                if pool is not None:
                    tg.start_soon(pool.run)

    async def _recover(self) -> None:
        """After a call failed as unavailable: if the daemon stopped answering, wait for it;
        then discard the dead warm sandboxes and remove what the failure left behind.

        A restarted daemon kills every container; the calls that ran in them failed, and so
        did their removals (the daemon was gone). Without this, those containers (and a
        copy's volumes) stayed until this server stopped.
        """
        while True:
            await self._daemon_failed.wait()
            self._daemon_failed = anyio.Event()
            if not await self._daemon_answers():
                log.warning("Docker is unreachable; calls fail until it answers again")
                while not await self._daemon_answers():  # noqa: ASYNC110  # no event for it
                    await anyio.sleep(DAEMON_RETRY_S)
                self.outages += 1
            # Even if it answers now, it may not have while the call failed (it hung, say),
            # and that call's removal failed with it.
            back_at = time.time()
            dead = sum(p.drop_dead() for p in (self.pool, self.copy_pool) if p is not None)
            removed = await self._sweep_outage(back_at)
            if dead or removed:
                log.warning(
                    "Docker answers: %d dead warm sandbox(es) discarded, %d object(s) left "
                    "by the failure removed",
                    dead,
                    removed,
                )

    async def _daemon_answers(self) -> bool:
        with anyio.move_on_after(PING_BOUND_S):
            try:
                await to_thread.run_sync(
                    self.api.ping, limiter=self._threads, abandon_on_cancel=True
                )
                return True
            except SandboxUnavailable:
                return False
        return False

    def _warming(self) -> bool:
        """Whether a warm sandbox is being made now."""
        return any(p is not None and p.starting for p in (self.pool, self.copy_pool))

    async def _sweep_outage(self, back_at: float) -> int:
        """Remove our containers that are not running and our volumes, of before ``back_at``,
        once no call is in flight and no warm sandbox is being made (they are then no one's).
        """
        with anyio.move_on_after(SWEEP_WAIT_S) as quiet:
            while self._after.in_flight or self._warming():  # noqa: ASYNC110  # counters, not events
                await anyio.sleep(0.1)
        if quiet.cancelled_caught:
            log.warning("no quiet moment after the outage; what it left goes at shutdown")
            return 0
        try:
            containers = await to_thread.run_sync(
                self.api.labelled_containers, limiter=self._threads
            )
            volumes = await to_thread.run_sync(self.api.labelled_volumes, limiter=self._threads)
        except SandboxUnavailable:
            return 0

        def left(c: ContainerInfo) -> bool:
            return c.labels.get(OWNER_LABEL) == self.owner and c.created_unix < back_at

        doomed = [c.name for c in containers if left(c) and c.state != "running"]
        async with anyio.create_task_group() as tg:
            for name in doomed:
                tg.start_soon(remove_quietly, self.api, name, self._threads)
        gone = [v.name for v in volumes if left(v)]
        for name in gone:
            with anyio.move_on_after(20, shield=True):
                try:
                    await to_thread.run_sync(self.api.remove_volume, name, limiter=self._threads)
                except SandboxUnavailable:
                    pass
        return len(doomed) + len(gone)

    def _result(
        self,
        raw: RawRun,
        run_id: str,
        limits: Limits,
        queued_ms: int,
        tally: EgressTally | None = None,
        workspace: WorkspaceReport | None = None,
        environment: EnvironmentReport = NO_ENVIRONMENT,
        tests: bool = False,
        outputs: bool = False,
    ) -> RunResult:
        budget = limits.output_bytes
        suite = None
        files = ShapedFiles([], {}, [])
        if outputs:
            # As the summary's, the list's room comes out of the streams'.
            files = shape_files(
                parse_frames(list(raw.files)),
                run_id=run_id,
                scrub=self._scrub,
                margin=self._margin,
                images=self.settings.outputs.images,
                room=budget // 2,
            )
            for key, text in files.texts.items():
                self.runs.keep(run_id, f"files/{key}", text)
            budget -= json_chars(
                json.dumps([f.model_dump(mode="json") for f in files.listed], ensure_ascii=False)
            )
        if tests:
            # The summary's room comes out of the streams': the result weighs what it did.
            room = min(SUMMARY_CHARS, budget // 2)
            suite = summarise(dict(raw.reports), self._scrub, room)
            budget -= json_chars(suite.model_dump_json())
        out, err = shape(
            raw.stdout, raw.stderr, budget=budget, scrub=self._scrub, margin=self._margin
        )
        full_output = [
            self._keep_full(run_id, name, capture)
            for name, capture, shaped in (("stdout", raw.stdout, out), ("stderr", raw.stderr, err))
            if shaped.truncated and capture.kept
        ]
        return RunResult(
            exit_code=raw.exit_code,
            timed_out=raw.timed_out,
            oom_killed=raw.oom_killed,
            truncated=out.truncated or err.truncated,
            duration_ms=raw.duration_ms,
            pooled=raw.pooled,
            stdout_bytes=out.original_bytes,
            stderr_bytes=err.original_bytes,
            image=self.settings.image,
            run_id=run_id,
            sandbox=raw.container,
            egress_allowed=tally.allowed if tally else 0,
            # The sandbox picks these names: a secret can ride in one, as in its output.
            egress_denied=[neutralise(self._scrub(d)) for d in tally.denied] if tally else [],
            egress_credentials=list(tally.credentials) if tally else [],
            workspace=workspace,  # its paths were scrubbed before they were cut
            runtime=self._runtime.name if self._runtime is not None else None,
            environment=environment,
            stdout=out.text,
            stderr=err.text,
            queued_ms=queued_ms,
            resources=resources(
                raw.usage,
                wall_ms=raw.duration_ms,
                limits=limits,
                workdir_is_scratch=workspace is None or workspace.mode != "ro",
            ),
            tests=suite,
            full_output=full_output,
            files=files.listed,
            files_note=files.note,
        ).with_images(tuple(files.images))

    def _keep_full(self, run_id: str, name: str, capture: StreamCapture) -> str:
        """Keep the full text of a cut stream (its first ``KEPT_BYTES``); return its URI."""
        text = capture.kept.decode("utf-8", "replace")
        if len(capture.kept) < capture.total:
            text = safe_head(text, self._scrub, self._margin) + (
                f"\n[mcp-sandbox: kept the first {len(capture.kept)} of {capture.total} bytes]\n"
            )
        else:
            text = self._scrub(text)
        self.runs.keep(run_id, name, neutralise(text))
        return output_uri(run_id, name)

    async def reap(self, *, own_too: bool) -> int:
        """Remove labelled containers whose server is gone (and ours, with ``own_too``)."""
        removed = await reap_orphans(self.api, self.owner, self._threads, own_too=own_too)
        max_age_s = self.settings.environment.max_age_days * 86_400
        await env_store.reap_environments(self.api, self._threads, max_age_s)
        return removed

    # --- the workspace's project environment (``environment/``) ---------------------------

    def _environment_now(self, root: Path) -> Environment | None:
        """Blocking: the sealed environment of ``root`` under this server's image, if any
        ("none" may be ``NONE_TTL_S`` old: ``environment/lookup.py`` says why that is safe)."""
        return self._environments.find(str(root), self.settings.image)

    async def _environment_for(
        self, root: Path | None
    ) -> tuple[Environment | None, EnvironmentReport]:
        """The environment a call of the workspace at ``root`` mounts, and what its result
        says of it (None: no workspace, so none)."""
        if root is None:
            return None, NO_ENVIRONMENT
        # Bounded like our own steps, but short: it comes before the run's own bounded steps,
        # so a daemon that stopped answering must not hold the call for a step's whole bound.
        found = await step(
            self._threads, "list the project environments", self._environment_now, root,
            bound_s=ENVIRONMENT_LOOKUP_S,
        )  # fmt: skip
        if found is None:
            return None, NO_ENVIRONMENT
        try:
            manifests = await to_thread.run_sync(
                env_build.manifests_of, self.settings, root, limiter=self._threads
            )
            digest: str | None = env_build.digest_of(self.settings, manifests)
        except RequestRejected:
            digest = None  # unreadable manifests: not the ones it was built from
        state = found.state(digest)
        hint = (
            f"environment is stale: a dependency manifest changed since {found.built_at}; "
            "rebuild it with the prepare_env tool or `mcp-sandbox env build`"
            if state == "stale"
            else None
        )
        return found, EnvironmentReport(
            id=found.id, state=state, built_at=found.built_at, hint=hint
        )

    def _environment_root(self) -> Path:
        root = self.workspace.root
        if root is None:
            raise RequestRejected(
                "this server has no workspace, so no environment (use --workspace PATH)"
            )
        return root

    async def build_environment(self, progress: env_build.Progress) -> env_build.BuildReport:
        """Build the workspace's environment (``environment/build.py`` says how).

        It holds a sandbox slot like a call, waiting for one as long as a build may run.
        Raises RequestRejected, BuildFailed, HostBusy, SandboxUnavailable (under gVisor too:
        the build needs egress to the indexes, which runsc does not have here).
        """
        self._refuse_if_closing()
        root = self._environment_root()
        runtime = await to_thread.run_sync(self.runtime, limiter=self._threads)
        if runtime.gvisor:
            raise SandboxUnavailable(ENVIRONMENT_UNDER_GVISOR)
        ctx = env_build.BuildContext(
            settings=self.settings,
            api=self.api,
            threads=self._threads,
            owner=self.owner,
            seccomp_json=self._seccomp_json(),
            scrub=self._scrub,
            runtime=runtime,
        )
        try:
            async with self.queue.slot(self.settings.environment.timeout_s):
                return await env_build.build_environment(ctx, root, progress)
        finally:  # built, or part-way and removed: calls ask the daemon again
            self._environments.forget()

    async def environment_status(self) -> tuple[Environment | None, EnvironmentReport]:
        """The workspace's environment, as a call would see it now."""
        return await self._environment_for(self._environment_root())

    async def remove_environment(self) -> list[str]:
        """Remove the workspace's environments; returns the volumes removed."""
        root = self._environment_root()
        try:
            return await env_store.remove_environments(
                self.api, self._threads, root, self.settings.image
            )
        finally:
            self._environments.forget()

    async def environments(self) -> list[Environment]:
        """Every sealed environment on this daemon (``doctor`` lists them)."""
        return await env_store.all_environments(self.api, self._threads)


async def reap_orphans(api: Engine, owner: str, threads: CapacityLimiter, *, own_too: bool) -> int:
    """Remove the labelled containers, then networks and volumes, whose server is gone (and
    ``owner``'s own, with ``own_too``). Returns how many containers went."""
    try:
        found = await to_thread.run_sync(api.labelled_containers, limiter=threads)
    except SandboxUnavailable:
        return 0
    now = time.time()
    doomed = []
    for c in found:
        who = c.labels.get(OWNER_LABEL, "")
        if who == owner:
            if own_too:
                doomed.append(c.name)
            continue
        alive = owner_is_alive(who)
        if alive is False or (alive is None and now - c.created_unix > _FOREIGN_GRACE_S):
            doomed.append(c.name)
    async with anyio.create_task_group() as tg:
        for name in doomed:
            tg.start_soon(remove_quietly, api, name, threads)
    # Networks last: one with a container on it cannot go.
    await reap_networks(api, owner, threads, own_too=own_too)
    await reap_volumes(api, threads, owner=owner, own_too=own_too)
    return len(doomed)


def _listed_chars(output_bytes: int) -> int:
    """What a result's workspace change list may take, beside streams of ``output_bytes``."""
    return max(0, min(LISTED_CHARS, RESULT_CHARS - RESERVE_CHARS - output_bytes))


def _whole_only(back: Readback | None) -> bool:
    """Whether a warm copy's read-back counts only with its trailer: an incomplete one (the
    run left more than its bounds) writes nothing, and stands without it."""
    return back is None or back.complete


def _wants_tests(args: CallArgs) -> bool:
    """Whether the call is a test run: asked with ``report="tests"``, or it starts a runner."""
    return args.report == "tests" or bool(wanted_runners(args.source))
