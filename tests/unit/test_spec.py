"""The container spec is pure data: its invariants hold for every policy."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from mcp_sandbox.constants import LABEL, OWNER_LABEL
from mcp_sandbox.policy.limits import Limits, RunPlan
from mcp_sandbox.sandbox.spec import BASE_ENV, ContainerSpec, build_spec

limits_st = st.builds(
    Limits,
    timeout_s=st.floats(0.1, 3600),
    memory_mib=st.integers(32, 65536),
    cpus=st.floats(0.01, 64),
    pids=st.integers(8, 8192),
    tmp_mib=st.integers(1, 4096),
    workdir_mib=st.integers(1, 4096),
)


def _spec(limits: Limits | None = None, stdin: bytes | None = None, **kw: object) -> ContainerSpec:
    limits = limits or Limits()
    plan = RunPlan(argv=("python3", "-c", "print(1)"), limits=limits, stdin=stdin)
    args: dict[str, object] = {
        "image": "img:1",
        "run_id": "abc123",
        "owner": "host:1:2",
        "seccomp_json": json.dumps({"defaultAction": "SCMP_ACT_ERRNO"}),
        "extra_env": {},
        "runtime": None,
    }
    args.update(kw)
    return build_spec(plan, **args)  # type: ignore[arg-type]


@given(limits_st, st.booleans())
def test_every_spec_keeps_every_wall(limits: Limits, with_stdin: bool) -> None:
    spec = _spec(limits, b"x" if with_stdin else None)
    create, host = spec.create_kwargs(), spec.host_config_kwargs()
    assert create["network_disabled"] is True and "network_mode" not in host
    assert create["user"] == "65534:65534"
    assert create["use_config_proxy"] is False and create["tty"] is False
    assert host["privileged"] is False and host["read_only"] is True
    assert host["cap_drop"] == ["ALL"] and "cap_add" not in host
    assert host["init"] is True and host["ipc_mode"] == "private"
    assert "no-new-privileges:true" in host["security_opt"]
    assert any(o.startswith("seccomp={") for o in host["security_opt"])
    assert host["mem_limit"] == host["memswap_limit"] == limits.memory_mib * 1024 * 1024
    assert host["pids_limit"] == limits.pids
    assert host["log_config"]["type"] == "none"
    assert not host.get("binds") and not host.get("devices") and not host.get("volumes_from")
    assert set(host["tmpfs"]) == {"/tmp", "/workspace"}
    assert all("nosuid" in o and "nodev" in o for o in host["tmpfs"].values())
    names = {u["name"] for u in host["ulimits"]}
    assert {"nofile", "nproc", "fsize"} <= names


def test_name_and_labels_are_fixed_before_create() -> None:
    spec = _spec()
    assert spec.name == "mcp-sandbox-abc123"
    assert spec.create_kwargs()["labels"] == {LABEL: "1", OWNER_LABEL: "host:1:2"}


def test_config_labels_cannot_overwrite_ours() -> None:
    spec = _spec(extra_labels={LABEL: "0", OWNER_LABEL: "evil", "team": "a"})
    assert spec.create_kwargs()["labels"] == {LABEL: "1", OWNER_LABEL: "host:1:2", "team": "a"}


def test_environment_is_only_the_base_and_config() -> None:
    spec = _spec(extra_env={"FOO": "bar", "PATH": "/evil"})
    env = dict(e.split("=", 1) for e in spec.create_kwargs()["environment"])
    assert env == {**BASE_ENV, "FOO": "bar"}


def test_stdin_is_decoded_in_front_of_the_program() -> None:
    spec = _spec(stdin=b"data")
    argv = spec.create_kwargs()["command"]
    assert argv[:3] == ["/bin/sh", "-c", 'base64 -d | "$@"']
    assert argv[-3:] == ["python3", "-c", "print(1)"]
    assert spec.create_kwargs()["stdin_open"] is True
    assert _spec().create_kwargs()["stdin_open"] is False


def test_runtime_is_passed_through() -> None:
    assert _spec(runtime="runsc").host_config_kwargs()["runtime"] == "runsc"
