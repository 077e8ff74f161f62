"""PURE: a call's container with an environment: mounted read-only at /env, found by name.

``PATH`` starts with the venv's bin, so ``python`` and ``python -m pytest`` are the venv's
with no flag, then ``node_modules/.bin``. ``NODE_PATH`` lets ``require()`` find the
packages from anywhere; ESM ``import`` does not read ``NODE_PATH`` (Node resolves a bare
specifier only from ``node_modules`` above the importing file), so ESM tests need a
``node_modules`` link in the project, which a read-only workspace cannot get.
"""

from __future__ import annotations

from dataclasses import replace

from mcp_sandbox.constants import ENVIRONMENT_DIR
from mcp_sandbox.environment.commands import NODE_DIR, VENV
from mcp_sandbox.sandbox.spec import ContainerSpec, Mount


def environment_mount(volume: str) -> Mount:
    return Mount("volume", volume, ENVIRONMENT_DIR, read_only=True)


def with_environment(spec: ContainerSpec, volume: str) -> ContainerSpec:
    """``spec`` with the environment ``volume`` mounted read-only and its variables set."""
    env = dict(spec.env)
    env["PATH"] = f"{VENV}/bin:{NODE_DIR}/node_modules/.bin:{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = VENV
    env["NODE_PATH"] = f"{NODE_DIR}/node_modules"
    # hypothesis keeps its example database beside the tests, which may be read-only.
    env["HYPOTHESIS_STORAGE_DIRECTORY"] = "/tmp/.hypothesis"
    mounts = (*(m for m in spec.mounts if m.target != ENVIRONMENT_DIR), environment_mount(volume))
    return replace(spec, env=tuple(sorted(env.items())), mounts=mounts)
