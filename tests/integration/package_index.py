"""A local package index for environment builds: real packages from PyPI, served by our own
container on our own network, so no sandbox ever reaches a public address.

The host downloads (pip is the one client that reaches PyPI from a test host or CI), once
per pinned version: the cache under /tmp is keyed by the project and its version.
"""

from __future__ import annotations

import hashlib
import html
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from mcp_sandbox.environment.manifests import pyproject_requirements

# A real project whose test suite needs third-party packages (hypothesis, pytest plugins),
# declared in a PEP 735 dependency group of its pyproject.toml.
PROJECT, VERSION = "h2", "4.2.0"
CACHE = Path("/tmp") / f"mcp-sandbox-test-index-{PROJECT}-{VERSION}-py311"
# The image's Python, and the platforms its Debian (glibc 2.36) runs wheels of.
PYTHON_VERSION = "3.11"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def _pip(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", *args],
        check=True,
    )


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def fetch() -> tuple[Path, Path]:
    """The project's unpacked sdist and a PEP 503 tree of the wheels its tests need."""
    done = CACHE / "complete"
    sdist_dir, root = CACHE / "sdist", CACHE / "index"
    if not done.exists():
        shutil.rmtree(CACHE, ignore_errors=True)
        sdist_dir.mkdir(parents=True)
        _pip("--no-binary", ":all:", "--no-deps", f"{PROJECT}=={VERSION}", "-d", str(sdist_dir))
        (archive,) = sdist_dir.glob("*.tar.gz")
        with tarfile.open(archive) as tar:
            tar.extractall(sdist_dir, filter="data")
        project = sdist_dir / f"{PROJECT}-{VERSION}"
        reqs = pyproject_requirements((project / "pyproject.toml").read_text())
        wheels = CACHE / "wheels"
        platforms = [a for p in PLATFORMS for a in ("--platform", p)]
        _pip(
            "--only-binary", ":all:", "--python-version", PYTHON_VERSION,
            "--implementation", "cp", *platforms, "-d", str(wheels), *reqs,
        )  # fmt: skip
        _lay_out(wheels, root)
        done.write_text("ok\n")
    return sdist_dir / f"{PROJECT}-{VERSION}", root


def _lay_out(wheels: Path, root: Path) -> None:
    """``root/simple/<name>/index.html`` linking ``root/packages/<wheel>#sha256=...``."""
    packages = root / "packages"
    packages.mkdir(parents=True)
    by_name: dict[str, list[Path]] = {}
    for wheel in sorted(wheels.glob("*.whl")):
        shutil.copy(wheel, packages / wheel.name)
        by_name.setdefault(normalize(wheel.name.split("-")[0]), []).append(wheel)
    simple = root / "simple"
    simple.mkdir()
    links = []
    for name, files in sorted(by_name.items()):
        (simple / name).mkdir()
        rows = []
        for f in files:
            sha = hashlib.sha256(f.read_bytes()).hexdigest()
            rows.append(f'<a href="/packages/{html.escape(f.name)}#sha256={sha}">{f.name}</a>')
        (simple / name / "index.html").write_text("<html><body>" + "".join(rows) + "</body></html>")
        links.append(f'<a href="/simple/{name}/">{name}</a>')
    (simple / "index.html").write_text("<html><body>" + "".join(links) + "</body></html>")
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def add_to_index(root: Path, name: str, wheel: bytes, filename: str) -> None:
    """One more package (a test's own) beside the real ones."""
    d = root / "simple" / normalize(name)
    d.mkdir(exist_ok=True)
    (root / "packages" / filename).write_bytes(wheel)
    sha = hashlib.sha256(wheel).hexdigest()
    (d / "index.html").write_text(f'<a href="/packages/{filename}#sha256={sha}">{filename}</a>')
