"""A local npm registry for environment builds: a real package from npmjs.org, laid out as
static packuments and tarballs that our own container serves, so no sandbox ever reaches a
public address.

The host fetches the tarball with ``npm pack`` (npm is the one client that reaches the
registry from a test host), once per pinned version: the cache under /tmp is keyed by both.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

# A real package with no dependencies of its own, and one answer a test can check.
PACKAGE, VERSION = "ms", "2.1.3"
CACHE = Path("/tmp") / f"mcp-sandbox-test-npm-{PACKAGE}-{VERSION}"
HOST = "registry.test"


def fetch() -> Path:
    """The registry's tree: ``/<name>`` its packument, ``/tarballs/<file>`` the tarball."""
    done = CACHE / "complete"
    root = CACHE / "registry"
    if not done.exists():
        shutil.rmtree(CACHE, ignore_errors=True)
        packed = CACHE / "packed"
        packed.mkdir(parents=True)
        npm = shutil.which("npm")
        if npm is None:
            raise AssertionError("npm is not installed on this host: it fetches the tarball")
        subprocess.run(
            [npm, "pack", "--silent", f"{PACKAGE}@{VERSION}", "--pack-destination", str(packed)],
            check=True,
            capture_output=True,
            cwd=packed,
        )
        (tarball,) = packed.glob("*.tgz")
        _lay_out(tarball, root)
        done.write_text("ok\n")
    return root


def _lay_out(tarball: Path, root: Path) -> None:
    data = tarball.read_bytes()
    (root / "tarballs").mkdir(parents=True)
    shutil.copy(tarball, root / "tarballs" / tarball.name)
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    manifest = {
        "name": PACKAGE,
        "version": VERSION,
        "dist": {
            "tarball": f"http://{HOST}/tarballs/{tarball.name}",
            "shasum": hashlib.sha1(data).hexdigest(),  # npm's own field
            "integrity": integrity,
        },
    }
    packument = {"name": PACKAGE, "dist-tags": {"latest": VERSION}, "versions": {VERSION: manifest}}
    (root / PACKAGE).write_text(json.dumps(packument))
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
