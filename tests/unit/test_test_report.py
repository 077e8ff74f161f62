"""A test runner's report -> counts and failing tests: read safely, bounded, scrubbed."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_sandbox.output.shaping import json_chars
from mcp_sandbox.output.test_report import (
    ReportUnreadable,
    parse_junit,
    parse_tap,
    summarise,
    wanted_runners,
)

JUNIT = b"""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="4">
<testcase classname="test_a" name="test_ok" time="0.001"/>
<testcase classname="test_a" name="test_bad" time="0.001"><failure message="assert 1 == 2">
def test_bad():
&gt;       assert 1 == 2
E       assert 1 == 2</failure></testcase>
<testcase classname="test_a" name="test_skip"><skipped message="no"/></testcase>
<testcase classname="test_a" name="test_err"><error message="fixture broke">boom</error></testcase>
</testsuite></testsuites>"""

TAP = b"""TAP version 13
# Subtest: one fails
not ok 1 - one fails
  ---
  duration_ms: 5.0
  location: '/tmp/f.test.js:2:1'
  failureType: 'testCodeFailure'
  error: |-
    Expected values to be strictly equal:

    1 !== 2

  code: 'ERR_ASSERTION'
  ...
# Subtest: outer
    ok 1 - inner
ok 2 - outer
ok 3 - skipped # SKIP
ok 4 - later # TODO not yet
1..4
"""


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_junit_counts_every_outcome_and_names_the_failures() -> None:
    t = parse_junit(JUNIT)
    assert (t.passed, t.failed, t.skipped, t.errors) == (1, 1, 1, 1)
    assert [(f.test_id, f.kind) for f in t.failures] == [
        ("test_a::test_bad", "failed"),
        ("test_a::test_err", "error"),
    ]
    assert t.failures[0].text.startswith("assert 1 == 2\ndef test_bad():\n>       assert")


def test_tap_counts_top_level_points_and_keeps_the_error() -> None:
    t = parse_tap(TAP)
    assert (t.passed, t.failed, t.skipped, t.errors) == (1, 1, 2, 0)
    assert t.failures[0].test_id == "one fails"
    assert t.failures[0].text == (
        "/tmp/f.test.js:2:1\nExpected values to be strictly equal:\n1 !== 2"
    )


@pytest.mark.parametrize(
    "evil",
    [
        b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;">]>'
        b"<testsuite><testcase name='&b;'/></testsuite>",
        b'<!DOCTYPE x SYSTEM "file:///etc/passwd"><testsuite/>',
        b"<testsuite><testcase",
        b"x" * (4 * 1024 * 1024 + 1),
    ],
    ids=["entities", "external", "malformed", "huge"],
)
def test_a_hostile_report_is_refused_not_expanded(evil: bytes) -> None:
    with pytest.raises(ReportUnreadable):
        parse_junit(evil)


def test_a_summary_says_when_there_is_no_report_or_a_bad_one() -> None:
    none = summarise({}, str)
    assert none.reports == [] and none.note is not None and "no report" in none.note
    bad = summarise({"pytest.xml": b"!!!"}, str)
    assert bad.note == "pytest.xml: not base64"


def test_failures_are_scrubbed_and_neutralised() -> None:
    xml = (
        "<testsuite><testcase classname='c' name='t\u202eevil'>"
        "<failure message='token sk-SECRET'>x</failure></testcase></testsuite>"
    ).encode()
    s = summarise({"pytest.xml": _b64(xml)}, lambda t: t.replace("sk-SECRET", "[redacted]"))
    assert s.failing[0].id == "c::t\ufffdevil"
    assert "sk-SECRET" not in s.model_dump_json() and "[redacted]" in s.failing[0].text


@given(st.integers(1, 3000), st.integers(0, 60_000))
def test_a_summary_of_many_failures_fits_its_room_with_every_count(n: int, room: int) -> None:
    body = "line\n" * 20
    cases = "".join(
        f"<testcase classname='m' name='t{i}'><failure message='m{i}'>{body}</failure></testcase>"
        for i in range(n)
    )
    xml = f"<testsuite>{cases}</testsuite>".encode()
    s = summarise({"pytest.xml": _b64(xml)}, str, room)
    assert s.failed == n
    assert json_chars(s.model_dump_json()) <= max(room, 400)
    assert len(s.failing) == n or (s.note or "").endswith("not listed")
    assert json.loads(s.model_dump_json())["failed"] == n


@pytest.mark.parametrize(
    ("source", "runners"),
    [
        ("python3 -m pytest -q", ("pytest",)),
        ("cd x && pytest tests/", ("pytest",)),
        ("node --test", ("node",)),
        ("node --test test/ && pytest", ("pytest", "node")),
        ("echo pytesting; node -e 1", ()),
    ],
)
def test_runners_are_detected_from_the_command(source: str, runners: tuple[str, ...]) -> None:
    assert wanted_runners(source) == runners


def test_a_cut_junit_report_takes_its_counts_from_the_suite_tag() -> None:
    cases = "".join(
        f"<testcase classname='m' name='t{i}'><failure message='no'>{'x' * 900}</failure>"
        "</testcase>"
        for i in range(3000)
    )
    xml = "<testsuites><testsuite tests='3001' failures='3000' errors='0' skipped='0'>"
    whole = (xml + cases + "<testcase name='ok'/></testsuite></testsuites>").encode()
    t = parse_junit(whole[: 1024 * 1024], cut=True)
    assert (t.passed, t.failed, t.errors, t.skipped) == (1, 3000, 0, 0)
    s = summarise({"pytest.xml": _b64(whole[: 1024 * 1024])}, str)
    assert s.failed == 3000 and s.note is not None and "cut at" in s.note
