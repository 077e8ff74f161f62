"""The decision is a pure function of (config, request, what the human answered): tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mcp_sandbox.config.settings import Settings, load_settings
from mcp_sandbox.errors import ConfigError, RequestRejected
from mcp_sandbox.oversight.approval import can_allow, screen
from mcp_sandbox.policy.arguments import CallArgs, RunCodeArgs, ShellArgs
from mcp_sandbox.policy.escalation import (
    Answer,
    Decision,
    Escalation,
    EscalationRules,
    Kind,
    Rule,
    decide_escalations,
    needs_human,
    question,
)

EGRESS = Escalation("egress", "Allow network access to pypi.org for this call?")
RW = Escalation("rw", "Allow writes to /p for this call?")
LIMITS = Escalation("limits", "Allow more resources for this call: 60 s timeout (defaults: 30)?")
NONE: frozenset[Kind] = frozenset()


def _rules(egress: Rule = "ask", rw: Rule = "ask", limits: Rule = "allow") -> EscalationRules:
    return EscalationRules(egress=egress, rw=rw, limits=limits)


# (rule, preapproved by the profile, granted for the session, the human's answer) -> decision
@pytest.mark.parametrize(
    ("rule", "preapproved", "granted", "answer", "allowed", "by"),
    [
        ("deny", False, False, None, False, "config"),
        ("deny", True, False, None, False, "config"),  # deny wins over a profile
        ("deny", False, True, None, False, "config"),  # and over a session grant
        ("deny", False, False, "accept", False, "config"),  # and over any answer
        ("allow", False, False, None, True, "config"),
        ("allow", False, False, "decline", True, "config"),
        ("ask", True, False, None, True, "profile"),
        ("ask", False, True, None, True, "session"),
        ("ask", False, False, "accept", True, "human"),
        ("ask", False, False, "accept_session", True, "human"),
        ("ask", False, False, "decline", False, "human"),
        ("ask", False, False, "cancel", False, "human"),
        ("ask", False, False, "timeout", False, "human"),
        ("ask", False, False, "unsupported", False, "human"),
        ("ask", False, False, None, False, "human"),  # no answer is never a yes
    ],
)
def test_decision_table(
    rule: Rule,
    preapproved: bool,
    granted: bool,
    answer: Answer | None,
    allowed: bool,
    by: str,
) -> None:
    e = Escalation("rw", RW.question, preapproved)
    grants: frozenset[Kind] = frozenset({"rw"}) if granted else NONE
    answers: dict[Kind, Answer] = {"rw": answer} if answer else {}
    [d] = decide_escalations(_rules(rw=rule), [e], answers, grants)
    assert (d.kind, d.allowed, d.by) == ("rw", allowed, by)


def test_each_kind_follows_its_own_rule() -> None:
    decisions = decide_escalations(
        _rules(egress="allow", rw="ask", limits="deny"),
        [EGRESS, RW, LIMITS],
        {"rw": "accept", "egress": "decline"},
        NONE,
    )
    assert [(d.kind, d.allowed, d.by) for d in decisions] == [
        ("egress", True, "config"),
        ("rw", True, "human"),
        ("limits", False, "config"),
    ]


@pytest.mark.parametrize(
    ("rules", "grants", "expected"),
    [
        (_rules(), NONE, ["egress", "rw"]),
        (_rules(), frozenset({"egress"}), ["rw"]),
        (_rules(egress="allow", rw="allow"), NONE, []),
        (_rules(limits="ask"), NONE, ["egress", "rw", "limits"]),
        # A config deny refuses the call without asking anything.
        (_rules(rw="deny"), NONE, []),
    ],
)
def test_who_must_answer(
    rules: EscalationRules, grants: frozenset[Kind], expected: list[str]
) -> None:
    assert [e.kind for e in needs_human(rules, [EGRESS, RW, LIMITS], grants)] == expected


def test_a_profile_preapproved_escalation_needs_nobody() -> None:
    e = Escalation("egress", EGRESS.question, preapproved=True)
    assert needs_human(_rules(), [e], NONE) == []


def test_the_question_joins_plain_sentences() -> None:
    assert question([EGRESS, RW]) == (
        "Allow network access to pypi.org for this call? Allow writes to /p for this call?"
    )


@pytest.mark.parametrize(
    ("decision", "needles"),
    [
        (Decision("rw", False, "human", "decline"), ["declined", 'approval.rw = "allow"']),
        (Decision("egress", False, "human", "timeout"), ["in time", 'approval.egress = "allow"']),
        (Decision("egress", False, "human", "unsupported"), ["elicitation", "profile"]),
        (Decision("limits", False, "config"), ['approval.limits = "deny"']),
    ],
)
def test_refusals_are_one_line_and_say_how_to_pre_approve(
    decision: Decision, needles: list[str]
) -> None:
    text = decision.refusal()
    assert "\n" not in text
    for needle in needles:
        assert needle in text


# --- screening: profiles, what is enabled, bounds ------------------------------------------


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "workspace": tmp_path,
        "workspace_policy": {"modes": ["ro", "copy", "rw"]},
        "egress": {"enabled": True, "allow": ["pypi.org", "files.pythonhosted.org"]},
        "profiles": {
            "tests": {"timeout_s": 120, "memory_mib": 2048, "workspace": "copy"},
            "deps": {"network": "egress", "timeout_s": 60},
            "fix": {"workspace": "rw"},
        },
    }
    return Settings(**{**base, **kw})


def _shell(**asked: Any) -> ShellArgs:
    return ShellArgs(command="true", **asked)


def test_a_plain_call_asks_for_nothing(tmp_path: Path) -> None:
    s = screen(_settings(tmp_path), _shell(), tmp_path)
    assert s.escalations == () and s.workspace == "ro" and s.network == "none"


def test_escalations_and_their_questions_come_from_config_only(tmp_path: Path) -> None:
    asked = _shell(network="egress", workspace="rw", timeout_s=60)
    s = screen(_settings(tmp_path), asked, tmp_path)
    assert [(e.kind, e.preapproved) for e in s.escalations] == [
        ("egress", False),
        ("rw", False),
        ("limits", False),
    ]
    assert s.escalations[0].question == (
        "Allow network access to pypi.org, files.pythonhosted.org for this call?"
    )
    assert s.escalations[1].question == f"Allow writes to {tmp_path} for this call?"
    assert s.escalations[2].question == (
        "Allow more resources for this call: 60 s timeout (defaults: 30)?"
    )


def test_a_profile_is_the_calls_defaults_and_preapproves_its_shape(tmp_path: Path) -> None:
    s = screen(
        _settings(tmp_path), RunCodeArgs(language="python", code="1", profile="tests"), tmp_path
    )
    assert (s.workspace, s.limits.timeout_s, s.limits.memory_mib) == ("copy", 120, 2048)
    assert [(e.kind, e.preapproved) for e in s.escalations] == [("limits", True)]
    deps = screen(_settings(tmp_path), _shell(profile="deps"), tmp_path)
    assert [(e.kind, e.preapproved) for e in deps.escalations] == [
        ("egress", True),
        ("limits", True),
    ]


def test_asking_beyond_the_profile_is_an_escalation_again(tmp_path: Path) -> None:
    asked = _shell(profile="tests", workspace="rw", cpus=2)
    s = screen(_settings(tmp_path), asked, tmp_path)
    assert [(e.kind, e.preapproved) for e in s.escalations] == [
        ("rw", False),
        ("limits", False),
    ]
    # Narrowing a profile is always fine.
    narrow = _shell(profile="tests", workspace="ro", timeout_s=5)
    s = screen(_settings(tmp_path), narrow, tmp_path)
    assert s.workspace == "ro" and s.limits.timeout_s == 5


NO_EGRESS: dict[str, Any] = {"egress": {"enabled": False}, "profiles": {}}
NO_RW: dict[str, Any] = {"workspace_policy": {}, "profiles": {}}
PYTHON_ONLY: dict[str, Any] = {"tools": {"run_code": {"languages": ["python"]}}}


@pytest.mark.parametrize(
    ("overrides", "asked", "needle"),
    [
        ({}, _shell(profile="nope"), "unknown profile; the server's profiles: deps, fix"),
        (NO_EGRESS, _shell(network="egress"), "not enabled"),
        (NO_RW, _shell(workspace="rw"), "'rw' is not enabled"),
        ({}, _shell(memory_mib=4096), "memory_mib 4096 is above"),
        ({}, _shell(cpus=3), "cpus 3 is above"),
        (
            {},
            _shell(output_bytes=64_000),
            "output_bytes 64000 is above",
        ),
        (PYTHON_ONLY, RunCodeArgs(language="bash", code="1"), "enabled: python"),
        ({"tools": {"shell": {"enabled": False}}}, _shell(), "shell is disabled"),
    ],
)
def test_what_config_does_not_enable_is_refused_before_any_question(
    tmp_path: Path, overrides: dict[str, Any], asked: CallArgs, needle: str
) -> None:
    with pytest.raises(RequestRejected, match=needle):
        screen(_settings(tmp_path, **overrides), asked, tmp_path)


def test_without_a_workspace_no_mode_can_be_asked(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    assert screen(s, _shell(), None).workspace is None
    with pytest.raises(RequestRejected, match="no workspace"):
        screen(s, _shell(profile="tests"), None)


def test_behind_a_launcher_what_is_enabled_is_the_launchers_to_check(tmp_path: Path) -> None:
    s = _settings(tmp_path, egress={"enabled": False}, profiles={})
    asked = _shell(network="egress", workspace="rw")
    with pytest.raises(RequestRejected):
        screen(s, asked, None)
    remote = screen(s, asked, None, local=False)
    assert remote.kinds == ("egress", "rw")
    assert remote.escalations[1].question == "Allow writes to the workspace for this call?"


def test_a_default_mode_of_rw_is_still_an_escalation(tmp_path: Path) -> None:
    s = _settings(tmp_path, workspace_policy={"mode": "rw", "modes": ["ro", "rw"]}, profiles={})
    assert screen(s, _shell(), tmp_path).kinds == ("rw",)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"MCP_SANDBOX_PROFILES": '{"big": {"memory_mib": 9000}}'}, "profiles.big: memory_mib"),
        ({"MCP_SANDBOX_PROFILES": '{"net": {"network": "egress"}}'}, "egress.enabled"),
        ({"MCP_SANDBOX_PROFILES": '{"w": {"workspace": "rw"}}'}, "not in workspace_policy.modes"),
        ({"MCP_SANDBOX_PROFILES": '{"Bad Name": {}}'}, "profiles.Bad Name: a name"),
        (
            {
                "MCP_SANDBOX_PROFILES": '{"t": {"timeout_s": 60}}',
                "MCP_SANDBOX_APPROVAL__LIMITS": "deny",
            },
            'approval.limits = "deny"',
        ),
        ({"MCP_SANDBOX_LIMITS__MEMORY_MIB": "4096"}, "above bounds.max_memory_mib"),
        ({"MCP_SANDBOX_APPROVAL__EGRESS": "sometimes"}, "approval.egress"),
    ],
)
def test_config_that_cannot_work_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needle: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        load_settings()


@pytest.mark.parametrize(
    ("overrides", "rw", "egress"),
    [
        ({}, False, False),  # the defaults: ro and copy only, no egress
        ({"workspace_policy": {"modes": ["ro", "rw"]}}, True, False),
        ({"workspace_policy": {"modes": ["ro", "rw"]}, "approval": {"rw": "deny"}}, False, False),
        ({"egress": {"enabled": True}}, False, True),
        ({"egress": {"enabled": True}, "approval": {"egress": "deny"}}, False, False),
    ],
)
def test_what_the_tool_annotations_may_promise(
    overrides: dict[str, Any], rw: bool, egress: bool
) -> None:
    s = Settings(**overrides)
    assert (can_allow(s, "rw"), can_allow(s, "egress")) == (rw, egress)
