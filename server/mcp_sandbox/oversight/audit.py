"""The audit trail: one JSON line per call, rotated by size, and the CLI's view of it.

Writing fails closed: a call whose record cannot be written is refused, because a
sandbox that runs unrecorded is not the sandbox the operator configured.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from mcp_sandbox.config.audit import AuditSettings, default_audit_path
from mcp_sandbox.errors import ApprovalRefused, RequestRejected, SandboxError, SandboxUnavailable
from mcp_sandbox.output.result import EnvironmentBuilt, RunResult
from mcp_sandbox.output.shaping import neutralise
from mcp_sandbox.policy.arguments import PrepareEnvArgs, RunCodeArgs, ToolArgs
from mcp_sandbox.policy.escalation import Decision, Kind, Screening

SHOWN_CODE_CHARS = 400


# Lone surrogates (JSON "\ud800" decodes to one) cannot be printed as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")

log = logging.getLogger("mcp_sandbox.audit")


class AuditUnavailable(SandboxUnavailable):
    """The audit log cannot be written: calls fail closed."""


class AuditLog:
    """Appends records; rotates ``path`` -> ``path.1`` -> ... past ``max_bytes``.

    Each record is one ``write`` of one line under an exclusive ``flock``, so records of
    concurrent calls (threads, or other servers on the same file) never interleave.
    """

    def __init__(self, settings: AuditSettings) -> None:
        self.path = settings.path or default_audit_path()
        self._max = settings.max_bytes
        self._backups = settings.backups
        self._lock = threading.Lock()

    def check(self) -> None:
        """Raise AuditUnavailable unless a record could be appended now."""
        try:
            os.close(self._open())
        except OSError as e:
            raise AuditUnavailable(self._unwritable(e)) from None

    def write(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` as one line. Raises AuditUnavailable. Blocking.

        ASCII only: JSON escapes every other character, so no line or paragraph separator
        (U+2028, U+0085, ...) that a reader might split on can land inside a record.
        """
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        try:
            with self._lock:
                fd = self._locked()
                try:
                    size = os.fstat(fd).st_size
                    if size and size + len(line) > self._max:
                        self._rotate()
                        os.close(fd)
                        fd = self._locked()
                    written = os.write(fd, line)
                    if written != len(line):
                        raise OSError(0, "short write")
                finally:
                    os.close(fd)
        except OSError as e:
            raise AuditUnavailable(self._unwritable(e)) from None

    def _locked(self) -> int:
        """The current file, opened and exclusively locked (another server may have rotated
        it while we waited: then the new one)."""
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def _open(self) -> int:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The records hold (scrubbed) code and paths: the user's eyes only.
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def _rotate(self) -> None:
        for i in range(self._backups - 1, 0, -1):
            older = self._backup(i)
            if older.exists():
                older.replace(self._backup(i + 1))
        self.path.replace(self._backup(1))

    def _backup(self, i: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{i}")

    def _unwritable(self, e: OSError) -> str:
        return (
            f"audit log {self.path} cannot be written ({e.strerror or e}); calls are refused "
            "until it can (set audit.path to a writable file)"
        )

    def records(self) -> Iterator[dict[str, Any]]:
        """Every record, oldest first, rotated files included.

        Lines end at ``\\n`` only. A line that is not a JSON object is skipped with a
        warning that counts them, so that no record vanishes unnoticed.
        """
        for path in [*(self._backup(i) for i in range(self._backups, 0, -1)), self.path]:
            try:
                data = path.read_bytes()
            except OSError:
                continue
            bad = 0
            for line in data.split(b"\n"):
                try:
                    rec = json.loads(line.decode("utf-8", errors="replace"))
                except ValueError:
                    rec = None
                if isinstance(rec, dict):
                    yield rec
                elif line:  # the empty piece after the last newline is no line
                    bad += 1
            if bad:
                log.warning("%d unreadable audit lines skipped in %s", bad, path)


# "built": a prepare_env call's environment is ready.
Outcome = Literal["exited", "timed_out", "oom_killed", "built", "refused", "failed", "cancelled"]
# Where a build's network goes: the configured indexes, never a caller's choice.
BUILD_NETWORK = "environment.indexes"


@dataclass
class CallRecord:
    """One call's audit record, filled in as the call proceeds: what it asked, how it was
    screened and decided, then its result or why it has none. ``fields()`` is the JSON line."""

    session: str
    args: ToolArgs  # as the caller sent them: the profile not applied
    image: str  # the configured one, until a result names the one that ran
    started: float = field(default_factory=time.monotonic)
    screening: Screening | None = None
    decisions: list[Decision] = field(default_factory=list)
    result: RunResult | None = None
    outcome: Outcome = "failed"
    error: str | None = None

    def finished(self, result: RunResult | EnvironmentBuilt) -> None:
        """A sandbox call's result (kept for the record), or a build's (its outcome only)."""
        if isinstance(result, EnvironmentBuilt):
            self.outcome = "built"
            return
        self.result = result
        self.outcome = (
            "timed_out" if result.timed_out else "oom_killed" if result.oom_killed else "exited"
        )

    def failed(self, error: BaseException) -> None:
        """Why the call has no result: refused, failed (our words, or "internal error" for
        anything else) or cancelled (the client gave up, the server is stopping)."""
        if isinstance(error, RequestRejected | ApprovalRefused):
            self.outcome, self.error = "refused", str(error)
        elif isinstance(error, SandboxError):
            self.outcome, self.error = "failed", str(error)
        elif isinstance(error, Exception):
            self.outcome, self.error = "failed", "internal error"
        else:
            self.outcome, self.error = "cancelled", "cancelled"

    @property
    def kinds(self) -> tuple[Kind, ...]:
        """The escalations the call asked for (none known before it was screened)."""
        return self.screening.kinds if self.screening is not None else ()

    def fields(self, code: str, flags: list[str]) -> dict[str, Any]:
        """The record as the log keeps it, ``code`` already shown (scrubbed and cut).

        A build (prepare_env) has the same keys: no code, the workspace root, the indexes
        for its network, and no mode, limits or run of the caller's.
        """
        args, screening, result = self.args, self.screening, self.result
        build = isinstance(args, PrepareEnvArgs)
        network: str
        if isinstance(args, PrepareEnvArgs):
            network, workspace, limits = BUILD_NETWORK, None, None
        elif screening is not None:
            network, workspace, limits = screening.network, screening.workspace, screening.limits
        else:
            network, workspace, limits = args.network, args.workspace, None
        return {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "session": self.session,
            "tool": args.tool,
            "profile": args.profile,
            "language": args.language if isinstance(args, RunCodeArgs) else None,
            "code_sha256": None if build else code_digest(args.source),
            "code": code,
            "workdir": args.workdir,
            "network": network,
            "workspace": workspace,
            "limits": None
            if limits is None
            else {
                "timeout_s": limits.timeout_s,
                "memory_mib": limits.memory_mib,
                "cpus": limits.cpus,
                "output_bytes": limits.output_bytes,
            },
            "decisions": [d.as_record() for d in self.decisions],
            "outcome": self.outcome,
            "error": self.error,
            "run_id": result.run_id if result is not None else None,
            "sandbox": getattr(result, "sandbox", None),
            "image": result.image if result is not None else self.image,
            "runtime": result.runtime if result is not None else None,
            "exit_code": result.exit_code if result is not None else None,
            "duration_ms": result.duration_ms if result is not None else None,
            "call_ms": int((time.monotonic() - self.started) * 1000),
            "peak_memory_mib": result.resources.peak_memory_mib
            if result is not None and result.resources is not None
            else None,
            "truncated": result.truncated if result is not None else None,
            "timed_out": result.timed_out if result is not None else None,
            "oom_killed": result.oom_killed if result is not None else None,
            "egress_allowed": result.egress_allowed if result is not None else None,
            "egress_denied": list(result.egress_denied) if result is not None else [],
            "egress_credentials": list(result.egress_credentials) if result is not None else [],
            "flags": flags,
        }


def code_digest(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()


def shown_code(source: str, scrub: Callable[[str], str]) -> str:
    """A scrubbed, shortened copy of the code for the record (scrubbed whole, then cut)."""
    text = scrub(source)
    return text if len(text) <= SHOWN_CODE_CHARS else text[:SHOWN_CODE_CHARS] + "…"


def scrubbed(value: Any, scrub: Callable[[str], str]) -> Any:
    """``value`` with every string in it, keys included, passed through ``scrub``."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {scrub(str(k)): scrubbed(v, scrub) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrubbed(v, scrub) for v in value]
    return value


def matches(
    record: Mapping[str, Any],
    *,
    session: str | None = None,
    tool: str | None = None,
    flag: str | None = None,
) -> bool:
    """Whether ``record`` passes the CLI's filters (``flag`` matches a flag or its prefix)."""
    if session is not None and record.get("session") != session:
        return False
    if tool is not None and record.get("tool") != tool:
        return False
    if flag is not None:
        flags = record.get("flags") or []
        return any(f == flag or str(f).startswith(flag + ":") for f in flags)
    return True


def _cell(value: object) -> str:
    """``value`` as one line that cannot drive a terminal (the record holds model-written
    text): controls and bidi characters made visible, whitespace runs and line breaks one
    space."""
    return " ".join(_SURROGATE.sub("\ufffd", neutralise(str(value))).split())


def render_table(records: Iterable[Mapping[str, Any]]) -> str:
    """One line per record: the columns an operator scans first; every cell made safe."""
    header = ("time", "session", "tool", "outcome", "exit", "ms", "decisions", "flags", "code")
    rows = [header]
    for r in records:
        decisions = " ".join(
            f"{d.get('kind')}:{'ok' if d.get('allowed') else 'no'}({d.get('by')})"
            for d in r.get("decisions") or []
        )
        rows.append(
            (
                _cell(r.get("ts", ""))[:19],
                _cell(r.get("session", "")),
                _cell(r.get("tool", "")),
                _cell(r.get("outcome", "")),
                "" if r.get("exit_code") is None else _cell(r.get("exit_code")),
                "" if r.get("duration_ms") is None else _cell(r.get("duration_ms")),
                _cell(decisions) or "-",
                _cell(",".join(map(str, r.get("flags") or []))) or "-",
                _cell(r.get("code") or "")[:40],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    )
