"""Project environments for a JavaScript project: its npm dependency (a real package from
npmjs.org) installed by `mcp-sandbox env build` from a local registry this module serves,
then its `node --test` suite run through `shell` in `ro` with no network.

The registry is our own container on an internal network of our own, as the Python
index is (``test_environment``): static packuments and tarballs, fetched on the host by npm.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from integration.npm_registry import HOST, PACKAGE, fetch
from integration.test_environment import IMAGE, _labels, environment_volumes
from outside_host import docker
from sandbox_client import call, connect, server_params

TEST = """\
const test = require("node:test");
const assert = require("node:assert");
const ms = require("ms");

test("ms reads durations", () => {
  assert.strictEqual(ms("2h"), 7200000);
  assert.strictEqual(ms(60000), "1m");
});
"""


@dataclass(frozen=True)
class Registry:
    network: str
    ip: str

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "MCP_SANDBOX_ENVIRONMENT__NPM_REGISTRY": f"http://{HOST}/",
            "MCP_SANDBOX_ENVIRONMENT__INDEXES": json.dumps([HOST]),
            "MCP_SANDBOX_EGRESS__HOSTS": json.dumps({HOST: self.ip}),
            "MCP_SANDBOX_EGRESS__OPENED_CIDRS": json.dumps([f"{self.ip}/32"]),
            "MCP_SANDBOX_EGRESS__OUTBOUND_NETWORK": self.network,
            # The server under test is this tree's, not whatever the venv installed.
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
            **extra,
        }


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    probe = (
        "run",
        "--rm",
        "--network",
        "none",
        *_labels(),
        IMAGE,
        "sh",
        "-c",
        "command -v npm || :",
    )
    has_npm = docker(*probe)
    if not has_npm:
        pytest.skip(f"{IMAGE} has no npm: rebuild it (`mcp-sandbox images build --rebuild-base`)")
    root = fetch()
    tag = uuid.uuid4().hex[:8]
    network = f"mcp-sandbox-test-npmnet-{tag}"
    name = f"mcp-sandbox-test-npmreg-{tag}"
    docker("network", "create", "--internal", *_labels(), network)
    walls = ["--network", network, "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL"]
    try:
        docker(
            "run", "-d", "--name", name, *_labels(), *walls, "-v", f"{root}:/srv:ro",
            IMAGE, "python3", "-m", "http.server", "80", "--directory", "/srv",
        )  # fmt: skip
        fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        yield Registry(network, docker("inspect", "-f", fmt, name))
    finally:
        docker("rm", "-f", name, check=False)
        docker("network", "rm", network, check=False)


def _env(project: Path, registry: Registry, action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_sandbox", "env", action, "--workspace", str(project)],
        capture_output=True,
        text=True,
        env=server_params(registry.env()).env,
        timeout=900,
        check=False,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "jsproject"
    (root / "test").mkdir(parents=True)
    manifest = {"name": "jsproject", "version": "1.0.0", "dependencies": {PACKAGE: "^2.1.3"}}
    (root / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (root / "test" / "ms.test.js").write_text(TEST)
    return root


async def test_a_javascript_projects_suite_passes_in_ro_with_its_environment(
    project: Path, registry: Registry
) -> None:
    built = _env(project, registry, "build")
    try:
        assert built.returncode == 0, built.stderr
        assert f"  npm:{PACKAGE}" in built.stdout, built.stdout
        env = registry.env(MCP_SANDBOX_WORKSPACE=str(project))
        async with connect("auto", env=env) as c:
            result = await call(c, "shell", command="node --test test/ms.test.js 2>&1")
            assert result["exit_code"] == 0, result["stdout"]
            assert result["environment"]["state"] == "ready"
            assert result["workspace"]["mode"] == "ro"
            # The dependency comes from /env, read-only, and the call has no network.
            probe = (
                "node -e 'console.log(require.resolve(\"ms\"))'; "
                "touch /env/node/node_modules/x 2>&1 || echo refused"
            )
            seen = await call(c, "shell", command=probe)
            assert seen["stdout"].startswith("/env/node/node_modules/ms/"), seen["stdout"]
            assert "refused" in seen["stdout"]
    finally:
        _env(project, registry, "rm")
    assert environment_volumes(project) == []
