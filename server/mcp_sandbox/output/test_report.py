"""PURE: a test run's machine-readable report (JUnit XML or TAP) -> counts and failures.

The report is the sandbox's: hostile. It is read from bytes of a bounded size; XML with a
document type (where entities live) is refused before the parser sees it, so no entity is
ever expanded, and expat (Python's parser) reads external nothing. Every text that comes
out is scrubbed, neutralised and cut by the caller's budget.
"""

from __future__ import annotations

import binascii
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field

from mcp_sandbox.output.result import FailingTest, SuiteSummary
from mcp_sandbox.output.shaping import fit, json_chars, neutralise

# The most of a report this reads, and the most of one the sandbox ships out (a report that
# long was cut: the wrapper sends its first bytes).
REPORT_MAX_BYTES = 4 * 1024 * 1024
REPORT_SHIPPED_BYTES = 1024 * 1024
# Lines of each failure's text kept, and characters of each line.
FAILURE_LINES = 6
LINE_CHARS = 200
_DOCTYPE = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)


@dataclass(frozen=True)
class Failure:
    """One failing (or erroring) test: its id and the first lines of what it said."""

    test_id: str
    kind: str  # "failed" or "error"
    text: str


@dataclass
class Tally:
    """What a report says, before any cut."""

    passed: int = 0
    failed: int = 0
    skipped: int = 0
    errors: int = 0
    failures: list[Failure] = field(default_factory=list)


class ReportUnreadable(ValueError):
    """The report is not one this reads: too big, a document type, malformed."""


def _first_lines(text: str) -> str:
    lines = [line[:LINE_CHARS] for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[:FAILURE_LINES])


def parse_junit(data: bytes, *, cut: bool = False) -> Tally:
    """Count the ``testcase`` elements of a JUnit XML report (pytest, node, most runners).

    ``cut``: ``data`` is the start of a longer report; the counts are then the suites' own
    (pytest writes them in the ``testsuite`` tag, before its cases) where they say more.
    Raises ReportUnreadable for a report this will not read.
    """
    if len(data) > REPORT_MAX_BYTES:
        raise ReportUnreadable("the report is too large")
    if _DOCTYPE.search(data):
        raise ReportUnreadable("the report declares a document type")
    parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("start", "end"))
    tally = Tally()
    declared = Tally()
    try:
        parser.feed(data)
        if not cut:
            parser.close()
        _read_events(parser, tally, declared)
    except ET.ParseError as e:
        if not cut:
            raise ReportUnreadable("the report is not well-formed XML") from e
        _read_events(parser, tally, declared)
    if cut:
        seen = tally.passed + tally.failed + tally.skipped + tally.errors
        if declared.passed > seen:  # `passed` holds the declared total here
            tally.failed = max(tally.failed, declared.failed)
            tally.errors = max(tally.errors, declared.errors)
            tally.skipped = max(tally.skipped, declared.skipped)
            tally.passed = declared.passed - tally.failed - tally.errors - tally.skipped
    return tally


def _read_events(parser: ET.XMLPullParser[ET.Element], tally: Tally, declared: Tally) -> None:
    """Take the events parsed so far: suite totals as declared, and each finished case."""
    try:
        for item in parser.read_events():
            event, elem = item[0], item[1]  # type: ignore[misc]  # typeshed: a 1-tuple too
            if not isinstance(elem, ET.Element):  # start-ns and end-ns events carry tuples
                continue
            if event == "start" and elem.tag == "testsuite":
                declared.passed += _int(elem.get("tests"))
                declared.failed += _int(elem.get("failures"))
                declared.errors += _int(elem.get("errors"))
                declared.skipped += _int(elem.get("skipped"))
            elif event == "end" and elem.tag == "testcase":
                _count_case(elem, tally)
                elem.clear()
    except ET.ParseError:
        return  # a cut report: what came before the cut is counted


def _int(text: str | None) -> int:
    try:
        return max(0, min(int(text or 0), 1 << 31))
    except ValueError:
        return 0


def _count_case(case: ET.Element, tally: Tally) -> None:
    outcome = "passed"
    detail = ""
    for child in case:
        if child.tag in ("failure", "error"):
            outcome = "failed" if child.tag == "failure" else "error"
            detail = (child.get("message") or "") + "\n" + (child.text or "")
            break
        if child.tag == "skipped":
            outcome = "skipped"
    if outcome == "passed":
        tally.passed += 1
    elif outcome == "skipped":
        tally.skipped += 1
    else:
        if outcome == "failed":
            tally.failed += 1
        else:
            tally.errors += 1
        classname, name = case.get("classname") or "", case.get("name") or ""
        test_id = f"{classname}::{name}" if classname else name
        tally.failures.append(Failure(test_id, outcome, _first_lines(detail)))


_TAP_LINE = re.compile(r"^(\s*)(not ok|ok)\b[ \t]*(\d+)?[ \t]*(?:-[ \t]*)?(.*)$")
_TAP_DIRECTIVE = re.compile(r"#\s*(SKIP|TODO)\b", re.IGNORECASE)


def parse_tap(data: bytes) -> Tally:
    """Count a TAP stream's top-level test points (node's ``tap`` reporter, others).

    Subtests (indented points) count only through their parent, as node reports them. The
    YAML block after a failing point gives its first lines.
    """
    if len(data) > REPORT_MAX_BYTES:
        raise ReportUnreadable("the report is too large")
    text = data.decode("utf-8", "replace")
    tally = Tally()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _TAP_LINE.match(line)
        if m is None:
            continue
        indent, status, _, rest = m.groups()
        if indent:
            continue
        directive = _TAP_DIRECTIVE.search(rest)
        name = rest[: directive.start()].strip() if directive else rest.strip()
        if directive is not None:
            tally.skipped += 1
        elif status == "ok":
            tally.passed += 1
        else:
            tally.failed += 1
            tally.failures.append(Failure(name, "failed", _first_lines(_tap_block(lines, i))))
    return tally


def _tap_block(lines: list[str], at: int) -> str:
    """The location and error of the YAML diagnostics (``---`` to ``...``) after line ``at``."""
    if at + 1 >= len(lines) or lines[at + 1].strip() != "---":
        return ""
    location, error = "", []
    in_error = False
    base = len(lines[at + 1]) - len(lines[at + 1].lstrip())
    for line in lines[at + 2 : at + 400]:
        stripped = line.strip()
        if stripped == "...":
            break
        indent = len(line) - len(line.lstrip())
        if indent <= base and stripped:
            key, _, value = stripped.partition(":")
            in_error = key == "error"
            if key == "location":
                location = value.strip().strip("'")
            elif in_error and value.strip() not in ("|-", "|", ">-", ">"):
                error.append(value.strip().strip("'"))
        elif in_error:
            error.append(stripped)
    return "\n".join(([location] if location else []) + error)


# Which runners a command line starts, and what each writes where: the env carries the flag.
PYTEST_RE = re.compile(r"(^|[\s;&|(/])(py\.test|pytest)(\s|$)|-m\s+pytest\b")
NODE_TEST_RE = re.compile(r"\bnode\b[^;&|\n]*\s--test\b")


def wanted_runners(source: str) -> tuple[str, ...]:
    """The runners ``source`` (the command or code) seems to start: "pytest", "node"."""
    found = []
    if PYTEST_RE.search(source) or "import pytest" in source:
        found.append("pytest")
    if NODE_TEST_RE.search(source):
        found.append("node")
    return tuple(found)


# What a result's `tests` takes as JSON, at most (the caller takes it from the streams).
SUMMARY_CHARS = 8_000
_NO_REPORT = (
    "no report: the runner wrote none (it did not start, was killed, or was given a report "
    "path of its own)"
)


def summarise(
    reports: dict[str, bytes], scrub: Callable[[str], str], room: int = SUMMARY_CHARS
) -> SuiteSummary:
    """The ``tests`` of a result from the reports a run shipped (base64, by name).

    Its JSON weighs at most ``room`` characters (but for a note that says what was left out):
    the counts always, then as many failing tests as fit. Text is scrubbed and neutralised.
    """
    tally = Tally()
    read: list[str] = []
    notes: list[str] = []
    for name in sorted(reports):
        try:
            data = binascii.a2b_base64(reports[name], strict_mode=True)
            # The sandbox ships at most REPORT_SHIPPED_BYTES of a report: one that long is cut.
            cut = len(data) >= REPORT_SHIPPED_BYTES
            one = parse_junit(data, cut=cut) if name.endswith(".xml") else parse_tap(data)
            if cut:
                notes.append(f"{name}: cut at {len(data)} bytes; failures listed from its start")
        except (binascii.Error, ReportUnreadable) as e:
            notes.append(f"{name}: {'not base64' if isinstance(e, binascii.Error) else e}")
            continue
        read.append(name)
        tally.passed += one.passed
        tally.failed += one.failed
        tally.skipped += one.skipped
        tally.errors += one.errors
        tally.failures.extend(one.failures)
    if not read and not notes:
        notes.append(_NO_REPORT)
    summary = SuiteSummary(
        reports=read,
        passed=tally.passed,
        failed=tally.failed,
        skipped=tally.skipped,
        errors=tally.errors,
        note="; ".join(notes) or None,
    )
    failing: list[FailingTest] = []
    used = json_chars(summary.model_dump_json())
    for f in tally.failures:
        test = FailingTest(
            id=fit(neutralise(scrub(f.test_id)), 300, weight=json_chars),
            outcome="failed" if f.kind == "failed" else "error",
            text=neutralise(scrub(f.text)),
        )
        weight = json_chars(test.model_dump_json()) + 1
        if used + weight > room - 60:  # room for the note that says so
            break
        failing.append(test)
        used += weight
    left = len(tally.failures) - len(failing)
    if left:
        notes.append(f"{left} more failing test(s) not listed")
    return summary.model_copy(update={"failing": failing, "note": "; ".join(notes) or None})
