"""``mcp-sandbox runtime install-runsc``: register gVisor with the local Docker daemon.

Writes our two runtime entries into daemon.json (keeping everything else), reloads the
daemon with SIGHUP (its runtimes reload without a restart, so running containers stay),
then checks that the daemon lists them. Refuses a daemon.json it cannot parse.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

from mcp_sandbox.engine.docker_api import DockerApi
from mcp_sandbox.errors import ConfigError, SandboxError
from mcp_sandbox.sandbox.runtime import RUNSC_ENTRIES, runsc_problems, with_runsc_entries

DAEMON_JSON = Path("/etc/docker/daemon.json")


def merged_daemon_json(path: Path, runsc_path: str) -> str:
    """The text ``path`` should hold: its settings with our entries. Raises ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = "{}"
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    try:
        current = json.loads(text) if text.strip() else {}
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); fix it by hand first") from None
    if not isinstance(current, dict):
        raise ConfigError(f"{path} is not a JSON object; fix it by hand first")
    try:
        merged = with_runsc_entries(current, runsc_path)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}; fix it by hand first") from None
    return json.dumps(merged, indent=2) + "\n"


def _dockerd_pid() -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "dockerd":
                    return int(entry.name)
            except OSError:
                continue
    raise ConfigError("no dockerd process on this host; start Docker, then run this again")


def install_runsc(
    api: DockerApi,
    *,
    daemon_json: Path = DAEMON_JSON,
    runsc_path: str | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """Register runsc, reload the daemon, and check. Raises ConfigError or SandboxError."""
    binary = runsc_path or shutil.which("runsc")
    if binary is None or not os.access(binary, os.X_OK):
        raise ConfigError("runsc is not installed: `apt-get install runsc` (Debian 12)")
    text = merged_daemon_json(daemon_json, binary)
    daemon_json.parent.mkdir(parents=True, exist_ok=True)
    staged = daemon_json.with_name(daemon_json.name + ".mcp-sandbox-new")
    staged.write_text(text, encoding="utf-8")
    os.replace(staged, daemon_json)  # never a half-written daemon.json
    say(f"wrote {', '.join(RUNSC_ENTRIES)} ({binary}) into {daemon_json}")
    os.kill(_dockerd_pid(), signal.SIGHUP)
    say("reloaded dockerd (SIGHUP)")
    problems: list[str] = []
    for _ in range(50):
        time.sleep(0.2)
        try:
            offered, _default = api.runtimes()
        except SandboxError:
            continue
        problems = runsc_problems(offered)
        if not problems:
            say("docker info lists " + ", ".join(RUNSC_ENTRIES) + "; set runtime = 'runsc'")
            return
    raise ConfigError(
        "the daemon did not pick up the runtimes: " + ("; ".join(problems) or "no answer")
    )
