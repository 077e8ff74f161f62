"""Build the images the server needs, offline: mmdebstrap -> docker import -> docker build."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from mcp_sandbox.config.egress import DEFAULT_PROXY_IMAGE
from mcp_sandbox.engine.docker_api import DockerApi
from mcp_sandbox.errors import SandboxUnavailable
from mcp_sandbox.package_data import data_dir
from mcp_sandbox.policy import egress_rules as egress_policy

BASE_TAG = "mcp-sandbox-base:bookworm"
SUITE = "bookworm"
MIRRORS = (
    f"deb http://deb.debian.org/debian {SUITE} main",
    f"deb http://deb.debian.org/debian {SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
)

Progress = Callable[[str], None]


def runtime_context() -> Path:
    return data_dir("sandbox_images") / "runtime"


def egress_proxy_context(into: Path) -> Path:
    """The proxy's build context in ``into``: its directory, the server's own decision code
    (``egress_policy.py``, standard library only) and the runtime's package installer."""
    shutil.copytree(data_dir("sandbox_images") / "egress-proxy", into, dirs_exist_ok=True)
    shutil.copy2(egress_policy.__file__, into / "egress_policy.py")
    shutil.copy2(runtime_context() / "install-packages.sh", into / "install-packages.sh")
    return into


def runtime_packages() -> list[str]:
    """The Debian packages of the runtime image: one list for the base and the Dockerfile."""
    lines = (runtime_context() / "packages.txt").read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def make_base(api: DockerApi, progress: Progress) -> None:
    """A Debian rootfs made by mmdebstrap from Debian's packages, imported as BASE_TAG."""
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise SandboxUnavailable(
            "mmdebstrap is not installed (apt-get install mmdebstrap); with a registry, "
            "use `mcp-sandbox images build --base debian:bookworm-slim` instead"
        )
    with tempfile.TemporaryDirectory(prefix="mcp-sandbox-base-") as tmp:
        tarball = Path(tmp) / "base.tar"
        cmd = [
            mmdebstrap,
            "--variant=minbase",
            "--include=" + ",".join(runtime_packages()),
            SUITE,
            str(tarball),
            *MIRRORS,
        ]
        progress(f"making the Debian base with mmdebstrap ({len(runtime_packages())} packages)")
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, errors="replace"
        )
        assert proc.stderr is not None
        tail: list[str] = []
        for line in proc.stderr:
            line = line.rstrip()
            tail = [*tail[-19:], line]
            if line.startswith("I: "):
                progress("  " + line[3:])
        if proc.wait() != 0:
            raise SandboxUnavailable("mmdebstrap failed:\n" + "\n".join(tail))
        progress(f"importing the base as {BASE_TAG}")
        api.import_image(tarball, BASE_TAG)


def build_images(
    api: DockerApi,
    image: str,
    progress: Progress,
    *,
    base: str | None = None,
    rebuild_base: bool = False,
    proxy_image: str = DEFAULT_PROXY_IMAGE,
) -> None:
    """Build ``image`` and the egress proxy's ``proxy_image`` from ``base`` (default: the
    local mmdebstrap base, made if absent)."""
    if base is None:
        base = BASE_TAG
        if rebuild_base or not api.image_exists(BASE_TAG):
            make_base(api, progress)
        else:
            progress(f"reusing the base image {BASE_TAG}")
    progress(f"building {image} from {base}")
    for line in api.build(runtime_context(), image, {"BASE": base}):
        progress("  " + line)
    progress(f"built {image}")
    progress(f"building {proxy_image} from {base}")
    with tempfile.TemporaryDirectory(prefix="mcp-sandbox-proxy-") as tmp:
        for line in api.build(egress_proxy_context(Path(tmp)), proxy_image, {"BASE": base}):
            progress("  " + line)
    progress(f"built {proxy_image}")
