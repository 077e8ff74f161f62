"""The human in the loop, and the record of every call.

Before a call runs, ``approval`` says which escalations it asks for and who decides each;
for ``ask`` this module puts one plain question to the human through the client (an MCP
elicitation, in both protocol eras), with an answer timeout. After it, one audit record and
its anomaly flags (also sent to the client as a warning).

The call's arguments are built once, into one ``RunCodeArgs``, ``ShellArgs`` or
``PrepareEnvArgs``, by a resolver (``run_code_args``): the approval resolver and the tool
read that object, and the SDK runs a resolver once per call. The question rides a resolver
too (``ask_run_code``): on 2026-07-28 connections the SDK returns it inside an
``InputRequiredResult`` and only a reply to the exact question it sealed into
``requestState`` counts; on older ones we send it mid-call.
Anything the resolver concludes by itself (no question needed, no answer in time, a client
that cannot be asked) is a ``Verdict``, a type of ours, so the framework wrapping it as
"accepted" can never pass for a human's accept. Tool arguments only shape *which* question
is asked, never its answer, and the question's text comes from config alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
import warnings
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
from anyio import to_thread
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.elicitation import (
    AcceptedElicitation,
    DeclinedElicitation,
)
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.resolve import Elicit, Resolve
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp_types.version import is_version_at_least

from mcp_sandbox.config.settings import Settings
from mcp_sandbox.errors import ApprovalRefused, SandboxError
from mcp_sandbox.output.result import EnvironmentBuilt, RunResult
from mcp_sandbox.output.shaping import SHAPE_ON_LOOP_BYTES
from mcp_sandbox.oversight.anomalies import SessionHistory
from mcp_sandbox.oversight.approval import Approval, Verdict, _can_elicit, answer_of, screen
from mcp_sandbox.oversight.audit import AuditLog, CallRecord, scrubbed, shown_code
from mcp_sandbox.oversight.metrics import CallMetrics
from mcp_sandbox.policy.arguments import (
    PrepareEnvArgs,
    RunCodeArgs,
    ShellArgs,
    ToolArgs,
    takes_arguments_of,
)
from mcp_sandbox.policy.escalation import (
    Answer,
    Args,
    Kind,
    Screening,
    decide_escalations,
    needs_human,
    question,
)
from mcp_sandbox.workspace.workdir import resolve_workdir

log = logging.getLogger("mcp_sandbox.audit")

# The first protocol revision whose questions ride InputRequiredResult (the SDK's own pin).
_INPUT_REQUIRED_VERSION = "2026-07-28"
# Questions asked on 2026-07-28 connections whose answers have not come back yet.
_MAX_PENDING_QUESTIONS = 1_000

# What a tool's body hands back: a sandbox call's result, or a build's.
Result = TypeVar("Result", RunResult, EnvironmentBuilt)

_OVERSIGHT: weakref.WeakKeyDictionary[MCPServer[Any], Oversight] = weakref.WeakKeyDictionary()


class Oversight:
    """Per server: the audit log, each session's history and grants, pending questions."""

    def __init__(
        self,
        settings: Settings,
        scrub: Callable[[str], str],
        workspace_root: Path | None,
        *,
        local: bool = True,
        metrics: CallMetrics | None = None,
    ) -> None:
        """``local=False``: a launcher runs the calls, and checks its workspace itself.
        ``metrics``, if given, counts every call as its record is written."""
        self.settings = settings
        self.metrics = metrics
        self.local = local
        self.rules = settings.approval
        self.audit = AuditLog(settings.audit)
        self.history = SessionHistory()
        self.root = workspace_root
        self.boot = secrets.token_hex(4)
        self._scrub = scrub
        self._grants: dict[str, set[Kind]] = {}
        self._asked_at: dict[str, deque[float]] = {}

    def attach(self, server: MCPServer[Any]) -> None:
        """Let the resolvers of ``server``'s tools find this object."""
        _OVERSIGHT[server] = self

    def session(self) -> str:
        """This server process (one client on stdio), and the caller's token name on HTTP."""
        token = get_access_token()
        return self.boot if token is None else f"{self.boot}/{token.client_id}"

    def grants(self, session: str) -> frozenset[Kind]:
        return frozenset(self._grants.get(session, ()))

    def screen(self, args: ToolArgs) -> Screening:
        """Raises RequestRejected; a bad ``workdir`` too, so no human is asked in vain."""
        screening = screen(self.settings, args, self.root, local=self.local)
        if self.local and self.root is not None:
            resolve_workdir(self.root, args.workdir)
        return screening

    async def ask(self, ctx: Context[Any, Any], args: ToolArgs) -> Elicit[Approval] | Verdict:
        """The resolver's body: the question for a human, or a Verdict without one."""
        try:
            await to_thread.run_sync(self.audit.check)
            screening = self.screen(args)
        except SandboxError:
            return Verdict()  # the tool refuses it, and records why
        session = self.session()
        needed = needs_human(self.rules, screening.escalations, self.grants(session))
        if not needed:
            return Verdict()
        if not _can_elicit(ctx):
            return Verdict("unsupported")
        message = question(needed)
        version = ctx.protocol_version
        if version is None or not is_version_at_least(version, _INPUT_REQUIRED_VERSION):
            return Verdict(await self._ask_now(ctx, message))
        return self._ask_in_result(ctx, session, message)

    async def _ask_now(self, ctx: Context[Any, Any], message: str) -> Answer:
        """Handshake-era connections: an elicitation request in the middle of the call."""
        with anyio.move_on_after(self.rules.timeout_s):
            try:
                result = await ctx.elicit(message, Approval)
            except Exception:
                log.warning("the client failed to answer the approval question", exc_info=True)
                return "cancel"
            if isinstance(result, AcceptedElicitation) and isinstance(result.data, Approval):
                return "accept_session" if result.data.for_session else "accept"
            return "decline" if isinstance(result, DeclinedElicitation) else "cancel"
        return "timeout"

    def _ask_in_result(
        self, ctx: Context[Any, Any], session: str, message: str
    ) -> Elicit[Approval] | Verdict:
        """2026-07-28: the SDK returns the question in an InputRequiredResult, and the client
        retries the call with the answer. The timeout is ours to keep: when it was asked."""
        params = ctx.request_context.params or {}
        key = hashlib.sha256(
            json.dumps(
                [session, params.get("name"), params.get("arguments"), message],
                sort_keys=True,
                default=str,
            ).encode()
        ).hexdigest()
        now = time.monotonic()
        if ctx.request_state is None:  # the first round: the question goes out now
            self._forget_stale(now)
            self._asked_at.setdefault(key, deque()).append(now)
            return Elicit(message, Approval)
        if ctx.input_responses:
            asked_at = self._asked_at.get(key)
            if not asked_at:
                return Verdict("timeout")  # not asked by this process, or long forgotten
            first = asked_at.popleft()
            if not asked_at:
                del self._asked_at[key]
            if now - first > self.rules.timeout_s:
                return Verdict("timeout")
        return Elicit(message, Approval)

    def _forget_stale(self, now: float) -> None:
        horizon = now - 2 * self.rules.timeout_s
        for key in [k for k, q in self._asked_at.items() if not q or q[-1] < horizon]:
            del self._asked_at[key]
        while len(self._asked_at) >= _MAX_PENDING_QUESTIONS:
            del self._asked_at[next(iter(self._asked_at))]

    async def run(
        self,
        args: Args,
        outcome: object,
        ctx: Context[Any, Any],
        execute: Callable[[Args], Awaitable[Result]],
    ) -> Result:
        """Decide the call's escalations, run it, and record it: every tool's one path, so
        every tool's record has one shape. Raises SandboxError (the refusal or the failure,
        after recording it; AuditUnavailable when it cannot be)."""
        record = CallRecord(self.session(), args, self.settings.image)
        try:
            await to_thread.run_sync(self.audit.check)  # fail closed before anything runs
        except SandboxError as e:
            self._count(record, e, audit_failed=True)
            raise
        try:
            record.screening = screening = self.screen(args)
            grants = self.grants(record.session)
            needed = needs_human(self.rules, screening.escalations, grants)
            answer = answer_of(outcome)
            answers = {e.kind: answer for e in needed} if answer is not None else {}
            record.decisions = decide_escalations(
                self.rules, screening.escalations, answers, grants
            )
            refused = [d for d in record.decisions if not d.allowed]
            if refused:
                raise ApprovalRefused(refused[0].refusal())
            for d in record.decisions:
                if d.answer == "accept_session":
                    self._grants.setdefault(record.session, set()).add(d.kind)
            result = await execute(screening.applied(args))
        except Exception as e:  # ours, or an internal error: recorded, then raised
            record.failed(e)
            await self._write(ctx, record, e)
            raise
        except BaseException as e:  # cancelled: the client gave up, the server is stopping
            record.failed(e)
            with anyio.CancelScope(shield=True):
                await self._write(ctx, record, e)
            raise
        record.finished(result)
        await self._write(ctx, record)
        return result

    def _count(
        self, record: CallRecord, error: BaseException | None, *, audit_failed: bool = False
    ) -> None:
        if self.metrics is not None:
            if audit_failed:
                self.metrics.audit_failures.inc()
            self.metrics.observe(record, error)

    async def _write(
        self, ctx: Context[Any, Any], record: CallRecord, error: BaseException | None = None
    ) -> None:
        """Flag, scrub and append ``record`` (and count it, with the ``error`` that ended
        the call, if any); the flags also go to the client as a warning."""
        result = record.result
        flags = self.history.flags(
            record.session,
            record.kinds,
            record.outcome,
            result.egress_denied if result is not None else (),
            result.stderr if result is not None else "",
        )
        source = record.args.source
        # The code is scrubbed whole (then cut): for long code, off the event loop.
        if len(source) <= SHAPE_ON_LOOP_BYTES:
            code = shown_code(source, self._scrub)
        else:
            code = await to_thread.run_sync(shown_code, source, self._scrub)
        line = scrubbed(record.fields(code, flags), self._scrub)
        self.history.remember(record.session, line)
        try:
            await to_thread.run_sync(self.audit.write, line)
        except BaseException as e:
            self._count(record, error or e, audit_failed=isinstance(e, SandboxError))
            raise
        self._count(record, error)
        if flags:
            await self._warn(ctx, line)

    async def _warn(self, ctx: Context[Any, Any], record: dict[str, Any]) -> None:
        """The flags as a log message to the client (best effort) and in the server's log."""
        text = (
            f"mcp-sandbox: anomaly in a {record['tool']} call"
            f"{' (run ' + record['run_id'] + ')' if record['run_id'] else ''}: "
            f"{', '.join(record['flags'])}"
        )
        log.warning("%s", text)
        try:
            with warnings.catch_warnings():
                # Deprecated in 2026-07-28 (an opt-in per request there); still the channel.
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                sent = ctx.request_context.session.send_log_message(
                    level="warning",
                    data=text,
                    logger="mcp-sandbox.audit",
                    related_request_id=ctx.request_context.request_id,
                )
            await sent
        except Exception:
            log.debug("could not send the anomaly warning to the client", exc_info=True)

    def recent(self) -> list[dict[str, Any]]:
        """This session's recent records, newest last."""
        return self.history.recent_records(self.session())


def _of(ctx: Context[Any, Any]) -> Oversight:
    return _OVERSIGHT[ctx.mcp_server]


@takes_arguments_of(RunCodeArgs)
async def run_code_args(**arguments: Any) -> RunCodeArgs:
    """Resolver of run_code's arguments, as one object (its parameters are the tool's)."""
    return RunCodeArgs(**arguments)


@takes_arguments_of(ShellArgs)
async def shell_args(**arguments: Any) -> ShellArgs:
    """Resolver of shell's arguments, as one object."""
    return ShellArgs(**arguments)


@takes_arguments_of(PrepareEnvArgs)
async def prepare_env_args(**arguments: Any) -> PrepareEnvArgs:
    """Resolver of prepare_env's arguments, as one object."""
    return PrepareEnvArgs(**arguments)


async def ask_run_code(
    ctx: Context[Any, Any], args: Annotated[RunCodeArgs, Resolve(run_code_args)]
) -> Elicit[Approval] | Verdict:
    """Resolver of run_code's approval."""
    return await _of(ctx).ask(ctx, args)


async def ask_shell(
    ctx: Context[Any, Any], args: Annotated[ShellArgs, Resolve(shell_args)]
) -> Elicit[Approval] | Verdict:
    """Resolver of shell's approval."""
    return await _of(ctx).ask(ctx, args)


async def ask_prepare_env(
    ctx: Context[Any, Any], args: Annotated[PrepareEnvArgs, Resolve(prepare_env_args)]
) -> Elicit[Approval] | Verdict:
    """Resolver of prepare_env's approval."""
    return await _of(ctx).ask(ctx, args)
