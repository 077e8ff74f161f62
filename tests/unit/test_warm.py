"""The warm-sandbox protocol: requests survive the stub byte for byte; markers end streams."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from dataclasses import replace

from hypothesis import example, given, settings
from hypothesis import strategies as st

from mcp_sandbox.output import StreamCapture
from mcp_sandbox.spec import ContainerSpec
from mcp_sandbox.warm import STUB_ARGV, EndWatch, encode_request, shape_of

NONCE = "0123456789abcdef0123456789abcdef"
MARK = f"\x00mcp-sandbox-end:{NONCE}:7\x00".encode()

arg_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=60
)


@settings(max_examples=40, deadline=None)
@example(["\x1e\x1f ctrl-^ ctrl-_", "a\\nb\n", "\\0101 %b \\c", "\x7f\x01\r\t"], b"\x1e\x1f")
@given(st.lists(arg_text, min_size=0, max_size=4), st.one_of(st.none(), st.binary(max_size=300)))
def test_the_stub_runs_exactly_the_argv_and_stdin_it_was_sent(
    args: list[str], stdin: bytes | None
) -> None:
    """Runs the real stub with the host's /bin/sh (no Docker): argv and stdin round-trip."""
    probe = (
        "import sys, json; "
        "sys.stdout.write(json.dumps([sys.argv[1:], sys.stdin.buffer.read().hex()]))"
    )
    argv = (sys.executable, "-c", probe, *args)
    request = encode_request(
        NONCE, argv, "/", base64.b64encode(stdin) if stdin is not None else None
    )
    done = subprocess.run(list(STUB_ARGV), input=request, capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    marker = f"\x00mcp-sandbox-end:{NONCE}:0\x00".encode()
    assert out.endswith(marker) and done.stderr.endswith(marker)
    got_args, got_stdin = json.loads(out[: -len(marker)])
    assert got_args == args
    assert bytes.fromhex(got_stdin) == (stdin or b"")


def test_the_stub_passes_the_exit_code_on() -> None:
    request = encode_request(NONCE, ("sh", "-c", "exit 7"), "/", None)
    done = subprocess.run(list(STUB_ARGV), input=request, capture_output=True, timeout=30)
    assert done.returncode == 7 and done.stdout == MARK


@given(st.binary(max_size=3000), st.binary(max_size=200), st.integers(1, 97))
def test_endwatch_keeps_what_precedes_the_marker_however_it_is_chunked(
    before: bytes, after: bytes, chunk: int
) -> None:
    data = before + MARK + after
    cap = StreamCapture(10_000)
    watch = EndWatch(NONCE, cap)
    for i in range(0, len(data), chunk):
        if watch.feed(data[i : i + chunk]):
            break
    assert watch.ended and watch.exit_code == 7
    assert cap.whole() == before


def test_a_marker_with_another_nonce_is_plain_output() -> None:
    fake = b"\x00mcp-sandbox-end:" + b"f" * 32 + b":0\x00"
    cap = StreamCapture(1000)
    watch = EndWatch(NONCE, cap)
    assert not watch.feed(b"x" + fake + b"y")
    watch.flush()
    assert cap.whole() == b"x" + fake + b"y" and not watch.ended


def _spec(**kw: object) -> ContainerSpec:
    from mcp_sandbox.policy import Limits, RunPlan
    from mcp_sandbox.spec import build_spec

    limits = kw.pop("limits", Limits())
    plan = RunPlan(argv=("python3", "-c", "1"), limits=limits, stdin=None)  # type: ignore[arg-type]
    args: dict[str, object] = {
        "image": "img",
        "run_id": "a",
        "owner": "o",
        "seccomp_json": "{}",
        "extra_env": {},
        "runtime": None,
    }
    args.update(kw)
    return build_spec(plan, **args)  # type: ignore[arg-type]


def test_a_warm_sandbox_matches_only_a_call_that_would_get_the_same_container() -> None:
    from mcp_sandbox.policy import Limits
    from mcp_sandbox.spec import Mount, with_workspace

    base = _spec()
    assert shape_of(base) == shape_of(_spec(run_id="b"))
    assert shape_of(base) == shape_of(_spec(limits=Limits(timeout_s=99)))
    assert shape_of(base) == shape_of(replace(base, argv=STUB_ARGV, stdin=True))
    assert shape_of(base) != shape_of(_spec(limits=Limits(memory_mib=1024)))
    assert shape_of(base) != shape_of(_spec(extra_env={"A": "1"}))
    assert shape_of(base) != shape_of(_spec(seccomp_json="{ }"))
    masked = with_workspace(base, (Mount("bind", "/blank", "/workspace/.env", True),), "/x")
    assert shape_of(base) != shape_of(masked)
