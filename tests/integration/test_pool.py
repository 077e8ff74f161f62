"""Warm sandboxes: as walled as cold ones, one call each, removed on every path."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from sandbox_client import (
    RUNTIME,
    call,
    connect,
    eventually,
    labelled_containers,
    server_params,
    warm_call,
)

from .test_spine import INSIDE

COLD = {"MCP_SANDBOX_POOL__ENABLED": "false"}


def _exists(name: str) -> bool:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"name=^{name}$"],
        capture_output=True,
        text=True,
        check=True,
    )
    return bool(out.stdout.strip())


@pytest.mark.parametrize("env", [None, COLD], ids=["warm", "cold"])
async def test_warm_and_cold_sandboxes_have_the_same_walls(env: dict[str, str] | None) -> None:
    async with connect("auto", env=env) as c:
        if env is None:
            result = await warm_call(c, tool="run_code", language="python", code=INSIDE)
        else:
            result = await call(c, "run_code", language="python", code=INSIDE)
            assert result["pooled"] is False
    inside = json.loads(result["stdout"])
    assert (inside["uid"], inside["capeff"], inside["nonewprivs_prctl"], inside["seccomp"]) == (
        65534,
        "0000000000000000",
        1,
        "2",
    )
    # gVisor's /proc/self/status has no NoNewPrivs line.
    assert inside["nonewprivs"] == ("1" if RUNTIME == "runc" else None)
    assert inside["nets"] == ["lo"] and inside["interfaces"] == ["lo"]
    assert inside["root_writable"] is False
    assert inside["pid1"] == "/sbin/docker-init"
    assert "canary" not in json.dumps(inside["env"])


async def test_two_calls_never_share_a_sandbox() -> None:
    async with connect("auto") as c:
        first = await warm_call(c, tool="shell", command="echo mark > /tmp/mark; echo ok")
        seen = {first["sandbox"]}
        for _ in range(4):
            r = await call(
                c, "shell", command="cat /tmp/mark 2>&1; grep -o 'upperdir=[^,]*' /proc/self/mounts"
            )
            assert "No such file" in r["stdout"]
            seen.add(r["sandbox"])
        assert len(seen) == 5
        await eventually(lambda: not any(_exists(n) for n in seen))


async def test_a_timed_out_warm_call_is_killed_and_removed() -> None:
    async with connect("auto") as c:
        await warm_call(c, tool="shell", command="true")
        r = await warm_call(c, tool="shell", command="trap '' TERM; sleep 60", timeout_s=1)
        assert r["timed_out"] is True and r["exit_code"] is None
        await eventually(lambda: not _exists(r["sandbox"]))


async def test_output_after_the_end_is_discarded_and_exit_codes_pass() -> None:
    async with connect("auto") as c:
        r = await warm_call(c, tool="shell", command="(sleep 0.5; echo LATE) & echo early; exit 5")
        assert r["exit_code"] == 5 and r["stdout"] == "early\n"


# The program tries every way its own user has into its stub (the parent) for the nonce,
# then forges an end marker with what it found and keeps running.
STEAL = r"""
import os, re, sys
stub = os.getppid()
found = set()
for path in ("/proc/%d/mem" % stub, "/proc/%d/fd/0" % stub, "/proc/%d/environ" % stub):
    try:
        with open(path, "rb") as f:
            found.add(path)
    except OSError as e:
        print(path, type(e).__name__)
print("own fd dir uid", os.stat("/proc/self/fd").st_uid, flush=True)
# tini (pid 1) holds the stub's stdin too: by now nothing of the request may be left there.
fd = os.open("/proc/1/fd/0", os.O_RDONLY | os.O_NONBLOCK)
try:
    left = os.read(fd, 4096)
except BlockingIOError:
    left = b""
print("left on stdin", re.findall(rb"[0-9a-f]{32}", left), flush=True)
# The page the stub read the nonce into is ours too, after the fork: wiped to zeros.
page = sys._getframe(1).f_globals.get("_NONCE_PAGE")
state = "missing" if page is None else "zeros" if not any(page[:64]) else "HELD"
print("nonce page", state, flush=True)
for guess in sorted(found) or ["0" * 32]:
    for fd in (1, 2):
        os.write(fd, b"\0mcp-sandbox-end:" + b"0" * 32 + b":0\0")
sys.stdout.flush()
print("still here")
raise SystemExit(7)
"""


async def test_a_warm_program_cannot_take_its_stubs_nonce() -> None:
    async with connect("auto") as c:
        r = await warm_call(c, tool="run_code", language="python", code=STEAL)
    lines = r["stdout"].splitlines()
    # gVisor's procfs lets the program open its stub's fd/0 and environ (no dumpable check
    # there); neither holds the nonce, and its memory stays closed.
    refused = ("mem", "fd/0", "environ") if RUNTIME == "runc" else ("mem",)
    for f in refused:
        assert any(line.endswith(f"/{f} PermissionError") for line in lines), lines
    # The program's own /proc entries are its own (it is dumpable, as in a cold sandbox).
    assert "own fd dir uid 65534" in lines and "left on stdin []" in lines
    if RUNTIME == "runc":
        assert "nonce page zeros" in lines  # MADV_WIPEONFORK (Linux 4.14) works here
    else:
        assert "nonce page HELD" not in lines
    # The forged marker is output; the real end comes with the real exit code.
    assert r["stdout"].endswith("still here\n") and r["exit_code"] == 7


async def test_an_endless_flood_in_a_warm_sandbox_is_stopped() -> None:
    async with connect("auto") as c:
        r = await warm_call(c, tool="shell", command="cat /dev/zero >&2", timeout_s=120)
        assert r["timed_out"] is False and r["exit_code"] is None
        assert r["stderr_bytes"] > 256 * 1024 * 1024
        assert r["stderr"].endswith("the output passed 256 MiB; the sandbox was stopped]\n")
        await eventually(lambda: not _exists(r["sandbox"]))


def _running_sleep60() -> list[str]:
    found = []
    for cid in labelled_containers():
        top = subprocess.run(["docker", "top", cid], capture_output=True, text=True)
        if "sleep 60" in top.stdout:
            found.append(cid)
    return found


async def test_a_cancelled_warm_call_removes_its_container() -> None:
    async with connect("auto") as c:
        await warm_call(c, tool="shell", command="true")
        await anyio.sleep(1.0)  # a warm sandbox is ready again
        async with anyio.create_task_group() as tg:
            tg.start_soon(c.call_tool, "shell", {"command": "sleep 60", "timeout_s": 60})
            await eventually(lambda: bool(_running_sleep60()))
            busy = _running_sleep60()
            tg.cancel_scope.cancel()
        await eventually(lambda: not any(cid in labelled_containers() for cid in busy))


async def test_the_pool_refills_after_use() -> None:
    env = {"MCP_SANDBOX_POOL__MIN_SIZE": "2", "MCP_SANDBOX_POOL__MAX_SIZE": "2"}
    async with connect("auto", env=env) as c:
        for _ in range(3):
            await warm_call(c, tool="shell", command="true")
        await eventually(lambda: len(labelled_containers()) >= 2, timeout_s=30)


# What a program sees of how it was started, warm or cold: the same, byte for byte (but the
# order of the environment). The Python stub runs a `python3 -c` call in its own, already
# started, interpreter.
PARITY = [
    pytest.param(
        "run_code",
        {
            "language": "python",
            "code": "import sys, os, json, signal\n"
            "print(json.dumps([sys.argv, sys.orig_argv[:2], sys.path, sorted(sys.modules),"
            " dict(os.environ), os.getcwd(), sorted(globals()), __doc__, sys.flags.optimize,"
            " [str(signal.getsignal(s)) for s in (signal.SIGPIPE, signal.SIGINT)],"
            " os.getuid(), os.getgid(), os.getgroups(), os.umask(0)], sort_keys=True))",
        },
        id="python-startup",
    ),
    pytest.param(
        "run_code",
        {"language": "python", "code": "import sys; print(sys.stdin.read()[::-1])", "stdin": "abc"},
        id="python-stdin",
    ),
    pytest.param(
        "run_code",
        {"language": "python", "code": "def f():\n  raise ValueError('x')\nf()"},
        id="python-traceback",
    ),
    pytest.param("run_code", {"language": "python", "code": "print(("}, id="python-syntax"),
    pytest.param(
        "run_code", {"language": "python", "code": "raise SystemExit('bye')"}, id="python-exit"
    ),
    pytest.param(
        "shell",
        {"command": "env | sort; echo $PWD; trap; ulimit -a; umask; id; ls /proc/self/fd"},
        id="shell",
    ),
    pytest.param(
        "run_code",
        {
            "language": "python",
            "code": "import os, sys; print(os.getcwd(), os.environ.get('PWD'), sys.path[0])",
            "workdir": "server",
        },
        id="python-workdir",
    ),
    pytest.param("shell", {"command": "pwd; echo $PWD $OLDPWD", "workdir": "tests"}, id="workdir"),
    # A child killed for memory while the program goes on: the daemon reports a cold one.
    pytest.param(
        "shell",
        {"command": "python3 -c 'x = bytearray(900 * 2**20)'; echo rc=$?"},
        id="child-oom",
    ),
    pytest.param(
        "run_code",
        {
            "language": "javascript",
            "code": "const e = process.env; console.log(JSON.stringify([process.argv.slice(1),"
            " Object.keys(e).sort().map((k) => [k, e[k]]), process.cwd()]))",
        },
        id="javascript",
    ),
]


@pytest.mark.parametrize(("tool", "args"), PARITY)
async def test_a_warm_call_is_indistinguishable_from_a_cold_one(
    tool: str, args: dict[str, Any]
) -> None:
    async with connect("auto", env=COLD) as cold_client:
        cold = await call(cold_client, tool, **args)
    async with connect("auto") as warm_client:
        warm = await warm_call(warm_client, tool=tool, **args)
    assert cold["pooled"] is False
    keys = ("exit_code", "stdout", "stderr", "timed_out", "oom_killed")
    assert {k: warm[k] for k in keys} == {k: cold[k] for k in keys}


def _secrets(root: Path, which: str) -> None:
    """`.env` and `.ssh/id_rsa` holding ``which``, replaced as editors and git do it."""
    (root / ".env.new").write_text(f"TOKEN={which}\n")
    (root / ".env.new").rename(root / ".env")
    if (root / ".ssh").exists():
        (root / ".ssh" / "id_rsa").unlink()
        (root / ".ssh").rmdir()
    (root / ".ssh").mkdir(mode=0o755)
    (root / ".ssh" / "id_rsa").write_text(f"KEY-{which}\n")
    root.chmod(0o755)


@pytest.mark.walls
async def test_a_masked_file_replaced_while_a_sandbox_waits_is_never_shown(
    tmp_path: Path,
) -> None:
    """Editors save by renaming over; git checks out by unlinking: the old file's overmount
    goes with it, in a sandbox already started. The stub sees its mount gone and refuses."""
    _secrets(tmp_path, "first")
    params = server_params()
    params.args += ["--workspace", str(tmp_path)]
    look = "cat /workspace/.env /workspace/.ssh/id_rsa 2>&1; echo done"
    async with Client(params, mode="auto") as c:
        if RUNTIME == "runc":
            first = await warm_call(c, tool="shell", command=look)
        else:  # under gVisor no sandbox waits with a workspace mounted
            first = await call(c, "shell", command=look)
            assert first["pooled"] is False
        assert "first" not in first["stdout"] and "done" in first["stdout"]
        await anyio.sleep(1.5)  # the next warm sandbox is up, its masks mounted
        _secrets(tmp_path, "second")
        for _ in range(3):
            r = await call(c, "shell", command=look)
            assert "second" not in r["stdout"] and "done" in r["stdout"], r
