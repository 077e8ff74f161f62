"""The audit log: whole lines, rotation, fail-closed errors; the anomaly flags; the CLI."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from mcp_sandbox import cli
from mcp_sandbox.cli import main
from mcp_sandbox.config.audit import AuditSettings
from mcp_sandbox.oversight.anomalies import SessionHistory
from mcp_sandbox.oversight.audit import (
    AuditLog,
    AuditUnavailable,
    matches,
    render_table,
    scrubbed,
    shown_code,
)


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_are_whole_json_lines_readable_only_by_the_user(tmp_path: Path) -> None:
    path = tmp_path / "state" / "audit.jsonl"
    log = AuditLog(AuditSettings(path=path))
    log.check()
    log.write({"tool": "shell", "code": "echo é\nnext"})
    assert _lines(path) == [{"tool": "shell", "code": "echo é\nnext"}]
    assert path.stat().st_mode & 0o777 == 0o600


def test_the_log_rotates_by_size_and_keeps_its_backups(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(AuditSettings(path=path, max_bytes=10_000, backups=2))
    for i in range(100):
        log.write({"i": i, "pad": "x" * 300})
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    assert all(p.stat().st_size <= 10_000 for p in tmp_path.iterdir())
    kept = [r["i"] for r in log.records()]
    assert kept == sorted(kept) and kept[-1] == 99  # oldest first, the newest kept
    assert len(kept) < 100  # the oldest file was dropped


def test_concurrent_writers_leave_one_whole_line_each(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    # Two logs on one file stand for two servers; rotation happens under the writes.
    logs = [AuditLog(AuditSettings(path=path, max_bytes=200_000, backups=50)) for _ in range(2)]

    def writer(n: int) -> None:
        for i in range(50):
            logs[n % 2].write({"writer": n, "i": i, "pad": "y" * 500})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = list(logs[0].records())
    assert len(records) == 400
    assert {(r["writer"], r["i"]) for r in records} == {(n, i) for n in range(8) for i in range(50)}


def test_an_unwritable_log_fails_closed_with_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    log = AuditLog(AuditSettings(path=blocker / "audit.jsonl"))  # under a regular file
    with pytest.raises(AuditUnavailable, match=r"cannot be written .*set audit.path"):
        log.check()
    with pytest.raises(AuditUnavailable):
        log.write({"x": 1})


def test_the_default_path_is_under_the_users_state_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert AuditLog(AuditSettings()).path == tmp_path / "mcp-sandbox" / "audit.jsonl"


def test_every_string_is_scrubbed_and_the_code_shortened() -> None:
    def scrub(s: str) -> str:
        return s.replace("hunter2", "[redacted]")

    record = {"code": "x = 'hunter2'", "nested": [{"hunter2": ("hunter2", 3)}], "n": None}
    assert scrubbed(record, scrub) == {
        "code": "x = '[redacted]'",
        "nested": [{"[redacted]": ["[redacted]", 3]}],
        "n": None,
    }
    long = "a" * 1000 + "hunter2"
    assert "hunter2" not in shown_code(long, scrub) and len(shown_code(long, scrub)) == 401


def test_flags_name_each_anomaly() -> None:
    h = SessionHistory()
    assert h.flags("s", ["egress"], "exited", [], "") == ["new_escalation:egress"]
    assert h.flags("s", ["egress"], "exited", [], "") == []  # needed before
    assert h.flags("t", ["egress"], "exited", [], "") == ["new_escalation:egress"]  # per session
    assert h.flags("s", [], "exited", ["evil.test:443 (not in allowlist)"], "") == [
        "egress_outside_allowlist"
    ]
    assert h.flags("s", [], "exited", [], "ptrace: Operation not permitted") == ["seccomp_refusal"]
    assert h.flags("s", [], "timed_out", [], "") == []
    assert h.flags("s", [], "oom_killed", [], "") == []
    assert h.flags("s", [], "timed_out", [], "") == ["repeated_timeouts_or_ooms"]


def test_cli_filters_and_renders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(AuditSettings(path=path))
    log.write({"ts": "t1", "session": "a", "tool": "shell", "flags": [], "code": "ls"})
    log.write(
        {
            "ts": "t2",
            "session": "b",
            "tool": "run_code",
            "flags": ["new_escalation:rw"],
            "code": "1",
        }
    )
    monkeypatch.setenv("MCP_SANDBOX_AUDIT__PATH", str(path))
    monkeypatch.setattr(cli, "configure_logging", lambda *a: None)  # keep pytest's handlers
    assert main(["audit", "--json", "--flag", "new_escalation"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["session"] for line in out] == ["b"]
    assert main(["audit", "--session", "a"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["time", "session", "tool"]
    assert "shell" in table and "run_code" not in table
    assert main(["audit", "--tool", "shell", "--flag", "nope"]) == 0
    assert "no matching records" in capsys.readouterr().err


def test_matches_and_table_handle_sparse_records() -> None:
    assert matches({"flags": ["seccomp_refusal"]}, flag="seccomp_refusal")
    assert not matches({}, flag="x") and not matches({}, session="s")
    assert "refused" in render_table([{"outcome": "refused", "decisions": [{"kind": "rw"}]}])


# Every character str.splitlines() splits on but "\n": none may cut a record in two.
_SEPARATORS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def test_line_separators_in_a_field_cannot_hide_its_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(AuditSettings(path=path))
    written = [
        {"session": f"s{c}", "flags": ["seccomp_refusal"], "code": f"true {c} false"}
        for c in _SEPARATORS
    ]
    for record in written:
        log.write(record)
    data = path.read_bytes()
    assert data.isascii() and data.count(b"\n") == len(written)
    assert list(log.records()) == written
    monkeypatch.setenv("MCP_SANDBOX_AUDIT__PATH", str(path))
    monkeypatch.setattr(cli, "configure_logging", lambda *a: None)
    assert main(["audit", "--flag", "seccomp_refusal"]) == 0
    assert len(capsys.readouterr().out.split("\n")) == 2 + len(written)  # header, rows, ""


def test_records_written_before_with_raw_separators_are_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    raw = [{"code": f"a{c}b"} for c in _SEPARATORS]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in raw))
    assert list(AuditLog(AuditSettings(path=path)).records()) == raw


def test_unreadable_lines_are_counted_not_silently_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"i":1}\n{"i":2,"co\n[3]\n\xff\n{"i":4}\n{"i":5')
    with caplog.at_level("WARNING", logger="mcp_sandbox.audit"):
        assert [r["i"] for r in AuditLog(AuditSettings(path=path)).records()] == [1, 4]
    assert f"4 unreadable audit lines skipped in {path}" in caplog.messages


def test_the_table_cannot_drive_the_operators_terminal() -> None:
    hostile = {
        "ts": "2024\r\x1b[2J",
        "session": "s\x9b2J\x9d0;t\x9c",
        "tool": "\u202eshell\u2066",
        "outcome": "exited\x85\u2028",
        "exit_code": "\x1b[8m",
        "duration_ms": "\x07",
        "decisions": [{"kind": "\x1b]8;;https://evil.test\x07", "allowed": True, "by": "\x7f"}],
        "flags": ["x\x1b[31m", "\ud800"],
        "code": "#\x1b[1A\x1b[2K\x1b]0;owned\x07\ntrue",
    }
    table = render_table([hostile])
    controls = "\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff"
    bidi = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
    assert re.search(f"[{controls}{bidi}]", table) is None
    assert len(table.split("\n")) == 2  # the header and one row
    assert "\u241b[1A" in table  # the escape shown, inert
    table.encode("utf-8")  # printable
