"""The spine, through a real server over stdio and real Docker, in both protocol eras."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp_types import CallToolResult

from sandbox_client import (
    INITIALIZE,
    INITIALIZED,
    MODES,
    PLANTED_NAME,
    PLANTED_VALUE,
    RUNTIME,
    call,
    call_error,
    connect,
    eventually,
    labelled_containers,
    server_params,
)

pytestmark = pytest.mark.walls

HELLO = {
    "python": "import sys; print('hello from', sys.implementation.name)",
    "javascript": "console.log('hello from', process.release.name)",
    "bash": 'echo "hello from $0"',
}


@pytest.mark.parametrize("language", sorted(HELLO))
async def test_each_language_says_hello(client: Client, language: str) -> None:
    result = await call(client, "run_code", language=language, code=HELLO[language])
    assert result["exit_code"] == 0
    assert result["stdout"].startswith("hello from ")
    assert result["timed_out"] is False and result["truncated"] is False
    assert result["image"].startswith("mcp-sandbox-runtime")


async def test_shell_runs_sh_c_and_reports_the_exit_code(client: Client) -> None:
    result = await call(client, "shell", command="echo out; echo err >&2; exit 3")
    assert (result["exit_code"], result["stdout"], result["stderr"]) == (3, "out\n", "err\n")


async def test_stdin_reaches_the_program_byte_for_byte(client: Client) -> None:
    text = "line one\nctrl-p ctrl-q: \x10\x11 and more\n" * 100
    result = await call(
        client,
        "run_code",
        language="python",
        code="import sys; d = sys.stdin.read(); print(len(d), d.count('\\x10'))",
        stdin=text,
    )
    assert result["stdout"] == f"{len(text)} 100\n"


async def test_result_fields_come_small_first_and_a_short_text_block(client: Client) -> None:
    result = await client.call_tool("run_code", {"language": "python", "code": "print(1)"})
    keys = list(result.structured_content or {})
    assert keys[:4] == ["exit_code", "timed_out", "oom_killed", "truncated"]
    assert keys[-2:] == ["stdout", "stderr"]
    assert len(result.content) == 1 and "exit 0" in result.content[0].text  # type: ignore[union-attr]


async def test_tools_declare_schemas_and_all_four_hints(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) >= {"run_code", "shell"}
    for tool in (tools["run_code"], tools["shell"]):
        assert tool.output_schema is not None and "exit_code" in tool.output_schema["properties"]
        a = tool.annotations
        assert a is not None
        assert (a.read_only_hint, a.destructive_hint, a.open_world_hint) == (True, False, False)
        assert a.idempotent_hint is not None
    assert tools["run_code"].input_schema["properties"]["language"]["enum"] == [
        "python",
        "javascript",
        "bash",
    ]


# --- the walls, seen from inside ---------------------------------------------------------

INSIDE = r"""
import ctypes, json, os, socket
status = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)
def listed(p):
    try:
        return sorted(os.listdir(p))
    except OSError:
        return None
def writable(p):
    try:
        open(p, 'w').close(); os.unlink(p); return True
    except OSError:
        return False
print(json.dumps({
  "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
  "capeff": status['CapEff'].strip(), "capprm": status['CapPrm'].strip(),
  "capbnd": status['CapBnd'].strip(),
  "nonewprivs": status['NoNewPrivs'].strip() if 'NoNewPrivs' in status else None,
  "nonewprivs_prctl": ctypes.CDLL(None).prctl(39, 0, 0, 0, 0),  # PR_GET_NO_NEW_PRIVS
  "seccomp": status['Seccomp'].strip(),
  "nets": listed('/sys/class/net'), "interfaces": sorted(n for _, n in socket.if_nameindex()),
  "root_writable": writable('/probe'), "etc_writable": writable('/etc/probe'),
  "tmp_writable": writable('/tmp/probe'), "cwd": os.getcwd(),
  "cwd_writable": writable('probe'),
  "pid1": open('/proc/1/cmdline', 'rb').read().split(b'\0')[0].decode(),
  "env": dict(os.environ),
  "environ1": open('/proc/1/environ', 'rb').read().decode(errors='replace'),
  "docker_sock": os.path.exists('/var/run/docker.sock') or os.path.exists('/run/docker.sock'),
  "mounts": open('/proc/self/mounts').read(),
  "ipc_ns": os.readlink('/proc/self/ns/ipc') if os.path.exists('/proc/self/ns/ipc') else None,
  "setid": [os.path.join(d, f) for top in ('/usr', '/etc', '/opt') for d, _, fs in os.walk(top)
            for f in fs if not os.path.islink(os.path.join(d, f))
            and os.stat(os.path.join(d, f)).st_mode & 0o6000],
}))
"""


@pytest.fixture(scope="module")
async def inside(client: Client) -> dict[str, object]:
    result = await call(client, "run_code", language="python", code=INSIDE)
    assert result["exit_code"] == 0, result["stderr"]
    reported: dict[str, object] = json.loads(result["stdout"])
    return reported


async def test_runs_as_nobody_with_no_capabilities(inside: dict[str, object]) -> None:
    assert (inside["uid"], inside["gid"]) == (65534, 65534)
    assert inside["capeff"] == inside["capprm"] == inside["capbnd"] == "0000000000000000"


async def test_no_new_privileges_and_a_seccomp_filter(inside: dict[str, object]) -> None:
    assert inside["nonewprivs_prctl"] == 1  # the kernel's answer (under runsc: gVisor's)
    # gVisor's /proc/self/status has no NoNewPrivs line.
    assert inside["nonewprivs"] == ("1" if RUNTIME == "runc" else None)
    assert inside["seccomp"] == "2"  # filter mode
    assert inside["setid"] == []  # and no setuid or setgid file to try it with


async def test_only_loopback_exists(inside: dict[str, object]) -> None:
    assert inside["nets"] == ["lo"] and inside["interfaces"] == ["lo"]


async def test_root_is_read_only_and_scratch_is_writable(inside: dict[str, object]) -> None:
    assert inside["root_writable"] is False and inside["etc_writable"] is False
    assert inside["tmp_writable"] is True
    # The working directory is the workspace (the server's cwd), read-only by default.
    assert inside["cwd"] == "/workspace" and inside["cwd_writable"] is False


async def test_pid1_is_an_init_that_reaps(inside: dict[str, object]) -> None:
    assert inside["pid1"] == "/sbin/docker-init"


async def test_no_host_path_or_docker_socket_is_mounted(inside: dict[str, object]) -> None:
    assert inside["docker_sock"] is False
    mounts = str(inside["mounts"])
    for line in mounts.splitlines():
        _source, target, fstype, options = line.split()[:4]
        if target == "/workspace" or target.startswith("/workspace/"):
            # The workspace and the empty files masking its secrets: read-only binds.
            assert options.split(",")[0] == "ro", line
            continue
        # Docker's own per-container files are bind-mounted; nothing else from the host.
        if target in ("/etc/resolv.conf", "/etc/hostname", "/etc/hosts") or target.endswith(
            "/sbin/docker-init"
        ):
            continue
        if RUNTIME == "runsc" and target == "/" and fstype == "9p":
            continue  # gVisor's root: the image's filesystem, served by its gofer
        assert fstype in (
            "overlay",
            "proc",
            "tmpfs",
            "devpts",
            "mqueue",
            "sysfs",
            "cgroup",
            "cgroup2",
        ), line


async def test_the_environment_is_built_from_nothing(inside: dict[str, object]) -> None:
    env = inside["env"]
    assert isinstance(env, dict)
    assert set(env) <= {
        "PATH",
        "HOME",
        "LANG",
        "HOSTNAME",
        "PWD",
        "SHLVL",
        "_",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONPYCACHEPREFIX",
        "npm_config_cache",
        "XDG_CACHE_HOME",
        "PYTEST_ADDOPTS",
        "MYPY_CACHE_DIR",
        "RUFF_CACHE_DIR",
        "GIT_CONFIG_COUNT",
        "GIT_CONFIG_KEY_0",
        "GIT_CONFIG_VALUE_0",
    }
    assert PLANTED_NAME not in str(inside["environ1"]) and PLANTED_VALUE not in str(inside)


async def test_env_and_proc_environ_hold_no_planted_variable(client: Client) -> None:
    result = await call(client, "shell", command="env; cat /proc/1/environ /proc/self/environ")
    assert PLANTED_VALUE not in result["stdout"] and PLANTED_NAME not in result["stdout"]


# --- limits -----------------------------------------------------------------------------


async def test_a_busy_loop_ends_at_its_timeout(client: Client) -> None:
    result = await call(client, "run_code", language="python", code="while True: pass", timeout_s=1)
    assert result["timed_out"] is True and result["exit_code"] is None
    assert 900 <= result["duration_ms"] < 5000


async def test_a_sigterm_ignoring_backgrounded_forking_program_still_ends(client: Client) -> None:
    code = (
        "trap '' TERM HUP INT\n"
        "( trap '' TERM; while :; do sleep 1; done ) &\n"
        "nohup sh -c 'trap \"\" TERM; sleep 300' >/dev/null 2>&1 &\n"
        "echo started; while :; do :; done\n"
    )
    with anyio.fail_after(30):
        result = await call(client, "run_code", language="bash", code=code, timeout_s=1)
    assert result["timed_out"] is True and result["stdout"] == "started\n"


async def test_memory_hog_is_oom_killed(client: Client) -> None:
    result = await call(
        client,
        "run_code",
        language="python",
        code="b = bytearray(2 * 1024**3); print('survived')",
        timeout_s=30,
    )
    assert result["oom_killed"] is True and "survived" not in result["stdout"]


async def test_a_fork_bomb_stops_at_the_pids_limit(client: Client) -> None:
    code = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30); os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print('stopped after', n, e.errno)\n"
    )
    result = await call(client, "run_code", language="python", code=code, timeout_s=20)
    if RUNTIME == "runsc":
        # The pids limit counts gVisor's own host threads too: the bomb takes the whole
        # sandbox down (its kernel, a Go program, exits), long before the timeout.
        assert result["exit_code"] not in (0, None) and result["timed_out"] is False, result
        assert result["duration_ms"] < 15_000
        return
    assert result["stdout"].startswith("stopped after"), result
    assert int(result["stdout"].split()[2]) < 256


async def test_a_100_mb_flood_returns_fast_and_truncated(client: Client) -> None:
    with anyio.fail_after(30):
        result = await client.call_tool(
            "shell",
            {
                "command": "head -c 100000000 /dev/zero | tr '\\0' 'x'; echo; echo THE-END",
                "timeout_s": 60,
            },
        )
    data = result.structured_content
    assert data is not None and not result.is_error
    assert data["truncated"] is True and data["timed_out"] is False
    assert data["stdout_bytes"] == 100_000_000 + len("\nTHE-END\n")
    assert data["stdout"].endswith("THE-END\n") and "cut here" in data["stdout"]
    assert len(json.dumps(data, ensure_ascii=False)) < 40_000


async def test_an_endless_flood_is_stopped_long_before_its_timeout(client: Client) -> None:
    """Past 256 MiB of output in all, the host would only burn CPU reading what is thrown
    away: the sandbox is stopped, and the result says so."""
    result = await client.call_tool("shell", {"command": "cat /dev/zero", "timeout_s": 120})
    data = result.structured_content
    assert data is not None and not result.is_error
    assert data["timed_out"] is False and data["exit_code"] is None and data["truncated"]
    assert data["stdout_bytes"] > 256 * 1024 * 1024
    assert data["stderr"].endswith("the output passed 256 MiB; the sandbox was stopped]\n")


async def test_a_flood_of_quotes_and_backslashes_keeps_the_result_small(client: Client) -> None:
    result = await client.call_tool(
        "shell", {"command": "head -c 3000000 /dev/zero | tr '\\0' '\\\\'; echo '\"\"'"}
    )
    data = result.structured_content
    assert data is not None and data["truncated"] is True
    assert len(json.dumps(data, ensure_ascii=False, separators=(",", ":"))) < 40_000


def _wire_chars(result: CallToolResult) -> int:
    """The whole result as JSON on the wire: structured content and text block."""
    return len(result.model_dump_json(by_alias=True, exclude_none=True))


@pytest.mark.parametrize(
    "char", ['\\"', "\\\\", "\\n", "\\U0001f600"], ids=["quote", "backslash", "newline", "emoji"]
)
async def test_a_whole_result_stays_under_40000_chars_at_the_largest_output_bytes(
    client: Client, char: str
) -> None:
    """The text block counts too: a flood of quotes on both streams once made 40,646."""
    code = f"import sys; sys.stdout.write('{char}'*100000); sys.stderr.write('{char}'*100000)"
    result = await client.call_tool(
        "run_code", {"language": "python", "code": code, "output_bytes": 32_000}
    )
    data = result.structured_content
    assert data is not None and not result.is_error and data["truncated"] is True
    assert _wire_chars(result) < 40_000
    assert "--- stdout ---" in result.content[0].text  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("char", "budget"), [("\U0001f600", 24_000), ("\u4e2d", 24_000), ("\U0001f600", 32_000)]
)
async def test_a_cut_flood_of_multibyte_characters_still_fills_the_budget(
    client: Client, char: str, budget: int
) -> None:
    """The scrubber's margin is in characters: kept in bytes, it once ate all of the emoji."""
    args: dict[str, object] = {"language": "python", "code": f"print('{char}' * 200000)"}
    if budget != 24_000:
        args["output_bytes"] = budget
    data = await call(client, "run_code", **args)
    assert data["truncated"] is True
    shown = data["stdout"].count(char) * len(char.encode())
    assert shown >= budget * 0.95, shown


async def test_terminal_control_sequences_are_neutralised(client: Client) -> None:
    result = await call(
        client,
        "shell",
        command=r"printf '\033[31mred\033]0;title\007 nul:\000 bidi:\342\200\256x\n'",
    )
    out = result["stdout"]
    assert "\x1b" not in out and "\x07" not in out and "\x00" not in out and "\u202e" not in out
    assert "red" in out and "\u241b" in out


async def test_invalid_utf8_is_replaced(client: Client) -> None:
    result = await call(client, "shell", command=r"printf 'a\377\376b\n'")
    assert result["stdout"] == "a\ufffd\ufffdb\n"


async def test_a_file_written_in_one_call_is_gone_in_the_next(client: Client) -> None:
    await call(client, "shell", command="echo secret > /tmp/left; echo secret > left")
    result = await call(client, "shell", command="cat /tmp/left left 2>&1; true")
    assert "No such file" in result["stdout"]


async def test_every_call_gets_a_new_container(client: Client) -> None:
    ids, names = set(), set()
    for _ in range(3):
        # The container's own writable layer: a new one per container.
        result = await call(client, "shell", command="grep -o 'upperdir=[^,]*' /proc/self/mounts")
        ids.add(result["stdout"])
        names.add(result["sandbox"])
    assert len(names) == 3
    # gVisor shows no overlay: its root is its gofer's (9p), the layer is not named.
    assert len(ids) == (3 if RUNTIME == "runc" else 1)


# --- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ({"language": "ruby", "code": "puts 1"}, "supported: python, javascript, bash"),
        ({"language": "python", "code": ""}, "empty"),
        ({"language": "python", "code": "  \n"}, "empty"),
        ({"language": "python", "code": "#" * 100_001}, "limit is 100000"),
        ({"language": "python", "code": "print(1)", "timeout_s": 121}, "maximum of 120"),
        ({"language": "python", "code": "print(1)", "timeout_s": -1}, "timeout_s"),
        ({"language": "python", "code": "print(1)", "timeout_s": "soon"}, "timeout_s"),
        (
            {"language": "python", "code": "print(1)", "timeout_s": 1e-300},
            "timeout_s: Input should be greater than or equal to 0.1",
        ),
        (
            {"language": "python", "code": "print(1)", "cpus": 1e-12},
            "cpus: Input should be greater than or equal to 0.01",
        ),
        ({"language": "python"}, "code is required"),
        ({"language": "python", "code": "1", "memory": 9}, "unknown argument 'memory'"),
        ({"language": "python", "code": "print(1)\x00"}, "NUL"),
    ],
)
async def test_bad_input_is_one_clear_line(
    client: Client, args: dict[str, object], needle: str
) -> None:
    message = await call_error(client, "run_code", **args)
    assert needle in message


async def test_oversized_stdin_is_refused(client: Client) -> None:
    message = await call_error(client, "shell", command="cat", stdin="x" * 1_000_001)
    assert "stdin" in message and "1000000" in message


@pytest.mark.parametrize("mode", MODES)
async def test_docker_unreachable_still_starts_and_says_so(mode: str) -> None:
    async with connect(mode, env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"}) as c:
        tools = (await c.list_tools()).tools
        assert {t.name for t in tools} >= {"run_code", "shell"}
        message = await call_error(c, "run_code", language="python", code="print(1)")
        assert "Docker" in message


@pytest.mark.parametrize("mode", MODES)
async def test_missing_image_names_the_command_that_fixes_it(mode: str) -> None:
    async with connect(mode, env={"MCP_SANDBOX_IMAGE": "mcp-sandbox-test-missing:none"}) as c:
        message = await call_error(c, "shell", command="true")
        assert "mcp-sandbox images build" in message


@pytest.mark.parametrize("mode", MODES)
async def test_cancelling_a_call_removes_its_container(mode: str) -> None:
    """The cold path; test_pool covers a warm sandbox's cancellation."""
    before = set(labelled_containers())
    async with connect(mode, env={"MCP_SANDBOX_POOL__ENABLED": "false"}) as c:
        async with anyio.create_task_group() as tg:
            tg.start_soon(c.call_tool, "shell", {"command": "sleep 60", "timeout_s": 60})
            await eventually(lambda: bool(set(labelled_containers()) - before))
            tg.cancel_scope.cancel()
        await eventually(lambda: not set(labelled_containers()) - before)
        # The server is still fine afterwards.
        assert (await call(c, "shell", command="echo ok"))["stdout"] == "ok\n"


async def test_a_call_waiting_past_the_queue_timeout_for_a_slot_fails_clearly() -> None:
    """The wait is bounds.queue_timeout_s; a call's own timeout_s is its run time only."""
    env = {"MCP_SANDBOX_MAX_CONCURRENT": "1", "MCP_SANDBOX_BOUNDS__QUEUE_TIMEOUT_S": "1"}
    async with connect("auto", env=env) as c:
        async with anyio.create_task_group() as tg:
            tg.start_soon(c.call_tool, "shell", {"command": "sleep 4", "timeout_s": 10})
            await anyio.sleep(0.5)
            message = await call_error(c, "shell", command="true", timeout_s=10)
        assert "busy" in message and "bounds.queue_timeout_s" in message


def _raw_server_ready() -> subprocess.Popen[bytes]:
    """A server on raw pipes, past its handshake (so its signal handlers are installed)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcp_sandbox", "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=dict(server_params().env or {}),
    )
    assert proc.stdin is not None and proc.stdout is not None
    _send(proc, INITIALIZE, INITIALIZED)
    assert b'"id":1' in proc.stdout.readline()
    return proc


def _send(proc: subprocess.Popen[bytes], *messages: dict[str, object]) -> None:
    assert proc.stdin is not None
    for m in messages:
        proc.stdin.write((json.dumps(m) + "\n").encode())
    proc.stdin.flush()


def test_a_request_the_sdk_cannot_read_still_gets_a_one_line_answer() -> None:
    """A JavaScript client may send a lone surrogate as \\ud800; the SDK's strict parser
    cannot read that line, nor a huge number or deep nesting, and used to drop it: the call
    hung. Each gets its answer now, and the server goes on."""
    call = '{"jsonrpc":"2.0","id":%s,"method":"tools/call","params":{"name":"%s","arguments":%s}}'
    lines = [
        call % (2, "run_code", '{"language":"python","code":"print(1) # \\ud800"}'),
        call % (3, "shell", '{"command":"true","memory_mib":' + "9" * 5000 + "}"),
        call % (4, "shell", '{"command":' + "[" * 100_000 + "]" * 100_000 + "}"),
        '{"jsonrpc":"2.0","id":"s5","method":"tools/list","params":{"x":"\\udc80"}}',
        call % (6, "shell", '{"command":"echo ok"}'),
    ]
    with _raw_server_ready() as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("".join(line + "\n" for line in lines).encode())
        proc.stdin.flush()
        answers: dict[int | str, Any] = {}
        for _ in lines:
            # A dropped request would leave this read waiting for ever.
            assert select.select([proc.stdout], [], [], 60)[0], f"no answer; got {answers}"
            answer = json.loads(proc.stdout.readline())
            answers[answer["id"]] = answer
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    for request_id in (2, 3, 4):
        result = answers[request_id]["result"]
        assert result["isError"] is True, answers[request_id]
        [text] = [c["text"] for c in result["content"]]
        assert text.startswith("invalid request: ") and "\n" not in text
    assert "surrogate" in answers[2]["result"]["content"][0]["text"]
    assert answers["s5"]["error"]["code"] == -32700
    assert answers[6]["result"]["structuredContent"]["stdout"] == "ok\n"


def test_server_exits_cleanly_on_sigterm_and_leaves_nothing() -> None:
    before = set(labelled_containers())
    with _raw_server_ready() as proc:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    assert set(labelled_containers()) <= before


def test_sigterm_during_a_run_removes_its_container() -> None:
    before = set(labelled_containers())
    with _raw_server_ready() as proc:
        call = {"name": "shell", "arguments": {"command": "sleep 60", "timeout_s": 60}}
        _send(proc, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call})
        deadline = time.monotonic() + 20
        while not set(labelled_containers()) - before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(labelled_containers()) - before, "the call never started a container"
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    assert set(labelled_containers()) <= before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_under_a_queue_of_calls_leaves_nothing_behind(sig: signal.Signals) -> None:
    """Calls keep arriving, waiting for slots and creating sandboxes while the server stops."""
    before = set(labelled_containers())
    with _raw_server_ready() as proc:
        for i in range(12):
            call = {"name": "shell", "arguments": {"command": "sleep 600", "timeout_s": 100}}
            _send(proc, {"jsonrpc": "2.0", "id": 10 + i, "method": "tools/call", "params": call})
        deadline = time.monotonic() + 30
        while not set(labelled_containers()) - before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(labelled_containers()) - before, "the calls never started a container"
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 0
    time.sleep(2)  # a create the daemon was still working on would show up by now
    assert set(labelled_containers()) <= before
