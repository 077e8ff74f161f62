"""Escalations behind a human, and the audit trail, through a real server over stdio.

Each server gets a tmp workspace with `rw` enabled, egress enabled (a refused or declined
egress call never starts the proxy), and its own audit log under a tmp dir. The client's
elicitation callback plays the human.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.context import ClientRequestContext
from mcp_types import ElicitRequestParams, ElicitResult

from sandbox_client import MODES, PLANTED_VALUE, call, call_error, connect

ALL_MODES = json.dumps(["ro", "copy", "rw"])
# The sandbox's memory limit as its cgroup (v2, else v1) shows it.
MEMORY_LIMIT = (
    "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes"
)


class Human:
    """Answers every question with ``action`` after ``delay`` seconds; keeps the questions."""

    def __init__(self, action: str = "accept", *, session: bool = False, delay: float = 0):
        self.action, self.session, self.delay = action, session, delay
        self.questions: list[str] = []

    async def __call__(self, context: ClientRequestContext, params: ElicitRequestParams) -> Any:
        self.questions.append(params.message)
        await anyio.sleep(self.delay)
        content = {"for_session": self.session} if self.action == "accept" else None
        return ElicitResult(action=self.action, content=content)


class Server:
    def __init__(self, root: Path, audit: Path) -> None:
        self.root, self.audit = root, audit

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "MCP_SANDBOX_WORKSPACE": str(self.root),
            "MCP_SANDBOX_WORKSPACE_POLICY__MODES": ALL_MODES,
            "MCP_SANDBOX_EGRESS__ENABLED": "true",
            "MCP_SANDBOX_AUDIT__PATH": str(self.audit),
            "MCP_SANDBOX_POOL__ENABLED": "false",  # these calls are never of the warm shape
            **extra,
        }

    def records(self) -> list[dict[str, Any]]:
        if not self.audit.exists():
            return []
        return [json.loads(line) for line in self.audit.read_text().splitlines()]

    @asynccontextmanager
    async def client(
        self, mode: str, human: Callable[..., Any] | None = None, **env: str
    ) -> AsyncIterator[Client]:
        kw = {"elicitation_callback": human} if human is not None else {}
        async with connect(mode, env=self.env(**env), **kw) as c:
            yield c


@pytest.fixture
def server(tmp_path: Path) -> Server:
    root = tmp_path / "project"
    root.mkdir()
    (root / "kept.txt").write_text("as it was\n")
    return Server(root, tmp_path / "audit" / "audit.jsonl")


WRITE = {"command": f"echo {PLANTED_VALUE} > out.txt; echo done", "workspace": "rw"}


@pytest.mark.parametrize("mode", MODES)
async def test_an_accepted_rw_call_writes_and_is_recorded_scrubbed(
    server: Server, mode: str
) -> None:
    human = Human("accept")
    async with server.client(mode, human) as c:
        result = await call(c, "shell", **WRITE)
    assert result["stdout"] == "done\n" and result["workspace"]["applied"] == 1
    assert (server.root / "out.txt").exists()
    assert human.questions == [f"Allow writes to {server.root} for this call?"]
    [record] = server.records()
    assert record["decisions"] == [
        {"kind": "rw", "allowed": True, "by": "human", "answer": "accept"}
    ]
    assert record["outcome"] == "exited" and record["exit_code"] == 0
    assert record["sandbox"] == result["sandbox"] and record["run_id"] == result["run_id"]
    assert record["limits"]["timeout_s"] == 30 and record["flags"] == ["new_escalation:rw"]
    assert PLANTED_VALUE not in server.audit.read_text()
    assert "REDACTED" in record["code"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("human", "needle"),
    [
        (Human("decline"), "the user declined"),
        (Human("cancel"), "cancelled"),
        (None, "cannot ask the user"),
    ],
    ids=["decline", "cancel", "no-elicitation"],
)
async def test_without_an_accept_nothing_runs_and_the_refusal_is_recorded(
    server: Server, mode: str, human: Human | None, needle: str
) -> None:
    async with server.client(mode, human) as c:
        message = await call_error(c, "shell", **WRITE)
        egress = await call_error(c, "shell", command="true", network="egress")
    assert needle in message and 'approval.rw = "allow"' in message
    assert needle in egress and 'approval.egress = "allow"' in egress
    assert not (server.root / "out.txt").exists()
    records = server.records()
    assert [r["outcome"] for r in records] == ["refused", "refused"]
    assert [r["decisions"][0]["kind"] for r in records] == ["rw", "egress"]
    assert PLANTED_VALUE not in server.audit.read_text()


@pytest.mark.parametrize("mode", MODES)
async def test_no_answer_in_time_refuses(server: Server, mode: str) -> None:
    async with server.client(
        mode, Human("accept", delay=2), MCP_SANDBOX_APPROVAL__TIMEOUT_S="1"
    ) as c:
        message = await call_error(c, "shell", **WRITE)
    assert "no answer came in time" in message
    assert not (server.root / "out.txt").exists()
    assert server.records()[0]["decisions"][0]["answer"] == "timeout"


@pytest.mark.parametrize("mode", MODES)
async def test_a_session_approval_is_asked_once(server: Server, mode: str) -> None:
    human = Human("accept", session=True)
    async with server.client(mode, human) as c:
        for i in range(2):
            await call(c, "shell", command=f"echo {i} > n{i}.txt", workspace="rw")
    assert len(human.questions) == 1
    assert (server.root / "n1.txt").read_text() == "1\n"
    assert [r["decisions"][0]["by"] for r in server.records()] == ["human", "session"]


@pytest.mark.parametrize("mode", MODES)
async def test_deny_refuses_without_a_question(server: Server, mode: str) -> None:
    human = Human("accept")
    async with server.client(mode, human, MCP_SANDBOX_APPROVAL__RW="deny") as c:
        message = await call_error(c, "shell", **WRITE)
        tools = {t.name: t for t in (await c.list_tools()).tools}
    assert 'config denies it (approval.rw = "deny")' in message
    assert human.questions == []
    # rw can never be granted now: the annotations say so; egress still can.
    a = tools["shell"].annotations
    assert a is not None and (a.read_only_hint, a.open_world_hint) == (True, True)


async def test_a_profile_pre_approves_its_shape(server: Server) -> None:
    human = Human("decline")
    profiles = json.dumps({"fix": {"workspace": "rw", "timeout_s": 60, "memory_mib": 1024}})
    async with server.client("auto", human, MCP_SANDBOX_PROFILES=profiles) as c:
        result = await call(
            c,
            "shell",
            command=f"echo fixed > kept.txt; {MEMORY_LIMIT}",
            profile="fix",
        )
    assert human.questions == []
    assert (server.root / "kept.txt").read_text() == "fixed\n"
    assert result["stdout"].split()[-1] == str(1024 * 1024 * 1024)
    [record] = server.records()
    assert [(d["kind"], d["by"]) for d in record["decisions"]] == [
        ("rw", "profile"),
        ("limits", "config"),
    ]
    assert record["profile"] == "fix" and record["limits"]["memory_mib"] == 1024


async def test_an_unwritable_audit_log_refuses_every_call(server: Server, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    async with server.client("auto", MCP_SANDBOX_AUDIT__PATH=str(blocker / "a.jsonl")) as c:
        message = await call_error(c, "shell", command="echo hi")
    assert "audit log" in message and "set audit.path" in message


async def test_fifty_concurrent_calls_leave_fifty_whole_lines(server: Server) -> None:
    async with server.client("auto", Human("decline")) as c:
        async with anyio.create_task_group() as tg:
            for i in range(50):
                # Every fifth runs a sandbox; the rest are refused escalations (no container).
                args = {"command": f"echo {i}"} if i % 5 == 0 else {**WRITE, "command": f"# {i}"}
                tg.start_soon(c.call_tool, "shell", args)
    records = server.records()  # each line parses: json.loads above
    assert len(records) == 50
    assert sorted(r["outcome"] for r in records) == ["exited"] * 10 + ["refused"] * 40
    assert sorted(r["code"] for r in records) == sorted(
        f"echo {i}" if i % 5 == 0 else f"# {i}" for i in range(50)
    )
