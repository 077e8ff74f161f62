"""One call, start to end: arguments -> policy -> spec -> runner -> output -> result."""

from __future__ import annotations

import contextlib
import logging
import secrets as pysecrets
import time
from collections.abc import AsyncIterator, Callable

import anyio
from anyio import CapacityLimiter, to_thread

from mcp_sandbox import languages
from mcp_sandbox.docker_api import DockerApi
from mcp_sandbox.errors import HostBusy, SandboxUnavailable
from mcp_sandbox.host import owner_is_alive
from mcp_sandbox.output import shape
from mcp_sandbox.policy import decide
from mcp_sandbox.requests import RunCodeArgs, ShellArgs
from mcp_sandbox.results import RunResult
from mcp_sandbox.runner import RawRun, remove_quietly, run_once
from mcp_sandbox.settings import Settings
from mcp_sandbox.spec import OWNER_LABEL, build_spec

log = logging.getLogger("mcp_sandbox")

# A container of another host (a server in compose, say) is only reaped once it is surely
# past any run's deadline.
_FOREIGN_GRACE_S = 600.0


class SandboxService:
    """Runs calls; holds what lives as long as the server: slots, threads, the profile."""

    def __init__(
        self,
        settings: Settings,
        api: DockerApi,
        *,
        seccomp_json: Callable[[], str],
        scrub: Callable[[str], str],
        scrub_margin: int,
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
        self._slots = CapacityLimiter(max_concurrent)
        # Each run holds a stream-pump thread and makes short calls besides.
        self._threads = CapacityLimiter(max_concurrent * 3 + 8)

    async def run_code(self, args: RunCodeArgs) -> RunResult:
        argv = languages.argv_for(args.language, args.code)
        return await self._run(argv, args.code, args.timeout_s, args.stdin)

    async def shell(self, args: ShellArgs) -> RunResult:
        argv = (*languages.SHELL_PREFIX, args.command)
        return await self._run(argv, args.command, args.timeout_s, args.stdin)

    async def _run(
        self, argv: tuple[str, ...], source: str, timeout_s: float | None, stdin: str | None
    ) -> RunResult:
        s = self.settings
        plan = decide(s.limits, s.bounds, argv, source, timeout_s, stdin)
        run_id = pysecrets.token_hex(6)
        spec = build_spec(
            plan,
            image=s.image,
            run_id=run_id,
            owner=self.owner,
            seccomp_json=self._seccomp_json(),
            extra_env=s.env,
            runtime=s.runtime,
            extra_labels=s.labels,
        )
        async with self._slot(plan.limits.timeout_s):
            raw = await run_once(
                self.api, spec, plan.stdin, plan.limits.output_bytes + self._margin, self._threads
            )
        result = self._result(raw, run_id, plan.limits.output_bytes)
        log.info(
            "run %s exit=%s timed_out=%s oom=%s %dms out=%dB err=%dB",
            run_id,
            result.exit_code,
            result.timed_out,
            result.oom_killed,
            result.duration_ms,
            result.stdout_bytes,
            result.stderr_bytes,
        )
        return result

    @contextlib.asynccontextmanager
    async def _slot(self, wait_s: float) -> AsyncIterator[None]:
        """A sandbox slot, or HostBusy once the call has waited as long as it may run."""
        acquired = False
        with anyio.move_on_after(wait_s):
            await self._slots.acquire()
            acquired = True
        if not acquired:
            raise HostBusy(
                f"all {self.max_concurrent} sandbox slots stayed busy for {wait_s:g} s; "
                "try again later"
            )
        try:
            yield
        finally:
            self._slots.release()

    def _result(self, raw: RawRun, run_id: str, budget: int) -> RunResult:
        out, err = shape(
            raw.stdout, raw.stderr, budget=budget, scrub=self._scrub, margin=self._margin
        )
        return RunResult(
            exit_code=raw.exit_code,
            timed_out=raw.timed_out,
            oom_killed=raw.oom_killed,
            truncated=out.truncated or err.truncated,
            duration_ms=raw.duration_ms,
            stdout_bytes=out.original_bytes,
            stderr_bytes=err.original_bytes,
            image=self.settings.image,
            run_id=run_id,
            stdout=out.text,
            stderr=err.text,
        )

    async def reap(self, *, own_too: bool) -> int:
        """Remove labelled containers whose server is gone (and ours, with ``own_too``)."""
        try:
            found = await to_thread.run_sync(self.api.labelled_containers, limiter=self._threads)
        except SandboxUnavailable:
            return 0
        now = time.time()
        doomed = []
        for c in found:
            owner = c.labels.get(OWNER_LABEL, "")
            if owner == self.owner:
                if own_too:
                    doomed.append(c.name)
                continue
            alive = owner_is_alive(owner)
            if alive is False or (alive is None and now - c.created_unix > _FOREIGN_GRACE_S):
                doomed.append(c.name)
        async with anyio.create_task_group() as tg:
            for name in doomed:
                tg.start_soon(remove_quietly, self.api, name, self._threads)
        return len(doomed)
