"""Who made an object: a process identity, and whether that process still runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from mcp_sandbox.engine.owners import owner_is_alive, pid_runs, process_identity


def test_this_process_runs_and_a_dead_one_does_not() -> None:
    assert owner_is_alive(process_identity()) is True
    assert pid_runs(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = process_identity(child.pid)
    child.wait()
    assert owner_is_alive(owner) is False and not pid_runs(child.pid)


def test_a_zombie_does_not_run() -> None:
    """Dead but not yet waited for: what it made is an orphan, for the reaper to take."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = process_identity(child.pid)
    try:
        for _ in range(200):  # until the kernel has it as a zombie (we have not waited)
            if not pid_runs(child.pid):
                break
            time.sleep(0.02)
        assert os.path.exists(f"/proc/{child.pid}")  # still there, as a zombie
        assert owner_is_alive(owner) is False and not pid_runs(child.pid)
    finally:
        child.wait()


def test_another_hosts_owner_is_unknown() -> None:
    assert owner_is_alive("elsewhere.test:1:1") is None
    assert owner_is_alive("garbage") is None
