"""Docker's multiplexed attach stream is parsed the same however the reads cut it."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from mcp_sandbox.engine.attach import _Frames

frames = st.lists(st.tuples(st.sampled_from([1, 2]), st.binary(max_size=300)), max_size=8)


@given(frames, st.integers(1, 50))
def test_every_cut_of_the_stream_gives_the_same_bytes_per_stream(
    parts: list[tuple[int, bytes]], cut: int
) -> None:
    wire = b"".join(struct.pack(">BxxxL", s, len(b)) + b for s, b in parts)
    got: dict[int, bytes] = {1: b"", 2: b""}

    def sink(stream: int, chunk: bytes) -> bool:
        got[stream] += chunk
        return False

    parser = _Frames(sink)
    for i in range(0, len(wire), cut):
        assert not parser.feed(wire[i : i + cut])
    for stream in (1, 2):
        assert got[stream] == b"".join(b for s, b in parts if s == stream)


def test_the_sink_stops_the_parse() -> None:
    wire = struct.pack(">BxxxL", 1, 3) + b"abc" + struct.pack(">BxxxL", 2, 3) + b"def"
    seen: list[bytes] = []

    def sink(stream: int, chunk: bytes) -> bool:
        seen.append(chunk)
        return True

    assert _Frames(sink).feed(wire)
    assert seen == [b"abc"]
