"""Files out: the frames a sandbox ships are hostile; what comes of them is capped and safe."""

from __future__ import annotations

import base64
import json
import re

from hypothesis import given
from hypothesis import strategies as st

from mcp_sandbox.output.output_files import (
    FILE_FRAME,
    FILE_MAX_BYTES,
    FILES_MAX,
    FILES_TAIL_BYTES,
    FILES_TOTAL_BYTES,
    ShapedFiles,
    ShippedFile,
    parse_frames,
    shape_files,
    uri_key,
)
from mcp_sandbox.output.scrubber import Scrubber
from mcp_sandbox.output.shaping import StreamCapture
from mcp_sandbox.sandbox.usage import RunTail, outputs_env, ships_files, tail_bytes

SECRET = "hunter2-secret-value-0123456789"
SCRUB = Scrubber({"S": SECRET}).scrub
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
USAGE = b"\x00mcp-sandbox-usage:1,2,3,0,4,5,6\x00"


def _frame(name: bytes, body: bytes = b"", kind: bytes = b"f", size: int | None = None) -> bytes:
    size = len(body) if size is None else size
    return (
        b"\x00mcp-sandbox-file:"
        + base64.b64encode(name)
        + b":"
        + kind
        + b":"
        + str(size).encode()
        + b":"
        + base64.b64encode(body)
        + b"\x00"
    )


def _groups(data: bytes) -> list[tuple[bytes, bytes, bytes, bytes]]:
    return [(m[1], m[2], m[3], m[4]) for m in FILE_FRAME.finditer(data)]


def _shape(files: list[ShippedFile], *, images: bool = False, room: int = 20_000) -> ShapedFiles:
    return shape_files(files, run_id="abc", scrub=SCRUB, margin=64, images=images, room=room)


def _tail(data: bytes, chunk: int = 4096) -> RunTail:
    env = tuple(outputs_env().items())
    tail = RunTail(StreamCapture(1 << 20), tail_bytes(env), files=ships_files(env))
    for i in range(0, len(data), chunk):
        tail.feed(data[i : i + chunk])
    tail.finish()
    return tail


def test_file_frames_before_the_usage_are_taken_out_of_stderr() -> None:
    data = b"program said\n" + _frame(b"a.txt", b"hello\n") + _frame(b"b.png", PNG) + USAGE
    tail = _tail(data)
    assert tail.capture.whole() == b"program said\n"
    assert [parse.name for parse in parse_frames(tail.files)] == [b"a.txt", b"b.png"]
    assert tail.usage is not None and tail.usage.peak_pids == 4


def test_file_frames_of_a_run_that_ships_none_are_output() -> None:
    data = _frame(b"a.txt", b"x") + USAGE
    tail = RunTail(StreamCapture(1 << 20), tail_bytes(()) + FILES_TAIL_BYTES)
    tail.feed(data)
    tail.finish()
    assert tail.files == [] and tail.capture.whole() == _frame(b"a.txt", b"x")
    assert tail.usage is not None


def test_file_frames_followed_by_output_are_output() -> None:
    data = _frame(b"a.txt", b"x") + b"more output" + USAGE
    tail = _tail(data)
    assert tail.files == [] and tail.capture.whole() == _frame(b"a.txt", b"x") + b"more output"


def test_only_a_run_that_ships_outputs_holds_their_room_back() -> None:
    assert tail_bytes(()) + FILES_TAIL_BYTES == tail_bytes(tuple(outputs_env().items()))


def test_the_largest_honest_frames_fit_what_is_held_back() -> None:
    each = FILES_TOTAL_BYTES // FILES_MAX
    frames = b"".join(
        _frame(f"{i:03d}{'n' * 252}".encode(), b"\xff" * each) for i in range(FILES_MAX)
    )
    assert len(frames) <= FILES_TAIL_BYTES
    tail = _tail(frames + USAGE)
    assert len(tail.files) == FILES_MAX and tail.capture.total == 0


def test_more_frames_than_the_cap_are_output_or_dropped() -> None:
    frames = b"".join(_frame(f"f{i}.txt".encode(), b"x") for i in range(FILES_MAX + 5))
    tail = _tail(frames + USAGE)
    assert len(tail.files) == FILES_MAX
    assert len(parse_frames(tail.files)) == FILES_MAX
    assert _shape(parse_frames(tail.files)).note == f"only the first {FILES_MAX} entries come back"
    assert tail.capture.whole().count(b"mcp-sandbox-file:") == 5


def test_an_oversized_body_is_not_matched_as_a_frame() -> None:
    frame = _frame(b"big.txt", b"a" * (FILE_MAX_BYTES + 3))
    assert FILE_FRAME.fullmatch(frame) is None


def test_truncated_frames_are_output() -> None:
    whole = _frame(b"a.txt", b"hello")
    for cut in (1, 5, len(whole) // 2, len(whole) - 1):
        tail = _tail(whole[:cut] + USAGE)
        assert tail.files == []


def test_a_body_larger_than_its_size_or_the_total_is_dropped() -> None:
    groups = _groups(_frame(b"liar.txt", b"abcdef", size=2))
    [f] = parse_frames(groups)
    assert f.body == b"" and f.size == 2
    each = FILE_MAX_BYTES
    many = b"".join(_frame(f"{i}.bin".encode(), b"z" * each) for i in range(6))
    files = parse_frames(_groups(many))
    assert sum(len(f.body) for f in files) <= FILES_TOTAL_BYTES
    assert files[-1].body == b"" and files[-1].size == each


def test_bad_names_are_dropped() -> None:
    frames = (
        _frame(b"ok.txt", b"1")
        + _frame(b"a/b", b"2")
        + _frame(b"nul\x00name", b"3")
        + _frame(b"ok.txt", b"dup")
        + _frame(b"x" * 256, b"4")
    )
    groups = _groups(frames)
    groups.append((b"!!notbase64", b"f", b"1", b"MQ=="))
    groups.append((base64.b64encode(b"huge"), b"f", b"9" * 20, b""))
    assert [f.name for f in parse_frames(groups)] == [b"ok.txt"]


def test_a_link_or_device_never_carries_a_body() -> None:
    groups = _groups(_frame(b"passwd", b"root:x:0:0", kind=b"l") + _frame(b"null", kind=b"o"))
    shaped = _shape(parse_frames(groups))
    assert [(f.kind, f.uri, f.content) for f in shaped.listed] == [
        ("symlink", None, None),
        ("other", None, None),
    ]
    assert shaped.texts == {} and shaped.images == []
    assert "never followed" in (shaped.listed[0].note or "")


def test_a_text_file_is_scrubbed_and_kept_under_a_safe_key() -> None:
    files = [ShippedFile(b"../../x", "f", 20, f"token {SECRET}\x1b[2J\n".encode())]
    shaped = _shape(files)
    [entry] = shaped.listed
    assert entry.kind == "text" and entry.content == "resource"
    assert entry.uri is not None and entry.uri.startswith("sandbox://runs/abc/files/")
    key = entry.uri.rsplit("/", 1)[1]
    assert ".." not in key and "/" not in key and not key.startswith(".")
    assert SECRET not in shaped.texts[key] and "\x1b" not in shaped.texts[key]
    assert entry.name == "../../x"  # shown as written: only ever a label


def test_a_secret_in_a_name_is_scrubbed_everywhere() -> None:
    shaped = _shape([ShippedFile(f"{SECRET}.txt".encode(), "f", 1, b"x")])
    [entry] = shaped.listed
    assert SECRET not in entry.model_dump_json()


def test_a_cut_text_file_keeps_no_split_secret() -> None:
    body = (b"a" * (FILE_MAX_BYTES - 10)) + SECRET.encode()[:10]
    shaped = _shape([ShippedFile(b"log.txt", "f", FILE_MAX_BYTES + 100, body)])
    [entry] = shaped.listed
    text = next(iter(shaped.texts.values()))
    assert SECRET[:10] not in text and "cut to its first" in (entry.note or "")


def test_images_are_off_by_default_and_sent_unscrubbed_when_on() -> None:
    files = [ShippedFile(b"plot.png", "f", len(PNG), PNG)]
    off = _shape(files)
    assert off.images == [] and off.listed[0].content is None
    assert "outputs.images" in (off.listed[0].note or "")
    on = _shape(files, images=True)
    assert [(i.mime_type, i.data) for i in on.images] == [("image/png", PNG)]
    assert on.listed[0].content == "image" and on.texts == {}


def test_a_cut_image_is_not_sent() -> None:
    files = [ShippedFile(b"big.jpg", "f", FILE_MAX_BYTES + 1, b"\xff\xd8\xff" + b"\x00" * 10)]
    shaped = _shape(files, images=True)
    assert shaped.images == [] and "cap" in (shaped.listed[0].note or "")


def test_an_svg_is_scrubbed_text_and_an_image_only_when_on() -> None:
    svg = f"<svg><text>{SECRET}</text></svg>".encode()
    files = [ShippedFile(b"a.svg", "f", len(svg), svg)]
    off = _shape(files)
    assert off.images == [] and off.listed[0].content == "resource"
    on = _shape(files, images=True)
    assert on.images and SECRET.encode() not in on.images[0].data


def test_binary_is_listed_not_returned() -> None:
    shaped = _shape([ShippedFile(b"a.bin", "f", 4, b"\x00\x01\xfe\xff")])
    assert shaped.listed[0].kind == "binary" and shaped.texts == {} and shaped.images == []


def test_the_list_stays_within_its_room() -> None:
    files = [ShippedFile(f"{'n' * 200}{i}".encode(), "f", 1, b"x") for i in range(FILES_MAX)]
    shaped = _shape(files, room=1_500)
    weight = len(json.dumps([f.model_dump(mode="json") for f in shaped.listed]))
    assert weight <= 1_500 and shaped.note is not None and shaped.note.endswith("not listed")
    assert len(shaped.texts) == len(shaped.listed)


@given(st.text(max_size=300))
def test_a_key_is_always_uri_safe(name: str) -> None:
    key = uri_key(name, set())
    assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}", key)
    assert ".." not in key


@given(st.binary(max_size=3_000), st.integers(1, 97))
def test_any_bytes_before_the_usage_lose_nothing(data: bytes, chunk: int) -> None:
    tail = _tail(data + USAGE, chunk)
    if not tail.files:
        assert tail.capture.whole() == data
    shipped = parse_frames(tail.files)
    assert len(shipped) <= FILES_MAX
    _shape(shipped, images=True)  # never raises


def test_the_tool_result_links_text_files_and_sends_images_as_their_own_blocks() -> None:
    from mcp_types import ImageContent, ResourceLink, TextContent

    from mcp_sandbox.output.result import RunResult
    from mcp_sandbox.transport.tools import _tool_result, result_chars

    files = [
        ShippedFile(b"notes.txt", "f", 6, b"hello\n"),
        ShippedFile(b"plot.png", "f", len(PNG), PNG),
    ]
    shaped = _shape(files, images=True)
    result = RunResult(
        exit_code=0,
        timed_out=False,
        oom_killed=False,
        truncated=False,
        duration_ms=1,
        pooled=False,
        stdout_bytes=0,
        stderr_bytes=0,
        image="i",
        run_id="abc",
        sandbox="s",
        stdout="",
        stderr="",
        files=shaped.listed,
    ).with_images(tuple(shaped.images))
    wire = _tool_result(result)
    text, link, image = wire.content
    assert isinstance(text, TextContent) and "notes.txt (sandbox://runs/abc/files/" in text.text
    assert isinstance(link, ResourceLink) and link.uri == shaped.listed[0].uri
    assert isinstance(image, ImageContent) and base64.b64decode(image.data) == PNG
    assert wire.structured_content is not None and "data" not in json.dumps(wire.structured_content)
    assert result_chars(wire) < 40_000
