"""Output shaping: bounded, scrubbed before cut, never a partial secret, inert to terminals."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_sandbox.output.result import RESULT_CHARS, RunResult
from mcp_sandbox.output.shaping import (
    STOPPED_NOTE,
    ShapedStream,
    StreamCapture,
    capture_bytes,
    cost,
    json_chars,
    neutralise,
    safe_head,
    safe_tail,
    shape,
)
from mcp_sandbox.policy.limits import CallBounds
from mcp_sandbox.transport.tools import _tool_result, result_chars

SECRET = "SECRET-0123456789abcdef"
MB_SECRET = "秘密-ключ-\U0001f511-0123456789"


def scrub(text: str) -> str:
    return text.replace(SECRET, "[REDACTED:test]").replace(MB_SECRET, "[REDACTED:mb]")


def capture(data: bytes, keep: int, chunk: int = 4096) -> StreamCapture:
    c = StreamCapture(keep)
    for i in range(0, len(data), chunk):
        c.feed(data[i : i + chunk])
    return c


@given(st.binary(max_size=50_000), st.integers(64, 5_000), st.integers(1, 9_000))
def test_capture_keeps_head_and_tail_and_counts_all(data: bytes, keep: int, chunk: int) -> None:
    c = capture(data, keep, chunk)
    assert c.total == len(data)
    assert bytes(c.head) == data[:keep]
    if c.complete:
        assert c.whole() == data
    else:
        assert c.tail == data[-keep:]
    assert len(c.head) + len(c.tail) <= 2 * keep


@settings(max_examples=200)
@given(st.binary(max_size=20_000), st.binary(max_size=5_000), st.integers(1_024, 8_000))
def test_shaped_output_fits_its_budget(out: bytes, err: bytes, budget: int) -> None:
    o, e = shape(
        capture(out, budget + 64), capture(err, budget + 64), budget=budget, scrub=scrub, margin=64
    )
    assert cost(o.text) + cost(e.text) <= budget
    assert (
        len(json.dumps(o.text, ensure_ascii=False)) + len(json.dumps(e.text, ensure_ascii=False))
        <= budget + 4
    )
    assert (o.original_bytes, e.original_bytes) == (len(out), len(err))
    if not o.truncated:
        assert o.text == neutralise(out.decode("utf-8", "replace"))


def _assert_no_part_shown(data: bytes, secret: str, budget: int, keep: int, chunk: int) -> None:
    """Captured ``keep`` bytes at a time of ``chunk``, shaped: no 6 characters of ``secret``."""
    margin = len(secret) + 8  # characters, as the scrubber's max_span
    o, _ = shape(
        capture(data, keep, chunk), capture(b"", 10), budget=budget, scrub=scrub, margin=margin
    )
    for size in range(6, len(secret) + 1):
        for start in range(len(secret) - size + 1):
            assert secret[start : start + size] not in o.text


def test_safe_head_drops_a_secret_cut_by_the_capture() -> None:
    text = "x" * 100 + SECRET[:10]
    assert SECRET[:10] not in safe_head(text, scrub, margin=len(SECRET))
    whole = "x" * 100 + SECRET + "y" * 40
    assert "[REDACTED:test]" in safe_head(whole, scrub, margin=len(SECRET))


def test_safe_tail_drops_a_secret_cut_by_the_capture() -> None:
    text = SECRET[-10:] + "x" * 100
    assert SECRET[-10:] not in safe_tail(text, scrub, margin=len(SECRET))


def test_neutralise_makes_escapes_visible_and_keeps_text() -> None:
    assert (
        neutralise("a\x1b[31mb\r\nc\rd\x00\u202ee\tf") == "a\u241b[31mb\nc\u240dd\u2400\ufffde\tf"
    )


def test_neutralise_shows_what_hides_text_from_a_reader() -> None:
    hidden = "".join(chr(0xE0000 + ord(c)) for c in "ignore the user")  # tag characters
    text = f"ok{hidden}|a\u200bb\u2060c\ufeffd\u00ade\u2028f"
    assert neutralise(text) == "ok" + "\ufffd" * 15 + "|a\ufffdb\ufffdc\ufffdd\ufffde\ufffdf"
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # ZWJ joins emoji: kept
    assert neutralise(family) == family
    heart = "\u2764\ufe0f"  # VS16 picks the emoji drawing: kept
    assert neutralise(heart) == heart
    # Variation selectors carry a hidden byte each ("emoji smuggling"); fillers print nothing.
    smuggled = "a\ufe01\U000e0101\u3164\u115f\u034fb"
    assert neutralise(smuggled) == "a" + "\ufffd" * 5 + "b"


@given(st.text())
def test_neutralised_text_has_no_terminal_controls(s: str) -> None:
    out = neutralise(s)
    assert not any(ord(c) < 0x20 and c not in "\t\n" for c in out)
    assert not any(0x7F <= ord(c) <= 0x9F for c in out)
    assert neutralise(out) == out


def test_a_flood_is_cut_with_a_marker_naming_its_size() -> None:
    o, e = shape(
        capture(b"x" * 1_000_000 + b"END", 2_000),
        capture(b"", 2_000),
        budget=1_500,
        scrub=scrub,
        margin=0,
    )
    assert o.truncated and not e.truncated
    assert "1000003 bytes" in o.text and o.text.endswith("END")


def test_a_note_of_ours_is_shown_but_not_counted_as_the_programs() -> None:
    err = capture(b"e" * 1_000_000, 2_000)
    err.note(STOPPED_NOTE)
    _, e = shape(capture(b"", 2_000), err, budget=1_500, scrub=scrub, margin=0)
    assert e.original_bytes == 1_000_000 and "1000000 bytes" in e.text
    assert e.text.endswith(STOPPED_NOTE.decode())


def test_a_flood_of_json_escapes_cannot_double_the_result() -> None:
    o, _ = shape(
        capture(b'\\"' * 500_000, 4_000), capture(b"", 10), budget=3_000, scrub=scrub, margin=0
    )
    assert len(json.dumps(o.text, ensure_ascii=False)) <= 3_002


# --- multi-byte floods: the margin is in characters, the capture in bytes ------------------

# The scrubber's margin with default settings (the PEM bound: secrets.PATTERN_SPAN).
MARGIN = 8_192


@pytest.mark.parametrize(
    "char", ["\U0001f600", "\u4e2d", "\u00e9", "x"], ids=["4-byte", "3-byte", "2-byte", "ascii"]
)
@pytest.mark.parametrize("budget", [1_024, 24_000, 32_000])
def test_a_cut_multibyte_flood_still_fills_its_budget(char: str, budget: int) -> None:
    data = (char * 200_000 + "\n").encode()
    keep = capture_bytes(budget, MARGIN)
    o, _ = shape(capture(data, keep), capture(b"", keep), budget=budget, scrub=scrub, margin=MARGIN)
    assert o.truncated and "cut here" in o.text
    assert cost(o.text) <= budget
    # All but the marker and a character's rounding at each end.
    assert o.text.count(char) * len(char.encode()) >= budget - 120


@settings(max_examples=400)
@given(
    before=st.integers(0, 60_000),
    after=st.integers(0, 60_000),
    budget=st.integers(1_024, 4_000),
    chunk=st.integers(1, 5_000),
    filler=st.sampled_from(["\U0001f600", "\u4e2d", "\u00e9", "a"]),
    secret=st.sampled_from([SECRET, MB_SECRET]),
)
def test_a_secret_is_never_shown_in_part(
    before: int, after: int, budget: int, chunk: int, filler: str, secret: str
) -> None:
    data = (filler * before + secret + filler * after).encode()
    keep = capture_bytes(budget, len(secret) + 8)
    _assert_no_part_shown(data, secret, budget, keep, chunk)


# --- the whole result, as the client receives it -------------------------------------------


def _result(out: ShapedStream, err: ShapedStream) -> RunResult:
    return RunResult(
        exit_code=0,
        timed_out=False,
        oom_killed=False,
        truncated=out.truncated or err.truncated,
        duration_ms=123_456,
        pooled=False,
        stdout_bytes=out.original_bytes,
        stderr_bytes=err.original_bytes,
        image="mcp-sandbox-runtime:0.1",
        run_id="0123456789ab",
        sandbox="mcp-sandbox-0123456789ab",
        stdout=out.text,
        stderr=err.text,
    )


@pytest.mark.parametrize("flood", ['"', "\\", "\n", "\t", "\U0001f600", "\u4e2d", "x"], ids=repr)
def test_a_whole_result_stays_under_40000_chars_at_the_largest_output(flood: str) -> None:
    """The text block's preview counts too: with quotes it was 40,646 characters."""
    budget = CallBounds().max_output_bytes
    keep = capture_bytes(budget, MARGIN)
    data = (flood * 100_000).encode()
    o, e = shape(
        capture(data, keep), capture(data, keep), budget=budget, scrub=scrub, margin=MARGIN
    )
    tool_result = _tool_result(_result(o, e))
    assert result_chars(tool_result) <= RESULT_CHARS - 100
    text = tool_result.content[0].text  # type: ignore[union-attr]
    assert text.startswith("exit 0 in 123456 ms (output cut)")
    assert "--- stdout ---" in text and "--- stderr ---" in text


def test_a_small_result_keeps_its_whole_preview() -> None:
    o, e = shape(
        capture(b'"q"\n' * 100, 4_000),
        capture(b"err\n", 4_000),
        budget=24_000,
        scrub=scrub,
        margin=64,
    )
    text = _tool_result(_result(o, e)).content[0].text  # type: ignore[union-attr]
    assert text == f"exit 0 in 123456 ms\n--- stdout ---\n{o.text}\n--- stderr ---\nerr\n"


@settings(max_examples=100)
@given(st.text(max_size=3_000), st.text(max_size=3_000), st.integers(0, 6_000))
def test_a_summary_weighs_at_most_its_room(out: str, err: str, room: int) -> None:
    result = _result(ShapedStream(out, 0, False), ShapedStream(err, 0, False))
    text = result.summary(room)
    verdict = "exit 0 in 123456 ms"
    assert text.startswith(verdict)
    assert json_chars(text) <= max(room, json_chars(verdict))
    assert len(json.dumps(text, ensure_ascii=False)) - 2 == json_chars(text)
