"""The runtime choice (runc or gVisor) and the daemon.json it needs: pure, no Docker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fake_engine import FakeEngine
from mcp_sandbox.app import make_service
from mcp_sandbox.config.settings import Settings
from mcp_sandbox.doctor import engine_name
from mcp_sandbox.errors import ConfigError, SandboxUnavailable
from mcp_sandbox.policy.arguments import RunCodeArgs
from mcp_sandbox.runsc_setup import merged_daemon_json
from mcp_sandbox.sandbox.runtime import (
    RUNSC_ENTRIES,
    Runtime,
    choose_runtime,
    platform_of,
    runsc_problems,
    with_runsc_entries,
)
from mcp_sandbox.sandbox.seccomp import for_gvisor, load_seccomp

RUNC: dict[str, dict[str, Any]] = {"runc": {"path": "runc"}}
GVISOR: dict[str, dict[str, Any]] = {
    **RUNC,
    "runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--oci-seccomp"]},
    "runsc-nonet": {"path": "/usr/bin/runsc", "runtimeArgs": ["--oci-seccomp", "--network=none"]},
}


def test_auto_takes_gvisor_when_both_entries_are_there() -> None:
    chosen = choose_runtime("auto", GVISOR, "runc")
    assert chosen == Runtime("runsc", isolated="runsc-nonet", networked="runsc")
    assert chosen.gvisor


def test_auto_without_gvisor_is_the_daemons_default() -> None:
    assert choose_runtime("auto", RUNC, "runc") == Runtime("runc")


def test_unset_is_the_daemons_default_by_name() -> None:
    assert choose_runtime(None, GVISOR, "runc") == Runtime("runc")


@pytest.mark.parametrize(
    ("offered", "why"),
    [
        (RUNC, "no runtime 'runsc'"),
        ({**RUNC, "runsc": {"path": "/usr/bin/runsc"}}, "lacks --oci-seccomp"),
        ({**GVISOR, "runsc-nonet": GVISOR["runsc"]}, "lacks --network=none"),
    ],
)
def test_runsc_asked_for_and_missing_is_refused_with_the_fix(
    offered: dict[str, Any], why: str
) -> None:
    with pytest.raises(SandboxUnavailable, match=why) as e:
        choose_runtime("runsc", offered, "runc")
    assert "install-runsc" in str(e.value) and "no sandbox runs" in str(e.value)


def test_runc_asked_for_is_named_explicitly() -> None:
    assert choose_runtime("runc", RUNC, "runsc").entry(networked=False) == "runc"
    with pytest.raises(SandboxUnavailable, match="no runtime 'runc'"):
        choose_runtime("runc", {"crun": {}}, "crun")


def test_a_sandbox_without_a_network_never_gets_the_networked_runsc() -> None:
    # That pairing fails at start and leaves runsc-gofer and runsc-sandbox running.
    chosen = choose_runtime("runsc", GVISOR, "runc")
    assert chosen.entry(networked=False) == "runsc-nonet"
    assert chosen.entry(networked=True) == "runsc"
    assert "--network=none" in RUNSC_ENTRIES[str(chosen.entry(networked=False))]
    assert "--network=none" not in RUNSC_ENTRIES[str(chosen.entry(networked=True))]


def test_platform_is_ptrace_unless_set() -> None:
    assert platform_of(GVISOR["runsc"]) == "ptrace"
    assert platform_of({"runtimeArgs": ["--platform=kvm"]}) == "kvm"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=10,
)


@given(st.dictionaries(st.text(max_size=10).filter(lambda k: k != "runtimes"), json_values))
def test_merging_keeps_every_other_setting_and_adds_both_entries(config: dict[str, Any]) -> None:
    config = {**config, "runtimes": {"kata": {"path": "/k"}, "runsc": {"path": "/old"}}}
    merged = with_runsc_entries(config, "/usr/bin/runsc")
    assert {k: v for k, v in merged.items() if k != "runtimes"} == {
        k: v for k, v in config.items() if k != "runtimes"
    }
    assert merged["runtimes"]["kata"] == {"path": "/k"}
    assert runsc_problems(merged["runtimes"]) == []
    assert with_runsc_entries(merged, "/usr/bin/runsc") == merged  # idempotent


def test_a_runtimes_key_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ValueError, match="not a JSON object"):
        with_runsc_entries({"runtimes": ["runsc"]}, "/usr/bin/runsc")


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"runtimes": 3}'])
def test_a_daemon_json_we_cannot_read_is_never_touched(tmp_path: Path, text: str) -> None:
    path = tmp_path / "daemon.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match="fix it by hand"):
        merged_daemon_json(path, "/usr/bin/runsc")
    assert path.read_text() == text


def test_a_missing_daemon_json_becomes_our_entries(tmp_path: Path) -> None:
    merged = json.loads(merged_daemon_json(tmp_path / "daemon.json", "/usr/bin/runsc"))
    assert set(merged) == {"runtimes"} and runsc_problems(merged["runtimes"]) == []


def test_gvisors_profile_allows_only_what_its_kernel_answers_enosys_itself() -> None:
    ours = json.loads(load_seccomp(None))
    theirs = json.loads(for_gvisor(load_seccomp(None)))
    changed = [r for r in theirs["syscalls"] if r not in ours["syscalls"]]
    assert [r["names"] for r in changed] == [["clone3"]]
    assert changed[0]["action"] == "SCMP_ACT_ALLOW"
    assert {k: v for k, v in theirs.items() if k != "syscalls"} == {
        k: v for k, v in ours.items() if k != "syscalls"
    }


def test_gvisors_profile_refuses_an_errno_it_cannot_keep() -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{"names": ["open"], "action": "SCMP_ACT_ERRNO", "errnoRet": 2}],
    }
    with pytest.raises(ValueError, match="gVisor would answer EPERM"):
        for_gvisor(json.dumps(profile))


def test_podman_is_recognised_by_its_components() -> None:
    podman = {"Platform": {"Name": ""}, "Components": [{"Name": "Podman Engine"}]}
    assert engine_name(podman) == "Podman"
    assert engine_name({"Platform": {"Name": "Docker Engine - Community"}}) == "Docker"


class GvisorDocker(FakeEngine):
    def __init__(self, offered: dict[str, Any]) -> None:
        super().__init__()
        self.offered = offered

    def runtimes(self) -> tuple[dict[str, dict[str, Any]], str]:
        return self.offered, "runc"


async def test_each_call_runs_under_the_chosen_runtime_and_says_so() -> None:
    api = GvisorDocker(GVISOR)
    service = make_service(Settings(runtime="auto", pool={"enabled": False}), api)
    result = await service.run_code(RunCodeArgs(language="python", code="1"))
    assert result.runtime == "runsc"
    [(_create, host)] = api.created
    assert host["runtime"] == "runsc-nonet"
    assert "clone3" in host["security_opt"][1] and '"errnoRet":38' not in host["security_opt"][1]


async def test_a_configured_runtime_the_daemon_lacks_refuses_every_call() -> None:
    api = GvisorDocker(RUNC)
    service = make_service(Settings(runtime="runsc", pool={"enabled": False}), api)
    for _ in range(2):
        with pytest.raises(SandboxUnavailable, match="install-runsc"):
            await service.run_code(RunCodeArgs(language="python", code="1"))
    assert api.created == []


async def test_under_gvisor_egress_is_refused_before_any_container() -> None:
    api = GvisorDocker(GVISOR)
    settings = Settings(runtime="runsc", pool={"enabled": False}, egress={"enabled": True})
    service = make_service(settings, api)
    with pytest.raises(SandboxUnavailable, match="not available under runsc"):
        await service.run_code(RunCodeArgs(language="python", code="1", network="egress"))
    assert api.created == []


def test_under_gvisor_no_sandbox_waits_with_masked_files(tmp_path: Path) -> None:
    (tmp_path / "README").write_text("x")
    tmp_path.chmod(0o755)
    settings = Settings(runtime="runsc", workspace=tmp_path)
    gvisor = make_service(settings, GvisorDocker(GVISOR))
    assert gvisor._warm_spec("r") is not None  # nothing masked: it may wait
    (tmp_path / ".env").write_text("TOKEN=x\n")
    assert gvisor._warm_spec("r") is None
    runc = make_service(settings.model_copy(update={"runtime": "runc"}), GvisorDocker(GVISOR))
    assert runc._warm_spec("r") is not None


@pytest.fixture
def python_project(tmp_path: Path) -> Path:
    (tmp_path / "requirements.txt").write_text("iniconfig\n")
    tmp_path.chmod(0o755)
    return tmp_path


async def test_under_gvisor_an_environment_build_is_refused_before_anything_is_made(
    python_project: Path,
) -> None:
    api = GvisorDocker(GVISOR)
    service = make_service(Settings(runtime="runsc", workspace=python_project), api)

    async def progress(line: str) -> None:
        raise AssertionError(line)

    with pytest.raises(SandboxUnavailable, match="build it with runtime = 'runc'"):
        await service.build_environment(progress)
    assert api.created == [] and api.volumes == {}
