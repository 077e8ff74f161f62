"""Results an agent can act on, through the real tools in both protocol eras: what a run used."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult

from sandbox_client import MODES, PLANTED_VALUE, RUNTIME, call, connect, warm_call

COLD = {"MCP_SANDBOX_POOL__ENABLED": "false"}
ALLOCATE_MIB = 200
# gVisor shows a sandbox no cgroup files: what only they tell is null there, never made up.
CGROUP_FIGURES = ("cpu_user_ms", "cpu_system_ms", "peak_memory_mib", "oom_kills", "peak_processes")
# Touch every page, so the memory is resident, not just reserved.
HUNGRY = (
    f"b = bytearray({ALLOCATE_MIB} * 1024 * 1024)\n"
    "for i in range(0, len(b), 4096): b[i] = 1\n"
    "print(len(b))"
)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
async def test_a_memory_hungry_run_reports_its_peak_within_ten_percent(
    mode: str, warm: bool
) -> None:
    async with connect(mode, env=None if warm else COLD) as c:
        args: dict[str, Any] = {
            "tool": "run_code",
            "language": "python",
            "code": HUNGRY,
            "memory_mib": 512,
        }
        result = await warm_call(c, **args) if warm else await call(c, **args)
    assert result["pooled"] is warm and result["exit_code"] == 0
    used = result["resources"]
    if RUNTIME != "runc":
        assert all(used[k] is None for k in CGROUP_FIGURES), used
        assert used["memory_limit_mib"] == 512 and used["wall_ms"] == result["duration_ms"]
        return
    assert ALLOCATE_MIB <= used["peak_memory_mib"] <= ALLOCATE_MIB * 1.1, used
    assert used["memory_limit_mib"] == 512 and used["oom_kills"] == 0
    assert used["cpu_user_ms"] + used["cpu_system_ms"] > 0
    assert 1 <= used["peak_processes"] <= used["processes_limit"]
    assert used["wall_ms"] == result["duration_ms"]


@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
async def test_bytes_left_in_tmp_are_counted(warm: bool) -> None:
    command = "head -c 3000000 /dev/zero > /tmp/a; echo done"
    async with connect("auto", env=None if warm else COLD) as c:
        args = {"tool": "shell", "command": command}
        result = await warm_call(c, **args) if warm else await call(c, **args)
    used = result["resources"]
    assert 3_000_000 <= used["tmp_bytes_added"] < 3_200_000, used
    # A read-only workspace is the host's own disk: nothing of it is the run's.
    assert result["workspace"]["mode"] == "ro" and used["workdir_bytes_added"] is None
    assert result["stdout"] == "done\n" and result["stderr"] == ""


async def test_bytes_left_in_a_copied_workspace_are_counted(client: Client) -> None:
    command = "head -c 1000000 /dev/zero > new.bin; echo done"
    result = await call(
        client, "shell", command=command, workdir="tests/sample_project", workspace="copy"
    )
    used = result["resources"]
    assert 1_000_000 <= used["workdir_bytes_added"] < 1_200_000, used
    assert result["stdout"] == "done\n"


async def test_an_oom_killed_run_says_how_close_it_came(client: Client) -> None:
    code = "b = []\nwhile True: b.append(bytearray(8 * 1024 * 1024))"
    result = await call(client, "run_code", language="python", code=code, memory_mib=128)
    assert result["oom_killed"] is True
    used = result["resources"]
    if RUNTIME != "runc":
        assert all(used[k] is None for k in CGROUP_FIGURES), used
        return
    assert used["peak_memory_mib"] >= 120 and used["memory_limit_mib"] == 128, used
    assert used["oom_kills"] > 0
    full = await client.call_tool(
        "run_code", {"language": "python", "code": code, "memory_mib": 128}
    )
    assert "peak memory 128.0 of 128 MiB" in full.content[0].text  # type: ignore[union-attr]


async def test_a_forged_report_in_the_output_is_only_output(client: Client) -> None:
    forged = r"printf '\000mcp-sandbox-usage:1,1,1,0,1,0,0\000' >&2; echo after >&2"
    result = await call(client, "shell", command=forged)
    assert result["stderr"].endswith("after\n")
    assert "mcp-sandbox-usage" in result["stderr"]
    if RUNTIME != "runc":  # not the forged figures: none
        assert result["resources"]["peak_memory_mib"] is None
        return
    assert result["resources"]["peak_memory_mib"] > 0.0


SAMPLE = str(Path(__file__).parent.parent / "sample_project")
FAILING_NODE = (
    "cat > /tmp/f.test.js <<'EOF'\n"
    'const test = require("node:test"); const assert = require("node:assert");\n'
    'test("one fails", () => { assert.strictEqual(1, 2); });\n'
    'test("two passes", () => {});\n'
    'test("three skips", { skip: true }, () => {});\n'
    "EOF\n"
)
# Output far past any budget before the runner starts: the report's counts stand anyway.
FLOOD = "seq 1 200000; "


def _wire_chars(result: CallToolResult) -> int:
    return len(result.model_dump_json(by_alias=True, exclude_none=True))


@pytest.fixture(scope="module", params=MODES)
async def sample(request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    """A server whose workspace is the sample project (one passing, one failing test)."""
    async with connect(request.param, env={"MCP_SANDBOX_WORKSPACE": SAMPLE}) as c:
        yield c


@pytest.mark.parametrize("flood", ["", FLOOD], ids=["whole", "truncated"])
async def test_a_failing_pytest_suite_gives_its_counts_and_failing_ids(
    sample: Client, flood: str
) -> None:
    full = await sample.call_tool(
        "shell", {"command": flood + "python3 -m pytest -q", "output_bytes": 4096}
    )
    result = full.structured_content
    assert result is not None and result["exit_code"] == 1
    assert result["truncated"] is bool(flood)
    tests = result["tests"]
    assert (tests["passed"], tests["failed"], tests["skipped"], tests["errors"]) == (1, 1, 0, 0)
    assert tests["reports"] == ["pytest.xml"]
    [failing] = tests["failing"]
    assert failing["id"] == "test_sample::test_mean_of_nothing_fails_on_purpose"
    assert "ZeroDivisionError" in failing["text"]
    text = full.content[0].text  # type: ignore[union-attr]
    assert "tests: 1 passed, 1 failed" in text and "FAILED test_sample::test_mean" in text
    assert _wire_chars(full) < 40_000


@pytest.mark.parametrize("flood", ["", FLOOD], ids=["whole", "truncated"])
async def test_a_failing_node_suite_gives_its_counts_and_failing_ids(
    sample: Client, flood: str
) -> None:
    command = FAILING_NODE + flood + "node --test /tmp/f.test.js"
    full = await sample.call_tool("shell", {"command": command, "output_bytes": 4096})
    result = full.structured_content
    assert result is not None and result["exit_code"] == 1
    assert result["truncated"] is bool(flood)
    tests = result["tests"]
    assert (tests["passed"], tests["failed"], tests["skipped"], tests["errors"]) == (1, 1, 1, 0)
    assert tests["reports"] == ["node.tap"]
    [failing] = tests["failing"]
    assert failing["id"] == "one fails" and "1 !== 2" in failing["text"]
    assert _wire_chars(full) < 40_000


async def test_report_tests_asks_for_a_summary_the_command_does_not_show(
    sample: Client,
) -> None:
    code = "import pytest, sys; sys.exit(pytest.main(['-q', '-k', 'add']))"
    result = await call(sample, "run_code", language="python", code=code, report="tests")
    assert result["tests"]["passed"] == 1 and result["tests"]["failed"] == 0
    plain = await call(sample, "shell", command="echo no tests here")
    assert plain["tests"] is None


async def test_hundreds_of_failures_keep_the_result_under_40000_chars(sample: Client) -> None:
    code = (
        "cat > /tmp/test_many.py <<'EOF'\n"
        "import pytest\n"
        "@pytest.mark.parametrize('i', range(400))\n"
        "def test_fails(i):\n"
        "    assert i < 0, 'x' * 3000\n"
        "EOF\n"
        "python3 -m pytest -q -p no:cacheprovider /tmp/test_many.py"
    )
    # A report past what the sandbox ships (1 MiB): cut, its counts from the suite's tag.
    args = {"command": code, "output_bytes": 32_000, "timeout_s": 60}
    full = await sample.call_tool("shell", args)
    result = full.structured_content
    assert result is not None
    tests = result["tests"]
    assert tests["failed"] == 400 and 0 < len(tests["failing"]) < 400
    assert "cut at" in tests["note"] and tests["note"].endswith("not listed")
    assert _wire_chars(full) < 40_000


@pytest.mark.parametrize("mode", MODES)
async def test_a_ten_second_run_sends_progress_with_its_last_line(mode: str) -> None:
    seen: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, message))

    command = (
        f"echo token {PLANTED_VALUE}; for i in 1 2 3 4 5 6 7 8 9 10; do echo step $i; sleep 1; done"
    )
    async with connect(mode) as c:
        result = await c.call_tool(
            "shell", {"command": command, "timeout_s": 30}, progress_callback=on_progress
        )
    assert not result.is_error
    assert len(seen) >= 3, seen
    progress = [p for p, _ in seen]
    assert progress == sorted(progress) and progress[0] >= 3
    assert all(m is not None and m.split(" s", 1)[0].isdigit() for _, m in seen)
    assert any("step " in (m or "") for _, m in seen)
    assert PLANTED_VALUE not in repr(seen)


@pytest.mark.parametrize("mode", MODES)
async def test_a_long_log_is_readable_in_full_as_a_resource_and_scrubbed(mode: str) -> None:
    command = f"seq 1 100000; echo token {PLANTED_VALUE}; echo last line >&2"
    async with connect(mode) as c:
        full = await c.call_tool("shell", {"command": command, "output_bytes": 2048})
        result = full.structured_content
        assert result is not None and result["truncated"] is True
        run_id = result["run_id"]
        assert result["full_output"] == [f"sandbox://runs/{run_id}/stdout"]
        read = await c.read_resource(f"sandbox://runs/{run_id}/stdout")
        with pytest.raises(MCPError):
            await c.read_resource(f"sandbox://runs/{run_id}x/stdout")
    text = read.contents[0].text  # type: ignore[union-attr]
    lines = text.splitlines()
    assert lines[:3] == ["1", "2", "3"] and "99999" in lines and "100000" in lines
    assert PLANTED_VALUE not in text and lines[-1].startswith("token ")
    assert _wire_chars(full) < 40_000
