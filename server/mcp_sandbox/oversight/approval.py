"""Approvals: what a call asks for once its profile is applied, and the question put to the
human through the client (an MCP elicitation) when a rule says ``ask``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from mcp_sandbox.errors import RequestRejected
from mcp_sandbox.policy.arguments import Mode, PrepareEnvArgs, RunCodeArgs, ToolArgs
from mcp_sandbox.policy.escalation import (
    Escalation,
    Profile,
    raised_limits,
    shown_number,
)
from mcp_sandbox.policy.limits import LimitRequest, asked_limits

if TYPE_CHECKING:
    from mcp_sandbox.config.settings import Settings
from typing import Any

from mcp.server.elicitation import (
    AcceptedElicitation,
    CancelledElicitation,
    DeclinedElicitation,
    ElicitationResult,
)
from mcp.server.mcpserver import Context

from mcp_sandbox.config.settings import Settings
from mcp_sandbox.policy.escalation import Answer, Kind, Network, Screening

_SHOWN_HOSTS = 6


def screen(
    settings: Settings, args: ToolArgs, workspace_root: Path | None, *, local: bool = True
) -> Screening:
    """Apply the profile, check what is enabled and bounded, and list the escalations.

    ``local=False``: a launcher runs the call under its own settings, so what it enables
    (egress, the workspace and its modes) is its to check; the escalations are still ours.
    Raises RequestRejected (the caller can fix it) naming what is allowed.
    """
    if isinstance(args, PrepareEnvArgs):
        return _screen_build(settings, args, workspace_root, local=local)
    tools = settings.tools
    if isinstance(args, RunCodeArgs):
        if not tools.run_code.enabled:
            raise RequestRejected("run_code is disabled on this server (tools.run_code.enabled)")
        if args.language not in tools.run_code.languages:
            raise RequestRejected(
                f"language {args.language!r} is not enabled on this server; enabled: "
                f"{', '.join(tools.run_code.languages) or 'none'}"
            )
    elif not tools.shell.enabled:
        raise RequestRejected("shell is disabled on this server (tools.shell.enabled)")

    profile = _profile(settings, args.profile)

    network: Network = args.network if args.network != "none" else (profile.network or "none")
    if network == "egress" and local and not settings.egress.enabled:
        raise RequestRejected(
            'network "egress" is not enabled on this server; its operator can turn it on '
            "with egress.enabled = true (then calls reach only egress.allow)"
        )

    wp = settings.workspace_policy
    mode = args.workspace or profile.workspace
    effective: Mode | None
    if not local:
        effective = mode
    elif workspace_root is None:
        if mode is not None:
            raise RequestRejected(
                "there is no workspace: the server started in / or a home directory; "
                "start it with --workspace PATH"
            )
        effective = None
    else:
        effective = mode or wp.mode
        if effective not in wp.modes:
            raise RequestRejected(
                f"workspace mode {effective!r} is not enabled; allowed: {', '.join(wp.modes)}"
            )

    request = LimitRequest.of(args).filled_from(
        LimitRequest.of(profile)
    )  # the one place they merge
    limits = asked_limits(settings.limits, settings.bounds, request)

    escalations = []
    if network == "egress":
        escalations.append(
            Escalation(
                "egress",
                f"Allow network access to {_hosts(settings.egress.allow)} for this call?",
                profile.network == "egress",
            )
        )
    if effective == "rw":
        escalations.append(
            Escalation(
                "rw",
                f"Allow writes to {workspace_root or 'the workspace'} for this call?",
                profile.workspace == "rw",
            )
        )
    raised = raised_limits(settings.limits, limits)
    if raised:
        shown = ", ".join(f"{shown_number(getattr(limits, n))} {unit}" for n, unit in raised)
        defaults = ", ".join(f"{shown_number(getattr(settings.limits, n))}" for n, _ in raised)
        within = all(
            getattr(profile, n) is not None and getattr(limits, n) <= getattr(profile, n)
            for n, _ in raised
        )
        escalations.append(
            Escalation(
                "limits",
                f"Allow more resources for this call: {shown} (defaults: {defaults})?",
                within,
            )
        )
    return Screening(args.profile, network, effective, mode, limits, request, tuple(escalations))


def _screen_build(
    settings: Settings, args: PrepareEnvArgs, workspace_root: Path | None, *, local: bool
) -> Screening:
    """prepare_env: its one escalation, ``environment``; no limits or mode of the caller's."""
    if local and workspace_root is None:
        raise RequestRejected(
            "there is no workspace, so no environment to prepare; start the server with "
            "--workspace PATH"
        )
    profile = _profile(settings, args.profile)
    build = Escalation(
        "environment",
        "Allow installing this project's dependencies from "
        f"{_hosts(settings.environment.indexes)} into its environment? Their install "
        "scripts run in a sandbox whose only network is those hosts.",
        profile.environment,
    )
    return Screening(args.profile, "none", None, None, settings.limits, LimitRequest(), (build,))


def _profile(settings: Settings, name: str | None) -> Profile:
    """The named profile (none: the empty one). Raises RequestRejected naming the known."""
    if name is None:
        return Profile()
    found = settings.profiles.get(name)
    if found is None:
        names = ", ".join(sorted(settings.profiles)) or "none are configured"
        raise RequestRejected(f"unknown profile; the server's profiles: {names}")
    return found


def _hosts(allow: tuple[str, ...]) -> str:
    shown = ", ".join(allow[:_SHOWN_HOSTS])
    more = len(allow) - _SHOWN_HOSTS
    return f"{shown} and {more} more" if more > 0 else shown or "no host"


def can_allow(settings: Settings, kind: Kind) -> bool:
    """Whether any call could ever be granted ``kind`` (what the tool annotations declare)."""
    if settings.approval.rule(kind) == "deny":
        return False
    if kind == "egress":
        return settings.egress.enabled
    if kind == "rw":
        return "rw" in settings.workspace_policy.modes
    return True


class Approval(BaseModel):
    """The form the human sees: accept or decline, and a box to tick."""

    for_session: bool = Field(
        False,
        title="Also allow this for the rest of this session",
        description="until the server restarts; leave unticked to allow this call only",
    )


@dataclass(frozen=True)
class Verdict:
    """What the resolver concluded without a human's accept: ``None`` when no question was
    needed, else why no human answered (``timeout``, ``unsupported``...)."""

    answer: Answer | None = None


Outcome = ElicitationResult[Approval]


def answer_of(outcome: object) -> Answer | None:
    """The human's answer in what the resolver stage produced; None when nobody answered."""
    if isinstance(outcome, AcceptedElicitation):
        data = outcome.data
        if isinstance(data, Approval):  # only the SDK's elicitation makes one of these
            return "accept_session" if data.for_session else "accept"
        if isinstance(data, Verdict):
            return data.answer
        return None
    if isinstance(outcome, DeclinedElicitation):
        return "decline"
    if isinstance(outcome, CancelledElicitation):
        return "cancel"
    return None


def _can_elicit(ctx: Context[Any, Any]) -> bool:
    """Whether the client declared form elicitation (a bare ``elicitation: {}`` counts)."""
    caps = ctx.client_capabilities
    e = caps.elicitation if caps is not None else None
    return e is not None and (e.form is not None or e.url is None)
