"""Output shaping: bounded, scrubbed before cut, never a partial secret, inert to terminals."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_sandbox.output import StreamCapture, cost, neutralise, safe_head, safe_tail, shape

SECRET = "SECRET-0123456789abcdef"


def scrub(text: str) -> str:
    return text.replace(SECRET, "[REDACTED:test]")


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


@settings(max_examples=300)
@given(
    before=st.integers(0, 60_000),
    after=st.integers(0, 60_000),
    budget=st.integers(1_024, 4_000),
    chunk=st.integers(1, 5_000),
)
def test_a_secret_is_never_shown_in_part(before: int, after: int, budget: int, chunk: int) -> None:
    data = b"a" * before + SECRET.encode() + b"b" * after
    margin = len(SECRET) + 8
    o, _ = shape(
        capture(data, budget + margin, chunk),
        capture(b"", 10),
        budget=budget,
        scrub=scrub,
        margin=margin,
    )
    for size in range(6, len(SECRET) + 1):
        for start in range(len(SECRET) - size + 1):
            assert SECRET[start : start + size] not in o.text


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


def test_a_flood_of_json_escapes_cannot_double_the_result() -> None:
    o, _ = shape(
        capture(b'\\"' * 500_000, 4_000), capture(b"", 10), budget=3_000, scrub=scrub, margin=0
    )
    assert len(json.dumps(o.text, ensure_ascii=False)) <= 3_002
