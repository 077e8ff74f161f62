"""The pure parts of project environments: manifests, the build's script, volumes, mounts."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from mcp_sandbox.config.environment import EnvironmentSettings
from mcp_sandbox.constants import ENVIRONMENT_LABEL, LABEL, OWNER_LABEL
from mcp_sandbox.environment.commands import build_script, stdin_tar
from mcp_sandbox.environment.lookup import EnvironmentLookup
from mcp_sandbox.environment.manifests import (
    PYPROJECT_REQUIREMENTS,
    Manifests,
    is_manifest,
    manifests_digest,
    pyproject_requirements,
)
from mcp_sandbox.environment.mount import with_environment
from mcp_sandbox.environment.project_files import read_manifests
from mcp_sandbox.environment.volumes import (
    BUILDER_LABEL,
    current,
    data_labels,
    data_volume,
    doomed,
    environment_key,
    seal_labels,
    seal_volume,
    sealed,
)
from mcp_sandbox.errors import RequestRejected, SandboxUnavailable
from mcp_sandbox.policy.limits import Limits, RunPlan
from mcp_sandbox.policy.paths import DEFAULT_MASK, PathRules
from mcp_sandbox.sandbox.spec import build_spec

PYPROJECT = """
[project]
name = "demo"
dependencies = ["attrs>=23"]
[project.optional-dependencies]
Tests = ["pytest"]
docs = ["sphinx"]
[dependency-groups]
testing = ["hypothesis", {include-group = "lint"}]
lint = ["ruff", "attrs>=23"]
dev = ["black"]
"""


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("requirements.txt", True),
        ("requirements-dev.txt", True),
        ("pyproject.toml", True),
        ("package.json", True),
        ("package-lock.json", True),
        ("setup.py", False),
        ("requirements.txt.bak", False),
        ("../requirements.txt", False),
    ],
)
def test_only_root_manifests_count(name: str, expected: bool) -> None:
    assert is_manifest(name) is expected


def test_pyproject_gives_dependencies_then_the_test_extra_and_group_once() -> None:
    assert pyproject_requirements(PYPROJECT) == ("attrs>=23", "pytest", "hypothesis", "ruff")


def test_dev_is_taken_only_when_no_test_group_exists() -> None:
    text = '[dependency-groups]\ndev = ["black"]\n[project]\ndependencies = []\n'
    assert pyproject_requirements(text) == ("black",)


def test_a_group_that_includes_itself_is_refused() -> None:
    text = '[dependency-groups]\ntest = [{include-group = "test"}]\n'
    with pytest.raises(RequestRejected, match="includes itself"):
        pyproject_requirements(text)


def test_bad_toml_is_a_one_line_rejection() -> None:
    with pytest.raises(RequestRejected, match=r"pyproject\.toml is not valid TOML"):
        pyproject_requirements("[project")


@given(a=st.binary(max_size=64), b=st.binary(max_size=64))
def test_the_digest_changes_with_any_manifest_byte(a: bytes, b: bytes) -> None:
    one = manifests_digest(Manifests.of({"requirements.txt": a}))
    two = manifests_digest(Manifests.of({"requirements.txt": b}))
    assert (one == two) == (a == b)


def test_the_digest_changes_with_the_configured_command() -> None:
    m = Manifests.of({"requirements.txt": b"x\n"})
    assert manifests_digest(m, ("pip install y",)) != manifests_digest(m, (None,))


def test_masked_and_linked_manifests_are_never_read(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("ok\n")
    (tmp_path / "secret").write_text("token\n")
    (tmp_path / "requirements-dev.txt").symlink_to(tmp_path / "secret")
    (tmp_path / "README").write_text("not a manifest\n")
    found = read_manifests(tmp_path, PathRules((*DEFAULT_MASK, "requirements.txt")))
    assert found.names == ()
    found = read_manifests(tmp_path, PathRules(DEFAULT_MASK))
    assert found.names == ("requirements.txt",)


def test_the_build_gets_the_manifests_and_pyprojects_requirements_on_stdin() -> None:
    m = Manifests.of({"pyproject.toml": PYPROJECT.encode(), "requirements.txt": b"six\n"})
    with tarfile.open(fileobj=io.BytesIO(stdin_tar(m))) as tar:
        names = sorted(tar.getnames())
        reqs = tar.extractfile(PYPROJECT_REQUIREMENTS)
        assert reqs is not None
        assert reqs.read() == b"attrs>=23\npytest\nhypothesis\nruff\n"
    assert names == sorted([PYPROJECT_REQUIREMENTS, "pyproject.toml", "requirements.txt"])


def test_the_script_installs_from_the_configured_index_into_the_venv() -> None:
    m = Manifests.of({"requirements.txt": b"six\n"})
    script = build_script(m, EnvironmentSettings())
    assert "python3 -m venv /env/venv" in script
    assert "export PIP_INDEX_URL=https://pypi.org/simple" in script
    assert "PIP_TRUSTED_HOST" not in script
    assert "python -m pip install --no-input -r requirements.txt" in script
    assert "mcp-sandbox-workspace.pth" in script and "/workspace/src /workspace" in script
    assert "npm" not in script


def test_an_http_index_is_trusted_as_configured() -> None:
    m = Manifests.of({"requirements.txt": b"six\n"})
    settings = EnvironmentSettings(pip_index_url="http://mirror.test:8080/simple")
    assert "export PIP_TRUSTED_HOST=mirror.test:8080" in build_script(m, settings)


@pytest.mark.parametrize(("lock", "command"), [(True, "npm ci"), (False, "npm install")])
def test_npm_ci_with_a_lockfile_else_npm_install(lock: bool, command: str) -> None:
    files = {"package.json": b"{}"} | ({"package-lock.json": b"{}"} if lock else {})
    script = build_script(Manifests.of(files), EnvironmentSettings())
    assert script.splitlines()[-2] == command
    assert "export npm_config_registry=https://registry.npmjs.org/" in script


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("pip_index_url", "ftp://mirror.test/simple"),
        ("pip_index_url", "https://user:pw@mirror.test/simple"),
        ("indexes", ["*"]),
        ("timeout_s", 0),
        ("max_mib", 1),
    ],
)
def test_bad_environment_settings_are_refused(key: str, value: object) -> None:
    with pytest.raises(ValidationError):
        EnvironmentSettings(**{key: value})


@dataclass(frozen=True)
class Row:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    created_unix: float = 0.0


def _env_rows(key: str, build: str, digest: str, built: float) -> list[Row]:
    data = data_volume(key, build)
    lb = data_labels(key=key, digest=digest, workspace="/p", image="img", owner="h:1:2", extra={})
    seal = seal_labels(lb, data=data, built_unix=built, size_mib=5, packages=3)
    return [Row(data, lb, built), Row(seal_volume(data), seal, built)]


def test_data_volumes_carry_our_label_but_not_the_owner_reapers_use() -> None:
    lb = data_labels(key="k", digest="d", workspace="/p", image="i", owner="o", extra={})
    assert lb[LABEL] == "1" and lb[ENVIRONMENT_LABEL] == "data" and lb[BUILDER_LABEL] == "o"
    assert OWNER_LABEL not in lb


def test_the_newest_sealed_build_is_current_and_its_digest_decides_the_state() -> None:
    key = environment_key("/p", "img")
    rows = _env_rows(key, "aaaa", "d1", 100) + _env_rows(key, "bbbb", "d2", 200)
    env = current(rows, key)
    assert env is not None and env.id == data_volume(key, "bbbb")
    assert env.state("d2") == "ready" and env.state("d1") == "stale"
    assert env.state(None) == "stale"
    assert current(rows, environment_key("/other", "img")) is None


@dataclass
class Volumes:
    """The daemon's labelled volumes, as a lookup lists them, counting the listings."""

    rows: list[Row] = field(default_factory=list)
    listings: int = 0

    def __call__(self) -> list[Row]:
        self.listings += 1
        return list(self.rows)


@dataclass
class Clock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


def test_none_is_kept_for_its_ttl_then_a_build_of_another_process_is_seen() -> None:
    volumes, clock = Volumes(), Clock()
    lookup = EnvironmentLookup(volumes, ttl_s=2.0, clock=clock)
    assert lookup.find("/p", "img") is None
    assert lookup.find("/p", "img") is None
    assert volumes.listings == 1
    volumes.rows = _env_rows(environment_key("/p", "img"), "aaaa", "d1", 100)
    clock.now = 1.9
    assert lookup.find("/p", "img") is None  # within the TTL: another process's build waits
    clock.now = 2.0
    found = lookup.find("/p", "img")
    assert found is not None and found.id == data_volume(environment_key("/p", "img"), "aaaa")
    assert volumes.listings == 2


def test_a_found_environment_is_listed_again_on_every_call() -> None:
    # A call mounts it by name: one removed meanwhile must not be mounted (the daemon would
    # create it anew, empty and unlabelled).
    volumes = Volumes(_env_rows(environment_key("/p", "img"), "aaaa", "d1", 100))
    lookup = EnvironmentLookup(volumes, clock=Clock())
    assert lookup.find("/p", "img") is not None
    volumes.rows = []
    assert lookup.find("/p", "img") is None
    assert volumes.listings == 2


def test_this_servers_own_build_is_seen_at_once() -> None:
    volumes = Volumes()
    lookup = EnvironmentLookup(volumes, clock=Clock())
    assert lookup.find("/p", "img") is None
    volumes.rows = _env_rows(environment_key("/p", "img"), "aaaa", "d1", 100)
    lookup.forget()
    assert lookup.find("/p", "img") is not None


def test_none_of_one_workspace_or_image_says_nothing_of_another() -> None:
    key = environment_key("/q", "img")
    volumes = Volumes(_env_rows(key, "aaaa", "d1", 100))
    lookup = EnvironmentLookup(volumes, clock=Clock())
    assert lookup.find("/p", "img") is None
    found = lookup.find("/q", "img")
    assert found is not None and found.key == key
    assert lookup.find("/p", "other-image") is None
    assert volumes.listings == 3


def test_a_lookup_under_way_when_the_server_forgot_keeps_its_none_to_itself() -> None:
    built = _env_rows(environment_key("/p", "img"), "aaaa", "d1", 100)
    answers = [[], built]

    def listing() -> list[Row]:
        if len(answers) == 2:  # the server's own build seals while this answer is on its way
            lookup.forget()
        return answers.pop(0)

    lookup = EnvironmentLookup(listing, clock=Clock())
    assert lookup.find("/p", "img") is None
    assert lookup.find("/p", "img") is not None


def test_a_failed_listing_keeps_nothing() -> None:
    calls = 0

    def listing() -> list[Row]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise SandboxUnavailable("container backend failed to list volumes")
        return []

    lookup = EnvironmentLookup(listing, clock=Clock())
    with pytest.raises(SandboxUnavailable):
        lookup.find("/p", "img")
    assert lookup.find("/p", "img") is None
    assert calls == 2


def test_a_data_volume_without_its_seal_is_never_an_environment() -> None:
    key = environment_key("/p", "img")
    data, _ = _env_rows(key, "aaaa", "d1", 100)
    assert sealed([data]) == []


def test_the_reaper_takes_half_built_superseded_and_old_environments() -> None:
    key = environment_key("/p", "img")
    old = _env_rows(key, "aaaa", "d1", 100)
    new = _env_rows(key, "bbbb", "d2", 200)
    half = Row(
        data_volume(key, "cccc"),
        data_labels(key=key, digest="d3", workspace="/p", image="img", owner="x", extra={}),
        150,
    )
    rows = [*old, *new, half]
    gone = doomed(rows, now=300, owner_alive=lambda _: False, max_age_s=1_000)
    assert gone == [old[1].name, old[0].name, half.name]  # seals first
    building = doomed(rows, now=300, owner_alive=lambda _: True, max_age_s=1_000)
    assert half.name not in building
    aged = doomed(rows, now=5_000, owner_alive=lambda _: True, max_age_s=1_000)
    assert set(aged) == {r.name for r in rows}


def test_a_call_mounts_the_environment_read_only_with_the_venv_first_on_path() -> None:
    plan = RunPlan(argv=("true",), limits=Limits(), stdin=None)
    spec = build_spec(
        plan, image="i", run_id="r", owner="o", seccomp_json="{}", extra_env={}, runtime=None
    )
    with_env = with_environment(spec, "mcp-sandbox-env-k-b")
    (mount,) = [m for m in with_env.mounts if m.target == "/env"]
    assert mount.read_only and mount.kind == "volume" and mount.source == "mcp-sandbox-env-k-b"
    env = dict(with_env.env)
    assert env["PATH"].startswith("/env/venv/bin:")
    assert env["PATH"].endswith(dict(spec.env)["PATH"])
    assert env["NODE_PATH"] == "/env/node/node_modules"
    host = with_env.host_config_kwargs()
    assert host["read_only"] and host["cap_drop"] == ["ALL"]
    assert with_env.create_kwargs()["network_disabled"] is True


class VolumeDocker:
    """Just enough of DockerApi for the volume reapers."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows
        self.removed: list[str] = []

    def labelled_volumes(self) -> list[Row]:
        return list(self.rows)

    def remove_volume(self, name: str) -> None:
        self.removed.append(name)


async def test_the_per_owner_volume_reaper_leaves_environments_to_their_own() -> None:
    from anyio import CapacityLimiter

    from mcp_sandbox.environment.store import reap_environments
    from mcp_sandbox.workspace.session import reap_volumes

    key = environment_key("/p", "img")
    rows = _env_rows(key, "aaaa", "d1", 100)
    gone_owner = {LABEL: "1", OWNER_LABEL: "elsewhere:1:1"}
    copy = Row("mcp-sandbox-x-ws", gone_owner, 0)
    api = VolumeDocker([*rows, copy])
    threads = CapacityLimiter(4)
    await reap_volumes(api, threads, owner="me:1:1", own_too=True)  # type: ignore[arg-type]
    assert api.removed == [copy.name]
    await reap_environments(api, threads, max_age_s=1e12)  # type: ignore[arg-type]
    assert api.removed == [copy.name]  # the newest sealed one stays
