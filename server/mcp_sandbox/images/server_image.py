"""The server's own image, built offline: wheels made here by pip, installed in the image.

Builds reach no package index (a registry, or a TLS-intercepting proxy the base does not
trust, stands in the way), so pip runs on this host, where it works, and the image build only
copies the wheels in. Needs the source checkout: the project's wheel is built from it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mcp_sandbox.engine.docker_api import DockerApi
from mcp_sandbox.errors import SandboxUnavailable
from mcp_sandbox.images.build import BASE_TAG, Progress

SERVER_TAG = "mcp-sandbox-server:0.1"
_ROOT = Path(__file__).resolve().parents[3]


def source_root() -> Path:
    """The checkout this package runs from. Raises SandboxUnavailable outside one."""
    if not (_ROOT / "pyproject.toml").is_file() or not (_ROOT / "Dockerfile").is_file():
        raise SandboxUnavailable(
            "building the server image needs the source checkout (pyproject.toml, Dockerfile); "
            "run it from an editable install: pip install -e ."
        )
    return _ROOT


def build_wheels(root: Path, dest: Path) -> None:
    """The project's wheel into ``dest/app``, every dependency's into ``dest/deps``.

    Uses this interpreter's pip, so the host's Python must match the base image's (3.11 on
    Debian 12). Raises SandboxUnavailable when pip fails.
    """
    everything = dest / "all"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--wheel-dir",
            str(everything),
            str(root),
        ],
        capture_output=True,
        text=True,
        errors="replace",
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
        raise SandboxUnavailable(f"pip could not build the wheels:\n{tail}")
    for sub in ("app", "deps"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    for wheel in everything.glob("*.whl"):
        sub = "app" if wheel.name.startswith("mcp_sandbox-") else "deps"
        shutil.move(wheel, dest / sub / wheel.name)
    everything.rmdir()


def build_server_image(
    api: DockerApi, progress: Progress, *, base: str = BASE_TAG, tag: str = SERVER_TAG
) -> None:
    """Build ``tag`` from ``base`` and the repository's Dockerfile."""
    root = source_root()
    if base == BASE_TAG and not api.image_exists(BASE_TAG):
        raise SandboxUnavailable(f"{BASE_TAG} is missing; run `mcp-sandbox images build` first")
    with tempfile.TemporaryDirectory(prefix="mcp-sandbox-server-") as tmp:
        context = Path(tmp)
        shutil.copy(root / "Dockerfile", context / "Dockerfile")
        progress("building wheels of the server and its dependencies with pip")
        build_wheels(root, context / "wheels")
        progress(f"building {tag} from {base}")
        for line in api.build(context, tag, {"BASE": base}):
            progress("  " + line)
    progress(f"built {tag}")
