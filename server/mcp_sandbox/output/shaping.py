"""PURE: captured bytes -> text fit to show: decoded, scrubbed, neutralised, cut to budget.

Order matters: scrub before cutting, and never show part of a secret that a cut split.
Units: the budget is in bytes (``cost``), the scrubber's margin in characters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

Scrub = Callable[[str], str]

CUT_MARKER = "\n…[mcp-sandbox: cut here; the stream had {n} bytes]…\n"

# The most bytes one character takes in UTF-8 (an undecodable byte is one U+FFFD each).
_MAX_CHAR_BYTES = 4


# Reading a stream costs the host CPU outside the sandbox's quota (the server, dockerd and the
# shim: about one core at full speed), and past the budget every byte is thrown away. A run
# whose streams pass this in all is stopped: far more than any test's log, seconds of flood.
STOP_BYTES = 256 * 1024 * 1024
STOPPED_NOTE = (
    f"\n[mcp-sandbox: the output passed {STOP_BYTES >> 20} MiB; the sandbox was stopped]\n"
).encode()


# Text up to this size is scrubbed on the event loop (a worker thread costs more than the
# scrub); longer text in a worker thread, where the scrubber matches without the GIL.
SHAPE_ON_LOOP_BYTES = 16 * 1024


def past_stop(*captures: StreamCapture) -> bool:
    """Whether these streams together passed ``STOP_BYTES``."""
    return sum(c.total for c in captures) > STOP_BYTES


def capture_bytes(budget: int, margin: int) -> int:
    """Bytes a ``StreamCapture`` keeps of each end so a cut stream can still fill ``budget``.

    A cut end loses its last (or first) ``margin`` characters to the scrubber's safe
    point, and a character is up to 4 bytes: held in bytes, the margin is 4 bytes a
    character, or text of emoji or CJK would lose all or most of the budget to it.
    """
    return budget + _MAX_CHAR_BYTES * margin


# The most of a stream kept whole besides its ends, for a cut stream's full text (``kept``).
KEPT_BYTES = 2 * 1024 * 1024


class StreamCapture:
    """The first ``keep`` bytes and the last ``keep`` bytes of a stream, and its length;
    with ``kept_max``, also its first ``kept_max`` bytes whole (``kept``).

    Memory stays bounded whatever the stream's size. ``capture_bytes`` says how much to keep.
    """

    def __init__(self, keep: int, kept_max: int = 0) -> None:
        self.keep = keep
        self.head = bytearray()
        self._rest = bytearray()
        self.total = 0  # bytes held or passed, our own notes included
        self._noted = 0
        self.kept_max = kept_max
        self.kept = bytearray()

    def feed(self, chunk: bytes) -> None:
        if len(self.kept) < self.kept_max:
            self.kept += chunk[: self.kept_max - len(self.kept)]
        self.total += len(chunk)
        room = self.keep - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self._rest += chunk
            if len(self._rest) > 2 * self.keep:
                del self._rest[: len(self._rest) - self.keep]

    def note(self, text: bytes) -> None:
        """Append the server's own ``text``: shown, but not counted as the program's."""
        self.feed(text)
        self._noted += len(text)

    @property
    def written(self) -> int:
        """Bytes the program wrote on this stream."""
        return self.total - self._noted

    @property
    def complete(self) -> bool:
        """True when nothing between head and tail was dropped."""
        return self.total == len(self.head) + len(self._rest)

    @property
    def tail(self) -> bytes:
        return bytes(self._rest[-self.keep :]) if self._rest else b""

    def whole(self) -> bytes:
        """All of the stream; only valid when ``complete``."""
        return bytes(self.head + self._rest)


@dataclass(frozen=True)
class ShapedStream:
    text: str
    original_bytes: int
    truncated: bool


# C0 controls but tab and newline, DEL, C1 controls: they can drive a terminal.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]")
# What reorders or hides text from a human reader while a model still reads it: bidi
# overrides and isolates ("Trojan Source"); tag characters and variation selectors
# (U+E0000-E0FFF, U+FE00-FE0D: a byte of hidden text each); zero-width spaces, joiners
# (but ZWJ and ZWNJ: scripts and emoji need them), BOMs, soft hyphens, fillers and other
# format characters that print as nothing; line and paragraph separators. (VS15 and VS16,
# U+FE0E-FE0F, stay: they pick how an emoji is drawn.) Also refused in names `rw` writes.
HIDDEN_CHARS = (
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b\u200e\u200f"
    "\u2028-\u202e\u2060-\u206f\u3164\ufe00-\ufe0d\ufeff\uffa0\ufff9-\ufffb"
    "\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff"
)
_HIDDEN = re.compile(f"[{HIDDEN_CHARS}]")


def _picture(m: re.Match[str]) -> str:
    c = ord(m.group())
    if c < 0x20:
        return chr(0x2400 + c)  # the Unicode control picture: visible, inert
    return "\u2421" if c == 0x7F else "\ufffd"


def neutralise(text: str) -> str:
    """Replace terminal control characters with visible, inert stand-ins.

    ``\\r\\n`` becomes ``\\n``; a lone ``\\r`` (which could overwrite a shown line) a picture.
    """
    text = text.replace("\r\n", "\n")
    return _HIDDEN.sub("\ufffd", _CONTROL.sub(_picture, text))


def _common_prefix(a: str, b: str) -> str:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return a[:i]


def _common_suffix(a: str, b: str) -> str:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[-1 - i] == b[-1 - i]:
        i += 1
    return a[len(a) - i :]


def safe_head(text: str, scrub: Scrub, margin: int) -> str:
    """Scrubbed ``text``, less its last ``margin`` chars, where a secret may be cut short.

    A secret that crosses the safe point is redacted in ``scrub(text)`` but only partly
    present in ``scrub(text[:-margin])``: keeping only what both agree on drops it whole.
    """
    if len(text) <= margin:
        return ""
    return _common_prefix(scrub(text[:-margin]), scrub(text))


def safe_tail(text: str, scrub: Scrub, margin: int) -> str:
    """Mirror of ``safe_head`` for a stream's last bytes."""
    if len(text) <= margin:
        return ""
    return _common_suffix(scrub(text[margin:]), scrub(text))


def cost(text: str) -> int:
    """What ``text`` weighs in a result: its UTF-8 bytes, plus one per character that JSON
    escapes with a backslash (so a flood of quotes cannot double a result's size)."""
    return len(text.encode("utf-8")) + sum(text.count(c) for c in '"\\\t\n')


def json_chars(text: str) -> int:
    """Characters ``text`` takes as a JSON string on the wire (non-ASCII kept), less quotes."""
    return len(json.dumps(text, ensure_ascii=False)) - 2


def fit(
    text: str, limit: int, *, weight: Callable[[str], int] = cost, from_end: bool = False
) -> str:
    """The longest prefix (or suffix) of ``text`` that weighs at most ``limit``.

    ``weight`` (``cost`` or ``json_chars``) weighs every character at least 1, and a part
    never more than its whole.
    """
    if weight(text) <= limit:
        return text
    lo, hi = 0, min(len(text), max(limit, 0))
    while lo < hi:  # the longest length whose weight fits
        mid = (lo + hi + 1) // 2
        part = text[len(text) - mid :] if from_end else text[:mid]
        if weight(part) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return text[len(text) - lo :] if from_end else text[:lo]


def _cut(head: str, tail: str, original: int, allot: int) -> str:
    """``head`` and ``tail`` joined by a marker, costing at most ``allot``."""
    marker = CUT_MARKER.format(n=original)
    room = max(allot - cost(marker), 0)
    head_part = fit(head, room * 3 // 5)
    tail_part = fit(tail, room - cost(head_part), from_end=True)
    return fit(head_part + marker + tail_part, allot)


def _render(
    capture: StreamCapture, scrub: Scrub, margin: int, budget: int
) -> tuple[str, str, bool]:
    """(head text, tail text, whole): scrubbed and neutralised.

    A cut end keeps ``budget + margin`` characters before the scrub: the capture holds bytes
    for 4-byte characters, and ASCII need not pay the scrub for four times what it shows.
    Cutting there is as safe as the capture's own cut: the margin is dropped after the scrub.
    """
    if capture.complete:
        text = neutralise(scrub(capture.whole().decode("utf-8", "replace")))
        return text, "", True
    chars = budget + margin
    head = safe_head(capture.head.decode("utf-8", "replace")[:chars], scrub, margin)
    tail = safe_tail(capture.tail.decode("utf-8", "replace")[-chars:], scrub, margin)
    return neutralise(head), neutralise(tail), False


def _allot(a: int, b: int, budget: int) -> tuple[int, int]:
    if a + b <= budget:
        return a, b
    if a <= budget // 2:
        return a, budget - a
    if b <= budget // 2:
        return budget - b, b
    return budget - budget // 2, budget // 2


def shape(
    out: StreamCapture, err: StreamCapture, *, budget: int, scrub: Scrub, margin: int
) -> tuple[ShapedStream, ShapedStream]:
    """Both streams as text that together ``cost`` at most ``budget`` (stdout first)."""
    rendered = [_render(c, scrub, margin, budget) for c in (out, err)]
    sizes = [cost(h) if whole else budget for h, _, whole in rendered]
    allots = _allot(sizes[0], sizes[1], budget)
    shaped = []
    for capture, (head, tail, whole), allot in zip((out, err), rendered, allots, strict=True):
        if whole and cost(head) <= allot:
            shaped.append(ShapedStream(head, capture.written, truncated=False))
            continue
        if whole:
            head, tail = head, head
        n = capture.written
        shaped.append(ShapedStream(_cut(head, tail, n, allot), n, True))
    return shaped[0], shaped[1]
