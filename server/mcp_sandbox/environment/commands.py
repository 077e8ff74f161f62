"""PURE: what a build sandbox runs, and the manifests it reads on stdin, as a tar.

The script runs as uid 65534 with a read-only root; it writes only ``/env`` (the volume)
and ``/tmp``. Python: a venv at ``/env/venv`` (its ``python`` first on a call's PATH, so
``python -m pytest`` is the venv's), plus a ``.pth`` naming /workspace and /workspace/src
so the project imports from the read-only tree without an editable install writing into
it. Node: ``/env/node/node_modules`` (``npm ci`` with a lockfile, else ``npm install``).
"""

from __future__ import annotations

import io
import shlex
import tarfile
from urllib.parse import urlsplit

from mcp_sandbox.config.environment import EnvironmentSettings
from mcp_sandbox.constants import ENVIRONMENT_DIR, WORKDIR
from mcp_sandbox.environment.manifests import (
    PACKAGE_JSON,
    PYPROJECT,
    PYPROJECT_REQUIREMENTS,
    Manifests,
    pyproject_requirements,
)

PROJECT_DIR = "/tmp/project"  # the manifests, unpacked from stdin
VENV = f"{ENVIRONMENT_DIR}/venv"
NODE_DIR = f"{ENVIRONMENT_DIR}/node"
PTH_NAME = "mcp-sandbox-workspace.pth"
_PURELIB = 'import sysconfig; print(sysconfig.get_path("purelib"))'
# Lines the build prints that the server reads back: "== step <what>".
STEP_MARK = "== step "


def stdin_tar(manifests: Manifests) -> bytes:
    """The manifests, plus the requirements read out of pyproject.toml, as a tar."""
    files = dict(manifests.files)
    pyproject = manifests.get(PYPROJECT)
    if pyproject is not None:
        reqs = pyproject_requirements(pyproject.decode("utf-8", "replace"))
        files[PYPROJECT_REQUIREMENTS] = "".join(f"{r}\n" for r in reqs).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build_script(manifests: Manifests, settings: EnvironmentSettings) -> str:
    """The shell script of one build; it exits non-zero when any install fails."""
    q = shlex.quote
    lines = [
        "set -eu",
        "umask 022",
        f"mkdir -p {PROJECT_DIR} && cd {PROJECT_DIR} && tar -xf - --no-same-owner",
    ]
    python = settings.python is not None or manifests.python
    node = settings.node is not None or manifests.node
    if python:
        lines += [
            f"echo '{STEP_MARK}python venv'",
            f"python3 -m venv {VENV}",
            f"site=$({VENV}/bin/python -c {q(_PURELIB)})",
            f'printf "%s\\n" {WORKDIR}/src {WORKDIR} > "$site/{PTH_NAME}"',
            f"export PATH={VENV}/bin:$PATH VIRTUAL_ENV={VENV}",
            f"export PIP_INDEX_URL={q(settings.pip_index_url)}",
            *_trusted_host(settings.pip_index_url),
            "export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_CACHE_DIR=/tmp/.pip",
            f"echo '{STEP_MARK}pip install'",
        ]
        if settings.python is not None:
            lines.append(settings.python)
        else:
            reqs = list(manifests.requirements_files)
            if PYPROJECT in manifests.names:
                reqs.append(PYPROJECT_REQUIREMENTS)
            args = " ".join(f"-r {q(r)}" for r in reqs)
            lines.append(f"python -m pip install --no-input {args}")
        lines += [f"echo '{STEP_MARK}python done'", f"cd {PROJECT_DIR}"]
    if node:
        lines += [
            f"echo '{STEP_MARK}npm'",
            f"mkdir -p {NODE_DIR}",
            f"export npm_config_registry={q(settings.npm_registry)}",
            "export npm_config_cache=/tmp/.npm npm_config_update_notifier=false",
            "export npm_config_fund=false npm_config_audit=false",
        ]
        if settings.node is not None:
            lines += [f"cd {NODE_DIR}", settings.node]
        else:
            lock = manifests.node_lockfile
            copied = " ".join(q(n) for n in (PACKAGE_JSON, lock) if n is not None)
            lines += [
                f"cp {copied} {NODE_DIR}/",
                f"cd {NODE_DIR}",
                "npm ci" if lock is not None else "npm install",
            ]
        lines.append(f"echo '{STEP_MARK}npm done'")
    if not (python or node):
        lines.append("echo 'no dependency manifest: nothing to install'")
    return "\n".join(lines) + "\n"


def _trusted_host(url: str) -> list[str]:
    """A configured ``http://`` index is trusted as configured, as ``--trusted-host`` is."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        return []
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    return [f"export PIP_TRUSTED_HOST={shlex.quote(host)}"]


# What a trusted look at a finished environment prints: its size in MiB, then what it holds.
INVENTORY_SCRIPT = f"""set -u
du -sxm {ENVIRONMENT_DIR} | cut -f1
for d in {VENV}/lib/python3*/site-packages/*.dist-info; do
  [ -d "$d" ] && basename "$d" .dist-info
done
for d in {NODE_DIR}/node_modules/* {NODE_DIR}/node_modules/@*/*; do
  [ -f "$d/package.json" ] && echo "npm:${{d#{NODE_DIR}/node_modules/}}"
done
exit 0
"""
