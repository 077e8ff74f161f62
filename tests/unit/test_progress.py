"""Progress messages: elapsed time and the last whole line, scrubbed, neutralised, short."""

from __future__ import annotations

from mcp_sandbox.output.shaping import StreamCapture
from mcp_sandbox.sandbox.live import LiveRun
from mcp_sandbox.transport.progress import LINE_CHARS, progress_message


def _scrub(text: str) -> str:
    return text.replace("sk-SECRET-VALUE", "[redacted]")


def _live(out: bytes, err: bytes = b"") -> LiveRun:
    o, e = StreamCapture(10_000), StreamCapture(10_000)
    live = LiveRun(captures=(o, e))
    live.last_line()  # the first look: nothing has been written since
    o.feed(out)
    e.feed(err)
    return live


def test_the_message_is_the_elapsed_time_and_the_last_line() -> None:
    message = progress_message(_live(b"one\ntwo\n\n"), _scrub, 20)
    assert message.endswith(" s: two") and message.split(" s", 1)[0].isdigit()


def test_the_last_line_is_scrubbed_neutralised_and_short() -> None:
    line = b"key sk-SECRET-VALUE \x1b[2J" + b"x" * 5000 + b"\n"
    message = progress_message(_live(b"start\n" + line), _scrub, 20)
    assert "sk-SECRET" not in message and "\x1b" not in message
    assert len(message) <= LINE_CHARS + 10


def test_a_secret_cut_by_the_window_is_never_shown_in_part() -> None:
    # The last 1024 bytes start inside the secret: its end alone matches no rule.
    line = b"sk-SECRET-VALUE" + b"y" * 1015 + b"\n"
    message = progress_message(_live(line), _scrub, 20)
    assert "VALUE" not in message and message.endswith("yyy")


def test_no_output_yet_is_just_the_time() -> None:
    assert progress_message(LiveRun(), _scrub, 20).endswith(" s")
