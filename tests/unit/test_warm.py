"""The warm-sandbox protocol: requests survive the stub byte for byte; markers end streams."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mcp_sandbox.output.shaping import StreamCapture
from mcp_sandbox.sandbox.spec import ContainerSpec
from mcp_sandbox.sandbox.warm import SH_STUB_ARGV, STUB_ARGV, EndWatch, encode_request, shape_of

NONCE = "0123456789abcdef0123456789abcdef"
MARK = f"\x00mcp-sandbox-end:{NONCE}:7\x00".encode()

arg_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=60
)


@pytest.fixture(scope="module")
def stub_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """PATH with a `python3` that is this interpreter's base python (no venv): for the
    stub and for the `python3 -c` it is compared with alike."""
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "python3").symlink_to(os.path.realpath(sys.executable))
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}


STUBS = pytest.mark.parametrize("stub", [STUB_ARGV, SH_STUB_ARGV], ids=["python", "sh"])


def _via_stub(
    stub: tuple[str, ...], env: dict[str, str], argv: tuple[str, ...], stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    request = encode_request(NONCE, argv, "/tmp", base64.b64encode(stdin) if stdin else None)
    return subprocess.run(
        [*_OWN_MOUNTS, *stub], input=request, capture_output=True, env=env, cwd="/", timeout=30
    )


# The stub refuses a call when the mount table changed since it started (a replaced mask): on
# the host, other containers coming and going change it. As root, the stub gets a mount
# namespace of its own, which new mounts do not reach, without the daemon's mounts: when the
# daemon removes a container's directory, its mount goes from every namespace.
_WITHOUT_DOCKER_MOUNTS = (
    "for m in $(awk '$5 ~ \"^/(var/lib|run)/docker/\" {print $5}' /proc/self/mountinfo); do"
    ' umount -l "$m" 2>/dev/null; done; exec "$@"'
)
_OWN_MOUNTS = (
    ("unshare", "--mount", "--propagation", "private", "sh", "-c", _WITHOUT_DOCKER_MOUNTS, "sh")
    if os.geteuid() == 0
    else ()
)


@STUBS
@settings(max_examples=25, deadline=None)
@example(["\x1e\x1f ctrl-^ ctrl-_", "a\\nb\n", "\\0101 %b \\c", "\x7f\x01\r\t"], b"\x1e\x1f")
@given(st.lists(arg_text, min_size=0, max_size=4), st.one_of(st.none(), st.binary(max_size=300)))
def test_the_stub_runs_exactly_the_argv_and_stdin_it_was_sent(
    stub: tuple[str, ...], stub_env: dict[str, str], args: list[str], stdin: bytes | None
) -> None:
    """Runs the real stub with the host's /bin/sh and python3 (no Docker): argv and stdin
    round-trip, on the exec path and on the in-process `python3 -c` path alike."""
    probe = (
        "import sys, json; "
        "sys.stdout.write(json.dumps([sys.argv[1:], sys.stdin.buffer.read().hex()]))"
    )
    for argv in (("python3", "-c", probe, *args), ("python3", "-c", probe + f"; {args!r}")):
        done = _via_stub(stub, stub_env, argv, stdin)
        assert done.returncode == 0, done.stderr
        out = done.stdout
        marker = f"\x00mcp-sandbox-end:{NONCE}:0\x00".encode()
        assert out.endswith(marker) and done.stderr.endswith(marker)
        got_args, got_stdin = json.loads(out[: -len(marker)])
        assert got_args == (args if len(argv) > 3 else [])
        assert bytes.fromhex(got_stdin) == (stdin or b"")


@STUBS
def test_the_stub_passes_the_exit_code_on(stub: tuple[str, ...], stub_env: dict[str, str]) -> None:
    done = _via_stub(stub, stub_env, ("sh", "-c", "exit 7"))
    assert done.returncode == 7 and done.stdout == MARK


@STUBS
@pytest.mark.skipif(os.geteuid() != 0, reason="needs a mount namespace of its own (root)")
def test_a_stub_whose_mounts_changed_while_it_waited_runs_nothing(
    stub: tuple[str, ...], stub_env: dict[str, str], tmp_path: Path
) -> None:
    """In a sandbox, a masked file replaced on the host takes its overmount with it: any
    change of the mount table between start and call makes the stub refuse (code 999)."""
    target = tmp_path / "m"
    target.mkdir()
    # A mount namespace of our own: the stub starts, a tmpfs appears, then the request comes.
    script = f'exec 3<&0; "$@" <&3 3<&- & sleep 0.5; mount -t tmpfs none {target}; wait $!'
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *stub],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=stub_env,
    )
    time.sleep(1.5)
    out, err = proc.communicate(encode_request(NONCE, ("sh", "-c", "echo RAN"), "/", None), 30)
    stale = f"\x00mcp-sandbox-end:{NONCE}:999\x00".encode()
    assert (proc.returncode, out, err) == (95, stale, stale)


# What a program can see of how it was started: a warm `python3 -c` must not differ from a
# fresh one, on the fast path (the Python stub) or the exec path (both stubs).
SNIPPETS = {
    "names": "import sys; print(sys.argv, sys.path[0], __name__, sorted(globals()), __doc__,"
    " __spec__, __loader__, __package__, sys.flags, sys.orig_argv[1:])",
    "modules": "import sys; print(sorted(sys.modules))",
    "env": "import os, json; print(json.dumps(dict(os.environ), sort_keys=True))",
    "signals": "import signal as s; "
    "print([s.getsignal(n) for n in (s.SIGPIPE, s.SIGINT, s.SIGXFSZ)])",
    "cwd": "import os; print(os.getcwd())",
    # The Python stub is not dumpable (its nonce); the program it forks is again.
    "dumpable": "import ctypes; print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))",
    "stdin": "import sys; print(repr(sys.stdin.read()))",
    "error": "raise ValueError('boom')",
    "chained": "def f(): raise RuntimeError('x')\ntry:\n  f()\nexcept RuntimeError as e:\n"
    "  raise KeyError('y') from e",
    "syntax": "print((",
    "exit-text": "import sys; sys.exit('bye')",
    "exit-code": "exit(3)",
    "interrupt": "raise KeyboardInterrupt",
    "killed": "import os; os.kill(os.getpid(), 9)",
    "shutdown": "import atexit, threading, time; atexit.register(print, 'bye'); "
    "threading.Thread(target=lambda: (time.sleep(0.2), print('thread'))).start(); print('main')",
    "main-module": "import __main__; print(__main__.__dict__ is globals(), __main__.__name__)",
    "warning": "import warnings; warnings.warn('w')",
    "sh": "import subprocess; print(subprocess.run(['sh', '-c', 'env; echo $PWD; trap'],"
    " capture_output=True, text=True).stdout)",
}


@STUBS
@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_a_warm_python_c_is_indistinguishable_from_a_fresh_one(
    stub: tuple[str, ...], stub_env: dict[str, str], name: str
) -> None:
    if name == "killed" and stub == SH_STUB_ARGV:
        pytest.skip("dash says 'Killed' on stderr when its program dies of SIGKILL")
    code = SNIPPETS[name]
    fresh = subprocess.run(
        ["python3", "-c", code],
        capture_output=True,
        env=stub_env,
        cwd="/tmp",
        stdin=subprocess.DEVNULL,
        timeout=30,
    )
    warm = _via_stub(stub, stub_env, ("python3", "-c", code))
    status = fresh.returncode if fresh.returncode >= 0 else 128 - fresh.returncode
    mark = f"\x00mcp-sandbox-end:{NONCE}:{status}\x00".encode()
    assert (warm.returncode, warm.stdout, warm.stderr) == (
        status,
        fresh.stdout + mark,
        fresh.stderr + mark,
    )


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


@given(st.binary(max_size=300), st.integers(1, 97))
def test_endwatch_reads_an_oom_in_the_marker_however_it_is_chunked(
    before: bytes, chunk: int
) -> None:
    data = before + MARK[:-1] + b":oom\x00after"
    watch = EndWatch(NONCE, StreamCapture(10_000))
    for i in range(0, len(data), chunk):
        if watch.feed(data[i : i + chunk]):
            break
    assert watch.ended and watch.exit_code == 7 and watch.oom


def test_a_marker_with_another_nonce_is_plain_output() -> None:
    fake = b"\x00mcp-sandbox-end:" + b"f" * 32 + b":0\x00"
    cap = StreamCapture(1000)
    watch = EndWatch(NONCE, cap)
    assert not watch.feed(b"x" + fake + b"y")
    watch.flush()
    assert cap.whole() == b"x" + fake + b"y" and not watch.ended


def test_a_fake_marker_cannot_swallow_the_real_one() -> None:
    unclosed = b"\x00mcp-sandbox-end:" + b"0" * 32 + b":9"
    cap = StreamCapture(1000)
    watch = EndWatch(NONCE, cap)
    assert watch.feed(b"x" + unclosed + MARK + b"after")
    assert watch.exit_code == 7 and cap.whole() == b"x" + unclosed


def _spec(**kw: object) -> ContainerSpec:
    from mcp_sandbox.policy.limits import Limits, RunPlan
    from mcp_sandbox.sandbox.spec import build_spec

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
    from mcp_sandbox.policy.limits import Limits
    from mcp_sandbox.sandbox.spec import Mount, with_workspace

    base = _spec()
    assert shape_of(base) == shape_of(_spec(run_id="b"))
    assert shape_of(base) == shape_of(_spec(limits=Limits(timeout_s=99)))
    assert shape_of(base) == shape_of(replace(base, argv=STUB_ARGV, stdin=True))
    assert shape_of(base) != shape_of(_spec(limits=Limits(memory_mib=1024)))
    assert shape_of(base) != shape_of(_spec(extra_env={"A": "1"}))
    assert shape_of(base) != shape_of(_spec(seccomp_json="{ }"))
    masked = with_workspace(base, (Mount("bind", "/blank", "/workspace/.env", True),), "/x")
    assert shape_of(base) != shape_of(masked)
