"""Approvals and the audit through the real MCP surface: the SDK's in-memory Client in both
protocol eras, against build_server() over a fake call runner (no Docker)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.context import ClientRequestContext
from mcp_types import ElicitRequestParams, ElicitResult, LoggingMessageNotificationParams

from fake_runner import FakeRunner
from mcp_sandbox.config.settings import Settings
from mcp_sandbox.errors import RequestRejected
from mcp_sandbox.transport.launcher import LauncherClient
from mcp_sandbox.transport.tools import build_server as build_sandbox_server

MODES = ("legacy", "auto")
SECRET = "planted-secret-4c1a9e"  # pragma: allowlist secret


class Asker:
    """An elicitation callback answering ``action``, counting the questions it saw."""

    def __init__(self, action: str = "accept", *, session: bool = False, delay: float = 0) -> None:
        self.action, self.session, self.delay = action, session, delay
        self.questions: list[str] = []

    async def __call__(
        self, context: ClientRequestContext, params: ElicitRequestParams
    ) -> ElicitResult:
        self.questions.append(params.message)
        await anyio.sleep(self.delay)
        content = {"for_session": self.session} if self.action == "accept" else None
        return ElicitResult(action=self.action, content=content)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    return root


def _runner(settings: Settings) -> FakeRunner:
    """A runner whose every result prints the planted secret (the audit must scrub it)."""
    return FakeRunner(settings, stdout=f"echo {SECRET}")


def build_server(service: FakeRunner) -> Any:
    return build_sandbox_server(service)


def _settings(tmp_path: Path, workspace: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "workspace": workspace,
        "workspace_policy": {"modes": ["ro", "copy", "rw"]},
        "egress": {"enabled": True, "allow": ["pypi.org", "files.pythonhosted.org"]},
        "audit": {"path": tmp_path / "audit.jsonl"},
        "scrub_values": [SECRET],
    }
    return Settings(**{**base, **kw})


def _records(settings: Settings) -> list[dict[str, Any]]:
    assert settings.audit.path is not None
    path = settings.audit.path
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def _call(
    settings: Settings,
    mode: str,
    args: dict[str, Any],
    callback: Any = None,
    tool: str = "shell",
) -> tuple[Any, FakeRunner]:
    service = _runner(settings)
    kw = {"elicitation_callback": callback} if callback is not None else {}
    async with Client(build_server(service), mode=mode, **kw) as client:
        result = await client.call_tool(tool, args)
    return result, service


def _text(result: Any) -> str:
    return str(result.content[0].text)


RW = {"command": f"echo {SECRET}", "workspace": "rw"}


@pytest.mark.parametrize("mode", MODES)
async def test_an_accepted_question_runs_the_call_and_records_who_decided(
    tmp_path: Path, workspace: Path, mode: str
) -> None:
    settings = _settings(tmp_path, workspace)
    asker = Asker("accept")
    result, service = await _call(settings, mode, RW, asker)
    assert not result.is_error, _text(result)
    assert asker.questions == [f"Allow writes to {workspace} for this call?"]
    assert len(service.ran) == 1 and service.ran[0].workspace == "rw"
    [record] = _records(settings)
    assert record["decisions"] == [
        {"kind": "rw", "allowed": True, "by": "human", "answer": "accept"}
    ]
    assert record["outcome"] == "exited" and record["sandbox"] == "mcp-sandbox-run1"
    assert record["flags"] == ["new_escalation:rw"]
    assert SECRET not in json.dumps(record) and record["code"].startswith("echo [REDACTED")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("action", "needle"), [("decline", "the user declined"), ("cancel", "cancelled")]
)
async def test_decline_or_cancel_refuses_and_runs_nothing(
    tmp_path: Path, workspace: Path, mode: str, action: str, needle: str
) -> None:
    settings = _settings(tmp_path, workspace)
    result, service = await _call(settings, mode, RW, Asker(action))
    assert result.is_error and needle in _text(result)
    assert 'set approval.rw = "allow"' in _text(result) and "\n" not in _text(result)
    assert service.ran == []
    [record] = _records(settings)
    assert (record["outcome"], record["decisions"][0]["answer"]) == ("refused", action)
    assert record["run_id"] is None and SECRET not in json.dumps(record)


@pytest.mark.parametrize("mode", MODES)
async def test_no_answer_in_time_is_a_refusal(tmp_path: Path, workspace: Path, mode: str) -> None:
    settings = _settings(tmp_path, workspace, approval={"timeout_s": 0.3})
    with anyio.fail_after(10):
        result, service = await _call(settings, mode, RW, Asker("accept", delay=1.0))
    assert result.is_error and "no answer came in time" in _text(result)
    assert service.ran == []
    assert _records(settings)[0]["decisions"][0]["answer"] == "timeout"


@pytest.mark.parametrize("mode", MODES)
async def test_a_client_that_cannot_be_asked_is_refused_without_a_question(
    tmp_path: Path, workspace: Path, mode: str
) -> None:
    settings = _settings(tmp_path, workspace)
    result, service = await _call(settings, mode, RW)  # no elicitation capability
    assert result.is_error and "cannot ask the user" in _text(result)
    assert service.ran == []
    assert _records(settings)[0]["decisions"][0]["answer"] == "unsupported"


@pytest.mark.parametrize("mode", MODES)
async def test_a_session_wide_accept_covers_the_rest_of_the_session(
    tmp_path: Path, workspace: Path, mode: str
) -> None:
    settings = _settings(tmp_path, workspace)
    asker = Asker("accept", session=True)
    service = _runner(settings)
    server = build_server(service)
    async with Client(server, mode=mode, elicitation_callback=asker) as client:
        for _ in range(3):
            result = await client.call_tool("shell", RW)
            assert not result.is_error, _text(result)
        # Only what was granted: egress is still asked.
        await client.call_tool("shell", {"command": "true", "network": "egress"})
    assert len(asker.questions) == 2 and "network access" in asker.questions[1]
    assert [r["decisions"][0]["by"] for r in _records(settings)] == [
        "human",
        "session",
        "session",
        "human",
    ]


@pytest.mark.parametrize("mode", MODES)
async def test_a_deny_rule_refuses_without_asking(
    tmp_path: Path, workspace: Path, mode: str
) -> None:
    settings = _settings(tmp_path, workspace, approval={"egress": "deny"})
    asker = Asker("accept")
    result, service = await _call(settings, mode, {"command": "true", "network": "egress"}, asker)
    assert result.is_error and 'approval.egress = "deny"' in _text(result)
    assert asker.questions == [] and service.ran == []
    assert _records(settings)[0]["decisions"] == [
        {"kind": "egress", "allowed": False, "by": "config", "answer": None}
    ]


@pytest.mark.parametrize("mode", MODES)
async def test_allow_rules_and_profiles_preapprove_without_a_question(
    tmp_path: Path, workspace: Path, mode: str
) -> None:
    settings = _settings(
        tmp_path,
        workspace,
        approval={"egress": "allow"},
        profiles={"tests": {"timeout_s": 120, "memory_mib": 2048, "workspace": "rw"}},
    )
    asker = Asker("decline")
    result, service = await _call(
        settings, mode, {"command": "pytest", "profile": "tests", "network": "egress"}, asker
    )
    assert not result.is_error, _text(result)
    assert asker.questions == []
    ran = service.ran[0]
    assert (ran.profile, ran.workspace, ran.timeout_s, ran.memory_mib) == (None, "rw", 120, 2048)
    assert [(d["kind"], d["by"]) for d in _records(settings)[0]["decisions"]] == [
        ("egress", "config"),
        ("rw", "profile"),
        ("limits", "config"),  # approval.limits = "allow" (the default)
    ]


@pytest.mark.parametrize("mode", MODES)
async def test_the_arguments_cannot_answer_the_question(
    tmp_path: Path, workspace: Path, mode: str
) -> None:
    settings = _settings(tmp_path, workspace)
    for extra in (
        {"approval": {"action": "accept", "data": {"for_session": True}}},
        {"for_session": True},
        {"_meta": {"approved": True}},
    ):
        result, service = await _call(settings, mode, {**RW, **extra}, Asker("decline"))
        assert result.is_error and service.ran == []
    # The question's text is config's, whatever the arguments hold.
    asker = Asker("decline")
    await _call(settings, mode, {**RW, "workdir": "."}, asker)
    assert asker.questions == [f"Allow writes to {workspace} for this call?"]


@pytest.mark.parametrize("mode", MODES)
async def test_every_refusal_reaching_the_tool_is_recorded(
    tmp_path: Path, workspace: Path, mode: str
) -> None:
    settings = _settings(tmp_path, workspace)
    for args in (
        {"command": "true", "profile": "nope"},
        {"command": "true", "memory_mib": 99999},
        {"command": "true", "network": "egress", "workspace": "rw"},  # asked: declined
    ):
        result, _ = await _call(settings, mode, args, Asker("decline"))
        assert result.is_error
    assert [r["outcome"] for r in _records(settings)] == ["refused"] * 3
    assert "unknown profile" in _records(settings)[0]["error"]


@pytest.mark.parametrize("mode", MODES)
async def test_fifty_concurrent_calls_leave_fifty_whole_lines(
    tmp_path: Path, workspace: Path, mode: str
) -> None:
    settings = _settings(
        tmp_path, workspace, audit={"path": tmp_path / "a.jsonl", "max_bytes": 20_000}
    )
    service = _runner(settings)
    server = build_server(service)
    async with Client(server, mode=mode, elicitation_callback=Asker()) as c:
        async with anyio.create_task_group() as tg:
            for i in range(50):
                args = {"command": f"echo {i}", **({"workspace": "rw"} if i % 2 else {})}
                tg.start_soon(c.call_tool, "shell", args)
    from mcp_sandbox.oversight.audit import AuditLog

    records = list(AuditLog(settings.audit).records())
    assert len(records) == 50 and len(service.ran) == 50
    assert sorted(r["code"] for r in records) == sorted(f"echo {i}" for i in range(50))
    assert (tmp_path / "a.jsonl.1").exists()  # it rotated under the load


@pytest.mark.parametrize("mode", MODES)
async def test_an_unwritable_audit_log_fails_the_call_closed(
    tmp_path: Path, workspace: Path, mode: str
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    settings = _settings(tmp_path, workspace, audit={"path": blocker / "audit.jsonl"})
    result, service = await _call(settings, mode, {"command": "true"}, Asker())
    assert result.is_error and "audit log" in _text(result) and "audit.path" in _text(result)
    assert service.ran == []


@pytest.mark.parametrize("mode", MODES)
async def test_flags_reach_the_client_as_a_warning_and_the_session_resource(
    tmp_path: Path, workspace: Path, mode: str
) -> None:
    settings = _settings(tmp_path, workspace)
    logged: list[LoggingMessageNotificationParams] = []

    async def on_log(params: LoggingMessageNotificationParams) -> None:
        logged.append(params)

    server = build_server(_runner(settings))
    async with Client(
        server,
        mode=mode,
        elicitation_callback=Asker(),
        logging_callback=on_log,
        log_level="warning",
    ) as client:
        await client.call_tool("shell", RW)
        await client.call_tool("shell", {"command": "true"})
        resource = await client.read_resource("sandbox://audit/session")
    assert [p.level for p in logged] == ["warning"]
    assert "new_escalation:rw" in str(logged[0].data)
    recent = json.loads(resource.contents[0].text)  # type: ignore[union-attr]
    assert [r["flags"] for r in recent] == [["new_escalation:rw"], []]
    assert SECRET not in resource.contents[0].text  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("overrides", "hints"),
    [
        ({"workspace_policy": {}, "egress": {}}, (True, False, True, False)),
        ({}, (False, True, False, True)),
        ({"approval": {"rw": "deny", "egress": "deny"}}, (True, False, True, False)),
    ],
)
async def test_annotations_tell_the_truth_for_the_config(
    tmp_path: Path, workspace: Path, overrides: dict[str, Any], hints: tuple[bool, ...]
) -> None:
    settings = _settings(tmp_path, workspace, **overrides)
    async with Client(build_server(_runner(settings))) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        for tool in (tools["run_code"], tools["shell"]):
            a = tool.annotations
            assert a is not None
            got = (a.read_only_hint, a.destructive_hint, a.idempotent_hint, a.open_world_hint)
            assert got == hints
            assert "approval" not in tool.input_schema["properties"]
        # prepare_env writes an environment volume and reaches the indexes, whatever the
        # config: never read-only, never destructive (it changes no file of the user's).
        a = tools["prepare_env"].annotations
        assert a is not None
        got = (a.read_only_hint, a.destructive_hint, a.idempotent_hint, a.open_world_hint)
        assert got == (False, False, True, True)
        assert "approval" not in tools["prepare_env"].input_schema["properties"]


async def test_a_disabled_tool_is_not_offered(tmp_path: Path, workspace: Path) -> None:
    settings = _settings(tmp_path, workspace, tools={"shell": {"enabled": False}})
    async with Client(build_server(_runner(settings))) as client:
        assert [t.name for t in (await client.list_tools()).tools] == ["run_code", "prepare_env"]


SCHEMAS = Path(__file__).with_name("tool_input_schemas.json")


async def test_the_tools_input_schemas_stay_flat_and_unchanged(
    tmp_path: Path, workspace: Path
) -> None:
    """What a client sees of each tool's arguments, key order included: one flat object."""
    async with Client(build_server(_runner(_settings(tmp_path, workspace)))) as client:
        tools = (await client.list_tools()).tools
    got = {t.name: t.input_schema for t in tools}
    expected = json.loads(SCHEMAS.read_text())
    assert json.dumps(got, indent=2) == json.dumps(expected, indent=2)


@pytest.mark.parametrize("mode", MODES)
async def test_prepare_env_is_asked_built_and_recorded_as_the_other_tools_are(
    tmp_path: Path, workspace: Path, mode: str
) -> None:
    settings = _settings(tmp_path, workspace)
    asker = Asker("accept")
    result, service = await _call(settings, mode, {}, asker, tool="prepare_env")
    assert not result.is_error, _text(result)
    assert service.builds == 1
    [question] = asker.questions
    assert question.startswith("Allow installing this project's dependencies from ")
    assert result.structured_content is not None
    assert result.structured_content["state"] == "ready"
    # One audit shape for every tool: the same keys as a shell call's record.
    await _call(settings, mode, {"command": "true"})
    built, ran = _records(settings)
    assert list(built) == list(ran)
    assert built["tool"] == "prepare_env" and built["outcome"] == "built"
    assert built["decisions"] == [
        {"kind": "environment", "allowed": True, "by": "human", "answer": "accept"}
    ]
    fixed = {k: built[k] for k in ("network", "code", "workdir", "workspace", "limits")}
    assert fixed == {
        "network": "environment.indexes",
        "code": "",
        "workdir": ".",
        "workspace": None,
        "limits": None,
    }
    assert built["code_sha256"] is None and built["run_id"] is None


@pytest.mark.parametrize("mode", MODES)
async def test_a_declined_prepare_env_builds_nothing_and_is_recorded(
    tmp_path: Path, workspace: Path, mode: str
) -> None:
    settings = _settings(tmp_path, workspace)
    result, service = await _call(settings, mode, {}, Asker("decline"), tool="prepare_env")
    assert result.is_error and "an environment build refused: the user declined" in _text(result)
    assert 'approval.environment = "allow"' in _text(result)
    assert service.builds == 0
    [record] = _records(settings)
    assert (record["tool"], record["outcome"]) == ("prepare_env", "refused")
    assert record["network"] == "environment.indexes"


async def test_a_profile_pre_approves_prepare_env_and_a_bad_argument_gets_one_line(
    tmp_path: Path, workspace: Path
) -> None:
    settings = _settings(tmp_path, workspace, profiles={"deps": {"environment": True}})
    result, service = await _call(settings, "auto", {"profile": "deps"}, tool="prepare_env")
    assert not result.is_error, _text(result)
    [record] = _records(settings)
    assert record["decisions"][0]["by"] == "profile" and service.builds == 1
    result, _ = await _call(settings, "auto", {"code": "x"}, tool="prepare_env")
    assert result.is_error and _text(result) == "invalid arguments: unknown argument 'code'"


async def test_a_launcher_refuses_prepare_env_in_one_line() -> None:
    client = LauncherClient(Path("/nonexistent/launcher.sock"))

    async def progress(line: str) -> None:
        raise AssertionError(line)

    with pytest.raises(RequestRejected) as e:
        await client.build_environment(progress)
    assert str(e.value) == "prepare_env needs the server's own Docker access (not a launcher)"
