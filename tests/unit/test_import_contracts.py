"""The import contracts in pyproject.toml hold on the tree, and they bite: a breach fails.

lint-imports runs in a subprocess, so that it finds the copy of the package it is pointed at
and not the one this process imported.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "server" / "mcp_sandbox"
PYPROJECT = ROOT / "pyproject.toml"

LAYERS = "Layers: nothing imports upwards"
DOCKER = "Only engine imports docker"
PURE = "The pure rooms import no Docker, no anyio, no MCP, not even through another module"


def lint_imports(package_parent: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """pyproject's contracts, checked on the ``mcp_sandbox`` that lies in ``package_parent``."""
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from importlinter.cli import lint_imports_command; lint_imports_command()",
            "--no-cache",
            "--no-logo",
            str(PYPROJECT),
        ],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(package_parent)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def flat(output: str) -> str:
    """lint-imports wraps long contract names: one line, single spaces."""
    return " ".join(output.split())


def test_the_tree_keeps_every_contract(tmp_path: Path) -> None:
    proc = lint_imports(ROOT / "server", tmp_path)
    out = flat(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in (LAYERS, DOCKER, PURE):
        assert f"{name} KEPT" in out


@pytest.mark.parametrize(
    ("module", "injected", "contract", "arrow"),
    [
        pytest.param(
            "policy/limits.py",
            "import mcp_sandbox.service",
            LAYERS,
            "mcp_sandbox.policy.limits -> mcp_sandbox.service",
            id="policy-imports-service",
        ),
        pytest.param(
            "service.py",
            "import docker",
            DOCKER,
            "mcp_sandbox.service -> docker",
            id="service-imports-docker",
        ),
        pytest.param(
            "output/result.py",
            "import anyio",
            PURE,
            "mcp_sandbox.output.result -> anyio",
            id="output-imports-anyio",
        ),
    ],
)
def test_an_injected_breach_breaks_its_contract(
    tmp_path: Path, module: str, injected: str, contract: str, arrow: str
) -> None:
    copy = tmp_path / "src" / "mcp_sandbox"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / module).open("a") as f:
        f.write(f"\n{injected}  # the breach under test\n")
    proc = lint_imports(copy.parent, tmp_path)
    out = flat(proc.stdout + proc.stderr)
    assert proc.returncode != 0, out
    assert f"{contract} BROKEN" in out
    assert arrow in out


def test_egress_rules_imports_the_standard_library_only() -> None:
    """policy/egress_rules.py is copied into the egress proxy's image: Python and nothing else."""
    source = PACKAGE / "policy" / "egress_rules.py"
    tree = ast.parse(source.read_text(), str(source))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"a relative import, line {node.lineno}"
            imported.add(node.module or "")
    outside = {
        name
        for name in imported
        if name.split(".")[0] not in sys.stdlib_module_names and name != "__future__"
    }
    assert imported, "no import found: the parse went wrong"
    assert outside == set()
