"""Who made an object of ours: ``host:pid:start`` of a process, and whether it still runs."""

from __future__ import annotations

import socket

import psutil


def process_identity(pid: int | None = None) -> str:
    """``host:pid:start`` of a process: unique across pid reuse, so the reaper can tell."""
    proc = psutil.Process(pid)
    return f"{socket.gethostname()}:{proc.pid}:{int(proc.create_time())}"


def owner_is_alive(owner: str) -> bool | None:
    """Whether the process named by ``process_identity`` still runs; None if not this host's.

    A zombie (dead, not yet waited for by its parent) does not run: what it made is an orphan.
    """
    host, _, rest = owner.partition(":")
    pid_text, _, start_text = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    try:
        proc = psutil.Process(int(pid_text))
        return str(int(proc.create_time())) == start_text and _runs(proc)
    except psutil.Error:
        return False


def pid_runs(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return _runs(psutil.Process(pid))
    except psutil.Error:
        return False


def _runs(proc: psutil.Process) -> bool:
    return bool(proc.status() != psutil.STATUS_ZOMBIE)
