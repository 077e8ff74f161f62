"""No secret gets out: results, errors and log lines all pass the scrubber."""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.parse

import pytest
from mcp import Client

from sandbox_client import (
    INITIALIZE,
    INITIALIZED,
    PLANTED_VALUE,
    call,
    call_error,
    connect,
    server_params,
)

GITHUB_TOKEN = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"


def _encodings(value: str) -> dict[str, str]:
    raw = value.encode()
    return {
        "plain": value,
        "base64": base64.b64encode(raw).decode(),
        "base64-shifted": base64.b64encode(b"x" + raw).decode(),
        "url": urllib.parse.quote(value, safe=""),
        "hex": raw.hex(),
    }


@pytest.mark.parametrize("encoding", sorted(_encodings("x")))
async def test_a_server_secret_printed_in_any_encoding_comes_back_redacted(
    client: Client, encoding: str
) -> None:
    shown = _encodings(PLANTED_VALUE)[encoding]
    result = await call(client, "run_code", language="python", code=f"print({shown!r})")
    assert shown not in result["stdout"] and PLANTED_VALUE not in result["stdout"]
    assert "[REDACTED" in result["stdout"]


async def test_base64_made_inside_the_sandbox_is_redacted(client: Client) -> None:
    result = await call(client, "shell", command=f"printf %s '{PLANTED_VALUE}' | base64")
    assert base64.b64encode(PLANTED_VALUE.encode()).decode() not in result["stdout"]
    assert "[REDACTED" in result["stdout"]


async def test_well_known_token_formats_are_redacted(client: Client) -> None:
    result = await call(client, "shell", command=f"echo token={GITHUB_TOKEN}; echo ok >&2")
    assert GITHUB_TOKEN not in result["stdout"] and "[REDACTED" in result["stdout"]


async def test_a_secret_at_a_truncation_cut_is_never_shown_in_part(client: Client) -> None:
    # The secret straddles the head/tail cut of a 200 kB stream at several offsets.
    for offset in (11_000, 14_390, 14_400, 14_410, 100_000, 190_000):
        code = (
            f"import sys; sys.stdout.write('a' * {offset} + {PLANTED_VALUE!r} + "
            f"'b' * (200_000 - {offset}))"
        )
        result = await call(client, "run_code", language="python", code=code)
        out = result["stdout"]
        assert result["truncated"] is True
        for n in range(8, len(PLANTED_VALUE) + 1):
            for start in range(len(PLANTED_VALUE) - n + 1):
                assert PLANTED_VALUE[start : start + n] not in out, (offset, n)


async def test_configured_scrub_values_are_redacted() -> None:
    value = "operator-configured-value-5521"
    async with connect("auto", env={"MCP_SANDBOX_SCRUB_VALUES": json.dumps([value])}) as c:
        result = await call(c, "shell", command=f"echo {value}")
    assert value not in result["stdout"]


async def test_error_messages_are_scrubbed() -> None:
    image = f"mcp-sandbox-test-missing:{PLANTED_VALUE}"
    async with connect("auto", env={"MCP_SANDBOX_IMAGE": image}) as c:
        message = await call_error(c, "shell", command="true")
    assert PLANTED_VALUE not in message


def test_secret_looking_pass_env_stops_start_up_with_a_clear_message() -> None:
    params = server_params({"MCP_SANDBOX_PASS_ENV": '["GITHUB_TOKEN"]'})
    proc = subprocess.run(
        [params.command, *params.args],
        env=params.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "GITHUB_TOKEN" in proc.stderr and "allow_secret_env" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_allowed_pass_env_reaches_the_sandbox_and_is_still_redacted_in_output() -> None:
    env = {
        "MCP_SANDBOX_PASS_ENV": '["SHARED_API_TOKEN"]',
        "MCP_SANDBOX_ALLOW_SECRET_ENV": '["SHARED_API_TOKEN"]',
        "SHARED_API_TOKEN": "shared-token-value-90210",
    }
    async with connect("auto", env=env) as c:
        result = await call(
            c,
            "shell",
            command='[ "$SHARED_API_TOKEN" = shared-token-value-90210 ] && echo $SHARED_API_TOKEN',
        )
    assert result["exit_code"] == 0
    assert "shared-token-value-90210" not in result["stdout"]


def test_log_lines_hold_no_planted_value() -> None:
    """At DEBUG the SDK logs whole requests; the scrubbing filter still keeps the value out."""
    params = server_params({"MCP_SANDBOX_LOG_LEVEL": "DEBUG"})
    request = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "shell", "arguments": {"command": f"echo {PLANTED_VALUE}; exit 3"}},
    }
    lines = [INITIALIZE, INITIALIZED, request]
    with subprocess.Popen(
        [params.command, *params.args],
        env=params.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        for m in lines:
            proc.stdin.write((json.dumps(m) + "\n").encode())
        proc.stdin.flush()
        replies = [proc.stdout.readline(), proc.stdout.readline()]
        _, err = proc.communicate(timeout=60)
    assert any(b'"id":2' in r for r in replies), replies
    assert PLANTED_VALUE.encode() not in b"".join(replies)
    assert b"run " in err or b"DEBUG" in err, err[-2000:]
    assert PLANTED_VALUE.encode() not in err
