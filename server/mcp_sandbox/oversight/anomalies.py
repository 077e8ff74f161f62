"""Anomaly flags: what each session has done so far, and what about a call stands out."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mcp_sandbox.policy.egress_rules import PLACEHOLDER_REFUSAL

RECENT_PER_SESSION = 50
# Calls of a session the "repeated timeouts or OOMs" flag looks back over, and how many.
_OUTCOME_WINDOW = 10
_REPEATED = 3
# Signs in stderr that seccomp refused a syscall: EPERM from the profile, SIGSYS for the
# closed 32-bit ABIs, ENOSYS for clone3 (libc falls back quietly, so that one rarely shows).
_SECCOMP_SIGNS = ("Operation not permitted", "Bad system call")


@dataclass
class SessionHistory:
    """What each session has done so far: the memory behind the anomaly flags, and the
    recent records the session's MCP resource shows."""

    escalations: dict[str, set[str]] = field(default_factory=dict)
    outcomes: dict[str, deque[str]] = field(default_factory=dict)
    recent: dict[str, deque[dict[str, Any]]] = field(default_factory=dict)

    def flags(
        self,
        session: str,
        asked: Iterable[str],
        outcome: str,
        egress_denied: Iterable[str],
        stderr: str,
    ) -> list[str]:
        """Anomaly flags for one call; updates the session's history.

        ``asked``: the escalations the call asked for; ``outcome``: "exited",
        "timed_out", "oom_killed" or "refused".
        """
        flags = []
        denied = list(egress_denied)
        if any(denied):
            flags.append("egress_outside_allowlist")
        if any(d.endswith(f"({PLACEHOLDER_REFUSAL})") for d in denied):
            flags.append("credential_placeholder_to_another_host")
        seen = self.escalations.setdefault(session, set())
        asked = list(asked)
        flags.extend(f"new_escalation:{k}" for k in asked if k not in seen)
        seen.update(asked)
        window = self.outcomes.setdefault(session, deque(maxlen=_OUTCOME_WINDOW))
        window.append(outcome)
        bad = ("timed_out", "oom_killed")
        if outcome in bad and sum(o in bad for o in window) >= _REPEATED:
            flags.append("repeated_timeouts_or_ooms")
        if any(sign in stderr for sign in _SECCOMP_SIGNS):
            flags.append("seccomp_refusal")
        return flags

    def remember(self, session: str, record: dict[str, Any]) -> None:
        self.recent.setdefault(session, deque(maxlen=RECENT_PER_SESSION)).append(record)

    def recent_records(self, session: str) -> list[dict[str, Any]]:
        return list(self.recent.get(session, ()))
