"""PURE: which escalations a call asks for, and who decides each (config or a human).

An escalation widens what a sandbox can do: ``network="egress"``, ``workspace="rw"``, limits
above the configured defaults, an environment build (``prepare_env``). Each kind has a rule
in config: ``deny``, ``allow`` or ``ask``.
``ask`` means a human answers through the client; nothing in the tool's arguments or the
sandbox's output can answer for them. A profile (config too) pre-approves a shape of work.

What is enabled stays necessary: a rule decides only what ``egress.enabled``,
``workspace_policy.modes`` and the ``bounds`` already let a call ask for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from mcp_sandbox.policy.arguments import Mode, PrepareEnvArgs, RunCodeArgs, ShellArgs
from mcp_sandbox.policy.limits import (
    MIN_CPUS,
    MIN_MEMORY_MIB,
    MIN_OUTPUT_BYTES,
    MIN_TIMEOUT_S,
    LimitRequest,
    Limits,
)

Rule = Literal["deny", "allow", "ask"]
Kind = Literal["egress", "rw", "limits", "environment"]


Network = Literal["none", "egress"]
# What came back from the human: the client's answer, or why there was none.
Answer = Literal["accept", "accept_session", "decline", "cancel", "timeout", "unsupported"]
DecidedBy = Literal["config", "profile", "session", "human"]

Args = TypeVar("Args", RunCodeArgs, ShellArgs, PrepareEnvArgs)

PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


_WHAT: dict[Kind, str] = {
    "egress": "network egress",
    "rw": "workspace writes (rw)",
    "limits": "limits above the defaults",
    "environment": "an environment build",
}
_SIZE_NAMES = (
    ("timeout_s", "s timeout"),
    ("memory_mib", "MiB memory"),
    ("cpus", "CPUs"),
    ("output_bytes", "bytes of output"),
)


class EscalationRules(BaseModel):
    """Who decides each escalation. The defaults ask a human before widening anything."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    egress: Rule = Field("ask", description='network="egress" for a call')
    rw: Rule = Field("ask", description='workspace="rw": writes land in the user\'s files')
    limits: Rule = Field("allow", description="limits above the defaults, up to the maximum")
    environment: Rule = Field(
        "ask", description="prepare_env: a build that installs the project's dependencies"
    )
    timeout_s: float = Field(
        120, gt=0, le=3600, description="how long a question waits for the human's answer"
    )

    def rule(self, kind: Kind) -> Rule:
        rule: Rule = getattr(self, kind)
        return rule


class Profile(BaseModel):
    """A named shape of work a call selects with ``profile``: its values are the call's
    defaults, and what they widen is pre-approved (a rule that denies it still wins)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    description: str = Field("", max_length=200, description="shown to nobody; for the operator")
    timeout_s: float | None = Field(None, ge=MIN_TIMEOUT_S, description="wall-clock limit")
    memory_mib: int | None = Field(None, ge=MIN_MEMORY_MIB, description="memory limit")
    cpus: float | None = Field(None, ge=MIN_CPUS, description="CPU quota")
    output_bytes: int | None = Field(None, ge=MIN_OUTPUT_BYTES, description="output kept")
    workspace: Mode | None = Field(None, description="workspace mode")
    network: Network | None = Field(None, description='"egress" pre-approves the network')
    environment: bool = Field(False, description="true pre-approves prepare_env")


@dataclass(frozen=True)
class Escalation:
    kind: Kind
    question: str  # one plain sentence, shown to the human as is; built from config only
    preapproved: bool = False  # within the profile the call selected


@dataclass(frozen=True)
class Screening:
    """A call after its profile is applied: what it will run with, and what that widens."""

    profile: str | None
    network: Network
    workspace: Mode | None  # the mode it runs in; None: there is no workspace
    asked_workspace: Mode | None  # what the call or its profile asked, to pass on
    limits: Limits
    request: LimitRequest  # what the call and its profile ask, to pass on
    escalations: tuple[Escalation, ...]

    @property
    def kinds(self) -> tuple[Kind, ...]:
        return tuple(e.kind for e in self.escalations)

    def applied(self, args: Args) -> Args:
        """``args`` as they run: the profile's values filled in, so the service needs none.
        A build's are as they came: its profile only ever pre-approves it."""
        if isinstance(args, PrepareEnvArgs):
            return args
        update = {"network": self.network, "workspace": self.asked_workspace}
        return args.model_copy(update={"profile": None, **update, **asdict(self.request)})


@dataclass(frozen=True)
class Decision:
    kind: Kind
    allowed: bool
    by: DecidedBy
    answer: Answer | None = None

    def refusal(self) -> str:
        """The one-line error for a refused escalation: what happened and how to pre-approve."""
        key = f"approval.{self.kind}"
        what = _WHAT[self.kind]
        if self.by == "config":
            return (
                f'{what} refused: the server\'s config denies it ({key} = "deny"); '
                f'its operator may set {key} = "ask" or "allow"'
            )
        why = {
            "decline": "the user declined",
            "cancel": "the user cancelled the question",
            "timeout": "no answer came in time",
            "unsupported": "this client cannot ask the user (no elicitation support)",
        }.get(self.answer or "", "it was not approved")
        return (
            f'{what} refused: {why}; to pre-approve it, set {key} = "allow" in the server\'s '
            "config, or define a profile that includes it and select it with `profile`"
        )

    def as_record(self) -> dict[str, object]:
        return {"kind": self.kind, "allowed": self.allowed, "by": self.by, "answer": self.answer}


def raised_limits(defaults: Limits, limits: Limits) -> list[tuple[str, str]]:
    return [(n, unit) for n, unit in _SIZE_NAMES if getattr(limits, n) > getattr(defaults, n)]


def shown_number(value: float) -> str:
    return f"{value:g}"


def question(escalations: Iterable[Escalation]) -> str:
    """One short statement for the human: each escalation's own sentence."""
    return " ".join(e.question for e in escalations)


def needs_human(
    rules: EscalationRules, escalations: Iterable[Escalation], session_grants: frozenset[Kind]
) -> list[Escalation]:
    """The escalations a human must answer, in order (none when config denies any: the call
    is refused without a question)."""
    escalations = list(escalations)
    if any(rules.rule(e.kind) == "deny" for e in escalations):
        return []
    return [
        e
        for e in escalations
        if rules.rule(e.kind) == "ask" and not e.preapproved and e.kind not in session_grants
    ]


def decide_escalations(
    rules: EscalationRules,
    escalations: Iterable[Escalation],
    answers: Mapping[Kind, Answer],
    session_grants: frozenset[Kind],
) -> list[Decision]:
    """One decision per escalation. Only an explicit accept grants what ``ask`` guards;
    ``deny`` wins over everything, a profile included."""
    decisions = []
    for e in escalations:
        rule = rules.rule(e.kind)
        if rule == "deny":
            decisions.append(Decision(e.kind, False, "config"))
        elif rule == "allow":
            decisions.append(Decision(e.kind, True, "config"))
        elif e.preapproved:
            decisions.append(Decision(e.kind, True, "profile"))
        elif e.kind in session_grants:
            decisions.append(Decision(e.kind, True, "session", "accept_session"))
        else:
            answer = answers.get(e.kind)
            ok = answer in ("accept", "accept_session")
            decisions.append(Decision(e.kind, ok, "human", answer))
    return decisions
