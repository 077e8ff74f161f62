"""The human in the loop, and the record of every call.

Before a call runs, ``approval`` says which escalations it asks for and who decides each;
for ``ask`` this module puts one plain question to the human through the client (an MCP
elicitation, in both protocol eras), with an answer timeout. After it, one audit record and
its anomaly flags (also sent to the client as a warning).

The question rides a resolver (``Annotated[..., Resolve(ask_run_code)]``): on 2026-07-28
connections the SDK returns it inside an ``InputRequiredResult`` and only a reply to the
exact question it sealed into ``requestState`` counts; on older ones we send it mid-call.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
from anyio import to_thread
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.elicitation import (
    AcceptedElicitation,
    DeclinedElicitation,
)
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.resolve import Elicit
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp_types.version import is_version_at_least

from mcp_sandbox.config.settings import Settings
from mcp_sandbox.errors import ApprovalRefused, RequestRejected, SandboxError
from mcp_sandbox.output.result import RunResult
from mcp_sandbox.output.shaping import SHAPE_ON_LOOP_BYTES
from mcp_sandbox.oversight.anomalies import SessionHistory
from mcp_sandbox.oversight.approval import Approval, Verdict, _can_elicit, answer_of, screen
from mcp_sandbox.oversight.audit import AuditLog, code_digest, scrubbed, shown_code
from mcp_sandbox.policy.arguments import Mode, RunCodeArgs, ShellArgs
from mcp_sandbox.policy.escalation import (
    Answer,
    Asked,
    Decision,
    Kind,
    Network,
    Screening,
    decide,
    needs_human,
    question,
)
from mcp_sandbox.policy.languages import Language
from mcp_sandbox.policy.limits import Sizes
from mcp_sandbox.workspace.workdir import resolve_workdir

log = logging.getLogger("mcp_sandbox.audit")

# The first protocol revision whose questions ride InputRequiredResult (the SDK's own pin).
_INPUT_REQUIRED_VERSION = "2026-07-28"
# Questions asked on 2026-07-28 connections whose answers have not come back yet.
_MAX_PENDING_QUESTIONS = 1_000

Args = TypeVar("Args", RunCodeArgs, ShellArgs)


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
    ) -> None:
        """``local=False``: a launcher runs the calls, and checks its workspace itself."""
        self.settings = settings
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

    def screen(self, asked: Asked) -> Screening:
        """Raises RequestRejected; a bad ``workdir`` too, so no human is asked in vain."""
        screening = screen(self.settings, asked, self.root, local=self.local)
        if self.local and self.root is not None:
            resolve_workdir(self.root, asked.workdir)
        return screening

    async def ask(self, ctx: Context[Any, Any], asked: Asked) -> Elicit[Approval] | Verdict:
        """The resolver's body: the question for a human, or a Verdict without one."""
        try:
            await to_thread.run_sync(self.audit.check)
            screening = self.screen(asked)
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
        tool: Literal["run_code", "shell"],
        args: Args,
        outcome: object,
        ctx: Context[Any, Any],
        execute: Callable[[Args], Awaitable[RunResult]],
    ) -> RunResult:
        """Decide the call's escalations, run it, and record it. Raises SandboxError (the
        refusal or the failure, after recording it; AuditUnavailable when it cannot be)."""
        started = time.monotonic()
        session = self.session()
        await to_thread.run_sync(self.audit.check)  # fail closed before anything runs
        asked = asked_of(tool, args)
        screening: Screening | None = None
        decisions: list[Decision] = []
        try:
            screening = self.screen(asked)
            grants = self.grants(session)
            needed = needs_human(self.rules, screening.escalations, grants)
            answer = answer_of(outcome)
            answers = {e.kind: answer for e in needed} if answer is not None else {}
            decisions = decide(self.rules, screening.escalations, answers, grants)
            refused = [d for d in decisions if not d.allowed]
            if refused:
                raise ApprovalRefused(refused[0].refusal())
            for d in decisions:
                if d.answer == "accept_session":
                    self._grants.setdefault(session, set()).add(d.kind)
            result = await execute(_effective(args, screening))
        except SandboxError as e:
            await self._record(ctx, session, tool, args, screening, decisions, started, error=e)
            raise
        except Exception:
            await self._record(
                ctx, session, tool, args, screening, decisions, started, failed="internal error"
            )
            raise
        except BaseException:  # cancelled: the client gave up, the server is stopping
            with anyio.CancelScope(shield=True):
                await self._record(
                    ctx, session, tool, args, screening, decisions, started, failed="cancelled"
                )
            raise
        await self._record(ctx, session, tool, args, screening, decisions, started, result=result)
        return result

    async def _record(
        self,
        ctx: Context[Any, Any],
        session: str,
        tool: str,
        args: RunCodeArgs | ShellArgs,
        screening: Screening | None,
        decisions: list[Decision],
        started: float,
        *,
        result: RunResult | None = None,
        error: SandboxError | None = None,
        failed: str | None = None,
    ) -> None:
        source = args.code if isinstance(args, RunCodeArgs) else args.command
        if result is not None:
            outcome = (
                "timed_out" if result.timed_out else "oom_killed" if result.oom_killed else "exited"
            )
        elif isinstance(error, RequestRejected | ApprovalRefused):
            outcome = "refused"
        elif failed == "cancelled":
            outcome = "cancelled"
        else:
            outcome = "failed"
        flags = self.history.flags(
            session,
            screening.kinds if screening is not None else (),
            outcome,
            result.egress_denied if result is not None else (),
            result.stderr if result is not None else "",
        )
        limits = screening.limits if screening is not None else None
        # The code is scrubbed whole (then cut): for long code, off the event loop.
        if len(source) <= SHAPE_ON_LOOP_BYTES:
            code = shown_code(source, self._scrub)
        else:
            code = await to_thread.run_sync(shown_code, source, self._scrub)
        record: dict[str, Any] = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "session": session,
            "tool": tool,
            "profile": args.profile,
            "language": args.language if isinstance(args, RunCodeArgs) else None,
            "code_sha256": code_digest(source),
            "code": code,
            "workdir": args.workdir,
            "network": screening.network if screening is not None else args.network,
            "workspace": screening.workspace if screening is not None else args.workspace,
            "limits": None
            if limits is None
            else {
                "timeout_s": limits.timeout_s,
                "memory_mib": limits.memory_mib,
                "cpus": limits.cpus,
                "output_bytes": limits.output_bytes,
            },
            "decisions": [d.as_record() for d in decisions],
            "outcome": outcome,
            "error": str(error) if error is not None else failed,
            "run_id": result.run_id if result is not None else None,
            "sandbox": getattr(result, "sandbox", None),
            "image": result.image if result is not None else self.settings.image,
            "exit_code": result.exit_code if result is not None else None,
            "duration_ms": result.duration_ms if result is not None else None,
            "call_ms": int((time.monotonic() - started) * 1000),
            "peak_memory_mib": result.resources.peak_memory_mib
            if result is not None and result.resources is not None
            else None,
            "truncated": result.truncated if result is not None else None,
            "timed_out": result.timed_out if result is not None else None,
            "oom_killed": result.oom_killed if result is not None else None,
            "egress_allowed": result.egress_allowed if result is not None else None,
            "egress_denied": list(result.egress_denied) if result is not None else [],
            "flags": flags,
        }
        record = scrubbed(record, self._scrub)
        self.history.remember(session, record)
        await to_thread.run_sync(self.audit.write, record)
        if flags:
            await self._warn(ctx, record)

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


def asked_of(tool: str, args: RunCodeArgs | ShellArgs) -> Asked:
    return Asked(
        tool,
        args.language if isinstance(args, RunCodeArgs) else None,
        args.profile,
        args.network,
        args.workspace,
        Sizes(args.timeout_s, args.memory_mib, args.cpus, args.output_bytes),
        args.workdir,
    )


def _effective(args: Args, screening: Screening) -> Args:
    """The call as it runs: its profile's values filled in, so the service needs no profile."""
    s = screening.sizes
    return args.model_copy(
        update={
            "profile": None,
            "network": screening.network,
            "workspace": screening.asked_workspace,
            "timeout_s": s.timeout_s,
            "memory_mib": s.memory_mib,
            "cpus": s.cpus,
            "output_bytes": s.output_bytes,
        }
    )


def _of(ctx: Context[Any, Any]) -> Oversight:
    return _OVERSIGHT[ctx.mcp_server]


async def ask_run_code(
    ctx: Context[Any, Any],
    language: Language,
    network: Network,
    workdir: str,
    workspace: Mode | None,
    profile: str | None,
    timeout_s: float | None,
    memory_mib: int | None,
    cpus: float | None,
    output_bytes: int | None,
) -> Elicit[Approval] | Verdict:
    """Resolver of run_code's approval (its parameters are the tool's, by name)."""
    sizes = Sizes(timeout_s, memory_mib, cpus, output_bytes)
    asked = Asked("run_code", language, profile, network, workspace, sizes, workdir)
    return await _of(ctx).ask(ctx, asked)


async def ask_shell(
    ctx: Context[Any, Any],
    network: Network,
    workdir: str,
    workspace: Mode | None,
    profile: str | None,
    timeout_s: float | None,
    memory_mib: int | None,
    cpus: float | None,
    output_bytes: int | None,
) -> Elicit[Approval] | Verdict:
    """Resolver of shell's approval."""
    sizes = Sizes(timeout_s, memory_mib, cpus, output_bytes)
    asked = Asked("shell", None, profile, network, workspace, sizes, workdir)
    return await _of(ctx).ask(ctx, asked)
