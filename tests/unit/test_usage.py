"""What a run used: the sandbox's report, held back from stderr and parsed strictly."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from mcp_sandbox.output.shaping import StreamCapture
from mcp_sandbox.policy.limits import Limits
from mcp_sandbox.sandbox.usage import (
    RunTail,
    Usage,
    parse_fields,
    report_env,
    resources,
    tail_bytes,
)
from mcp_sandbox.sandbox.warm import EndWatch

REPORT = b"\x00mcp-sandbox-usage:5000000,2000000,104857600,0,3,4096,-1\x00"
NONCE = "0123456789abcdef0123456789abcdef"


def _tail(data: bytes, chunk: int) -> tuple[RunTail, StreamCapture]:
    cap = StreamCapture(100_000)
    tail = RunTail(cap)
    for i in range(0, len(data), chunk):
        tail.feed(data[i : i + chunk])
    tail.finish()
    return tail, cap


@given(st.binary(max_size=3000), st.integers(1, 97))
def test_a_report_that_ends_stderr_is_taken_out_however_it_is_chunked(
    before: bytes, chunk: int
) -> None:
    tail, cap = _tail(before + REPORT, chunk)
    assert cap.whole() == before and cap.written == len(before)
    assert tail.usage == Usage(5_000_000, 2_000_000, 104_857_600, 0, 3, 4096, None)


@given(st.binary(max_size=3000), st.binary(min_size=1, max_size=300), st.integers(1, 97))
def test_a_report_anywhere_but_the_end_is_output(before: bytes, after: bytes, chunk: int) -> None:
    data = before + REPORT + after
    tail, cap = _tail(data, chunk)
    if data.endswith(REPORT):  # `after` may end in a report of its own
        return
    assert cap.whole() == data
    assert tail.usage is None


@given(st.binary(max_size=400))
def test_no_bytes_are_lost_or_added_without_a_report(data: bytes) -> None:
    tail, cap = _tail(data, 7)
    if tail.usage is None:
        assert cap.whole() == data


def test_malformed_or_huge_figures_are_not_believed() -> None:
    assert parse_fields(b"1,2,3") is None
    assert parse_fields(b"1,2,3,4,5,6,7,8") is None
    assert parse_fields(b"a,2,3,4,5,6,7") is None
    huge = parse_fields(b"99999999999999999999,1,1,1,1,-5,1")
    assert huge is not None and huge.cpu_user_ns is None and huge.tmp_bytes_added == 0


def test_resources_never_exceed_the_limits_the_run_had() -> None:
    forged = Usage(1, 1, 1 << 40, 0, 100_000, 0, 0)
    r = resources(forged, wall_ms=5, limits=Limits(), workdir_is_scratch=False)
    assert r.peak_memory_mib == Limits().memory_mib and r.peak_processes == Limits().pids
    assert r.workdir_bytes_added is None  # a read-only workspace is the host's disk
    assert r.wall_ms == 5
    assert "peak memory" in r.line()


def test_no_report_is_a_result_with_only_the_wall_time() -> None:
    r = resources(None, wall_ms=7, limits=Limits(), workdir_is_scratch=True)
    assert r.peak_memory_mib is None and r.cpu_user_ms is None
    assert r.line() == "resources: not reported"


def test_the_warm_marker_carries_the_usage() -> None:
    cap = StreamCapture(1000)
    watch = EndWatch(NONCE, cap)
    mark = f"\x00mcp-sandbox-end:{NONCE}:3:oom:u=1,2,3,4,5,6,7\x00".encode()
    assert watch.feed(b"out" + mark)
    assert watch.exit_code == 3 and watch.oom and cap.whole() == b"out"
    assert watch.usage == Usage(1, 2, 3, 4, 5, 6, 7)


FRAME = b"\x00mcp-sandbox-report:pytest.xml:PHRlc3RzdWl0ZS8+\x00"


@given(st.binary(max_size=2000), st.integers(1, 97))
def test_report_frames_before_the_usage_are_taken_out(before: bytes, chunk: int) -> None:
    tail, cap = _tail(before + FRAME + REPORT, chunk)
    assert cap.whole() == before
    assert tail.reports == {"pytest.xml": b"PHRlc3RzdWl0ZS8+"} and tail.usage is not None


@given(st.binary(min_size=1, max_size=50), st.integers(1, 97))
def test_frames_followed_by_output_are_output(after: bytes, chunk: int) -> None:
    data = FRAME + REPORT + after
    tail, cap = _tail(data, chunk)
    if data.endswith(REPORT):
        return
    assert tail.reports == {} and tail.usage is None
    assert cap.whole() == data


def test_more_frames_than_the_wrapper_writes_are_held_back_no_further() -> None:
    tail, cap = _tail(FRAME * 50 + REPORT, 64)
    assert cap.whole() == FRAME * 48  # the last two frames and the usage end the stream
    assert tail.usage is not None


def test_a_flood_of_nuls_costs_what_other_bytes_do() -> None:
    """Each NUL could open a frame; none is looked at byte by byte (8 MiB took minutes)."""
    cap = StreamCapture(100_000)
    tail = RunTail(cap)
    started = time.monotonic()
    for _ in range(128):
        tail.feed(b"\x00" * 65_536)
    tail.feed(FRAME + REPORT)
    tail.finish()
    assert time.monotonic() - started < 2.0
    assert cap.total == 128 * 65_536 and tail.usage is not None
    assert tail.reports == {"pytest.xml": b"PHRlc3RzdWl0ZS8+"}


def test_only_a_run_that_ships_reports_holds_their_room_back() -> None:
    assert tail_bytes((("PATH", "/bin"),)) < 200
    assert tail_bytes(tuple(report_env({}).items())) > 2 * 1024 * 1024
    # Held back to its usage frame's room only, a report frame is the program's output.
    frame = b"\x00mcp-sandbox-report:pytest.xml:" + b"A" * 400 + b"\x00"
    cap = StreamCapture(100_000)
    tail = RunTail(cap, tail_bytes(()))
    tail.feed(b"x" * 1000 + frame + REPORT)
    tail.finish()
    assert cap.whole() == b"x" * 1000 + frame and tail.reports == {}
    assert tail.usage is not None
