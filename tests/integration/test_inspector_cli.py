"""The server driven over stdio by a client we did not write: MCP Inspector's CLI mode.

`tests/install-inspector.sh` puts the pinned Inspector in tests/.inspector/ (CI runs it);
MCP_SANDBOX_INSPECTOR may name another `mcp-inspector` binary. A missing one fails the
test: a skipped client is an untested client.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.docker

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_INSPECTOR = REPO_ROOT / "tests" / ".inspector" / "node_modules" / ".bin" / "mcp-inspector"
SERVER_ARGV = (sys.executable, "-m", "mcp_sandbox", "serve")
# Start-up (node, then the server) takes about 2 s; a container run well under 1 s.
CALL_TIMEOUT_S = 60
EXPECTED_ANNOTATIONS = {
    "readOnlyHint": True,
    "destructiveHint": False,
    "idempotentHint": True,
    "openWorldHint": False,
}


@pytest.fixture(scope="module")
def inspector() -> Path:
    configured = os.environ.get("MCP_SANDBOX_INSPECTOR")
    path = Path(configured) if configured else DEFAULT_INSPECTOR
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"MCP Inspector not found at {path}: run tests/install-inspector.sh "
            "(or point MCP_SANDBOX_INSPECTOR at an mcp-inspector binary)",
            pytrace=False,
        )
    return path


def run_inspector(
    inspector: Path, tmp_path: Path, *method_args: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run one Inspector CLI call against a fresh server; return the process and its JSON."""
    # The server's audit records stay out of the user's state directory (the Inspector hands
    # the server only the variables -e names).
    audit = f"MCP_SANDBOX_AUDIT__PATH={tmp_path / 'audit.jsonl'}"
    argv = [
        str(inspector), "--cli", "--format", "json", "-e", audit, *method_args,
        "--", *SERVER_ARGV,
    ]  # fmt: skip
    # Keep the Inspector's own state files out of the developer's home.
    env = {
        **os.environ,
        "MCP_CATALOG_PATH": str(tmp_path / "catalog.json"),
        "MCP_CLIENT_CONFIG_PATH": str(tmp_path / "client.json"),
    }
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
        start_new_session=True,  # a hung run is ended with the server it spawned
    )
    try:
        stdout, stderr = proc.communicate(timeout=CALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"inspector hung past {CALL_TIMEOUT_S}s: {argv}\nstderr:\n{stderr}")
    done = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    try:
        payload = json.loads(stdout)
    except json.JSONDecodeError:
        pytest.fail(f"inspector printed no JSON (exit {proc.returncode})\n{stdout}\n{stderr}")
    return done, payload


def test_tools_list_shows_the_tools_with_their_annotations(inspector: Path, tmp_path: Path) -> None:
    proc, payload = run_inspector(inspector, tmp_path, "--method", "tools/list")

    assert proc.returncode == 0, proc.stderr
    tools = {tool["name"]: tool for tool in payload["result"]["tools"]}
    assert set(tools) == {"run_code", "shell", "prepare_env"}
    for name in ("run_code", "shell"):
        assert tools[name]["annotations"] == EXPECTED_ANNOTATIONS
    assert tools["run_code"]["inputSchema"]["required"] == ["language", "code"]
    assert tools["shell"]["inputSchema"]["required"] == ["command"]
    # It writes an environment volume and reaches the package indexes: neither read-only nor
    # closed-world, and it changes no file of the user's.
    assert tools["prepare_env"]["annotations"] == {
        "readOnlyHint": False,
        "destructiveHint": False,
        "idempotentHint": True,
        "openWorldHint": True,
    }


def test_run_code_call_returns_output_and_exit_code(inspector: Path, tmp_path: Path) -> None:
    proc, payload = run_inspector(
        inspector,
        tmp_path,
        "--method",
        "tools/call",
        "--tool-name",
        "run_code",
        "--tool-arg",
        "language=python",
        "--tool-arg",
        "code=print(6*7)",
    )

    assert proc.returncode == 0, proc.stderr
    result = payload["result"]
    assert result["isError"] is False
    structured = result["structuredContent"]
    assert structured["exit_code"] == 0
    assert structured["stdout"] == "42\n"
    assert not structured["timed_out"]
    assert "42" in result["content"][0]["text"]
    leftover = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"name=mcp-sandbox-{structured['run_id']}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert leftover.stdout.strip() == ""


def test_unknown_language_is_an_error_result_of_one_line(inspector: Path, tmp_path: Path) -> None:
    proc, payload = run_inspector(
        inspector,
        tmp_path,
        "--method",
        "tools/call",
        "--tool-name",
        "run_code",
        "--tool-arg",
        "language=ruby",
        "--tool-arg",
        "code=puts 1",
    )

    # The Inspector exits non-zero on an isError result (its "tool_is_error").
    assert proc.returncode != 0
    result = payload["result"]
    assert result["isError"] is True
    assert "structuredContent" not in result
    [block] = result["content"]
    text = block["text"]
    assert "\n" not in text.strip()
    assert "unknown language" in text
    assert "supported: python, javascript, bash" in text
