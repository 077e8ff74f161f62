"""seccomp/profile.toml -> seccomp/default.json: the committed JSON is generated, and sound."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from mcp_sandbox.errors import ConfigError
from mcp_sandbox.sandbox.seccomp_profile import (
    PROFILE_PATH,
    SOURCE_PATH,
    allowed_syscalls,
    generate,
    load_source,
    main,
    refused_syscalls,
    render,
)

CLONE_NAMESPACE_MASK = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
EPERM, ENOSYS = 1, 38

# What issue 5 requires us to refuse, beyond what Docker's default refuses.
MUST_REFUSE = frozenset(
    {
        "ptrace", "process_vm_readv", "process_vm_writev", "bpf", "perf_event_open",
        "userfaultfd", "keyctl", "add_key", "request_key", "mount", "umount2", "pivot_root",
        "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount", "unshare", "setns",
        "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load",
        "kexec_file_load", "init_module", "finit_module", "delete_module", "name_to_handle_at",
        "open_by_handle_at", "acct", "swapon", "swapoff", "reboot", "settimeofday",
        "clock_settime", "adjtimex", "clock_adjtime", "quotactl", "lookup_dcookie", "iopl",
        "ioperm", "vm86", "syslog", "fanotify_init", "mbind", "set_mempolicy", "move_pages",
    }
)  # fmt: skip


@pytest.fixture(scope="module")
def source() -> dict[str, Any]:
    return load_source(SOURCE_PATH)


@pytest.fixture(scope="module")
def profile() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(PROFILE_PATH.read_text(encoding="utf-8"))
    return loaded


def _rules_for(profile: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [rule for rule in profile["syscalls"] if name in rule["names"]]


def test_committed_json_is_what_the_generator_writes(source: dict[str, Any]) -> None:
    assert PROFILE_PATH.read_text(encoding="utf-8") == render(generate(source)), (
        "seccomp/default.json is stale: run python -m mcp_sandbox.sandbox.seccomp_profile"
    )


def test_default_action_is_eperm(profile: dict[str, Any]) -> None:
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == EPERM


def test_architectures_are_native_64_bit_only(profile: dict[str, Any]) -> None:
    assert "architectures" not in profile
    assert profile["archMap"] == [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": []},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": []},
    ]


def test_required_syscalls_are_in_refused_groups(source: dict[str, Any]) -> None:
    assert refused_syscalls(source) >= MUST_REFUSE


def test_no_refused_syscall_is_let_through(source: dict[str, Any], profile: dict[str, Any]) -> None:
    refused = refused_syscalls(source)
    assert not refused & allowed_syscalls(source)
    for rule in profile["syscalls"]:
        assert not refused & set(rule["names"]), rule["comment"]


def test_only_the_listed_actions_are_used(profile: dict[str, Any]) -> None:
    for rule in profile["syscalls"]:
        assert rule["action"] == "SCMP_ACT_ALLOW" or (
            rule["action"] == "SCMP_ACT_ERRNO" and rule["names"] == ["clone3"]
        ), rule


def test_clone_is_allowed_only_without_namespace_flags(profile: dict[str, Any]) -> None:
    rules = _rules_for(profile, "clone")
    assert len(rules) == 1
    assert rules[0]["names"] == ["clone"]
    assert rules[0]["args"] == [
        {"index": 0, "op": "SCMP_CMP_MASKED_EQ", "value": CLONE_NAMESPACE_MASK, "valueTwo": 0}
    ]


def test_clone3_answers_enosys_so_glibc_falls_back_to_clone(profile: dict[str, Any]) -> None:
    assert _rules_for(profile, "clone3") == [
        {
            "action": "SCMP_ACT_ERRNO",
            "comment": _rules_for(profile, "clone3")[0]["comment"],
            "errnoRet": ENOSYS,
            "names": ["clone3"],
        }
    ]


def test_personality_allows_only_harmless_values(profile: dict[str, Any]) -> None:
    values = set()
    for rule in _rules_for(profile, "personality"):
        assert rule["names"] == ["personality"]
        [arg] = rule["args"]
        assert (arg["index"], arg["op"]) == (0, "SCMP_CMP_EQ")
        values.add(arg["value"])
    assert values == {0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF}


def test_socket_allows_only_unix_inet_inet6_and_netlink_route(profile: dict[str, Any]) -> None:
    allowed = set()
    for rule in _rules_for(profile, "socket"):
        assert all(a["op"] == "SCMP_CMP_EQ" for a in rule["args"])
        allowed.add(tuple((a["index"], a["value"]) for a in rule["args"]))
    # Netlink only as NETLINK_ROUTE (protocol 0): kobject uevents carry the host's devices.
    assert allowed == {((0, 1),), ((0, 2),), ((0, 10),), ((0, 16), (2, 0))}


def test_socketpair_is_unix_only(profile: dict[str, Any]) -> None:
    [rule] = _rules_for(profile, "socketpair")
    assert [(a["index"], a["op"], a["value"]) for a in rule["args"]] == [(0, "SCMP_CMP_EQ", 1)]


def test_every_group_has_a_reason(source: dict[str, Any], profile: dict[str, Any]) -> None:
    for section in ("allowed", "conditional", "errno", "refused"):
        for name, group in source[section].items():
            assert len(group["reason"].strip()) > 10, f"{section}.{name}"
    for rule in profile["syscalls"]:
        label, _, reason = rule["comment"].partition(": ")
        assert label.split(".")[0] in {"allowed", "conditional", "errno"} and reason, rule


def test_each_syscall_has_one_group(profile: dict[str, Any]) -> None:
    seen: dict[str, str] = {}
    for rule in profile["syscalls"]:
        for name in rule["names"]:
            assert seen.setdefault(name, rule["comment"]) == rule["comment"], name


def test_interpreters_core_calls_are_allowed(source: dict[str, Any]) -> None:
    needed = {"read", "write", "openat", "mmap", "execve", "futex", "rt_sigaction", "wait4"}
    needed |= {"epoll_wait", "getrandom", "arch_prctl", "set_tid_address", "rseq", "socket"}
    assert needed <= allowed_syscalls(source)


def test_generator_fails_when_a_refused_syscall_is_allowed(source: dict[str, Any]) -> None:
    bad = copy.deepcopy(source)
    bad["allowed"]["memory"]["syscalls"].append("userfaultfd")
    with pytest.raises(ConfigError, match=r"'userfaultfd' is refused in refused.userfaultfd"):
        generate(bad)


def test_generator_fails_when_a_syscall_is_in_two_groups(source: dict[str, Any]) -> None:
    bad = copy.deepcopy(source)
    bad["allowed"]["memory"]["syscalls"].append("clone")
    with pytest.raises(ConfigError, match="both"):
        generate(bad)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("allowed", "reason", ""),
        ("allowed", "syscalls", []),
        ("allowed", "sycalls", ["read"]),
    ],
)
def test_generator_rejects_unsound_groups(
    source: dict[str, Any], section: str, key: str, value: object
) -> None:
    bad = copy.deepcopy(source)
    bad[section]["file_io"][key] = value
    with pytest.raises(ConfigError):
        generate(bad)


def test_render_is_stable_sorted_json(profile: dict[str, Any]) -> None:
    text = render(profile)
    assert text.endswith("}\n")
    assert json.loads(text) == profile
    assert text == render(json.loads(text))
    assert text.index('"archMap"') < text.index('"defaultAction"') < text.index('"syscalls"')


def test_check_mode_reports_a_stale_profile(tmp_path: Path) -> None:
    output = tmp_path / "default.json"
    output.write_text("{}\n", encoding="utf-8")
    assert main(["--check", "--output", str(output)]) == 1
    assert main(["--output", str(output)]) == 0
    assert main(["--check", "--output", str(output)]) == 0
    assert output.read_text(encoding="utf-8") == PROFILE_PATH.read_text(encoding="utf-8")
