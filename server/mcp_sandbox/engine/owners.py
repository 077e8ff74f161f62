"""Who made an object of ours: ``host:pid:start`` of a process, and whether it still runs."""

from __future__ import annotations

import socket

import psutil


def process_identity(pid: int | None = None) -> str:
    """``host:pid:start`` of a process: unique across pid reuse, so the reaper can tell."""
    proc = psutil.Process(pid)
    return f"{socket.gethostname()}:{proc.pid}:{int(proc.create_time())}"


def owner_is_alive(owner: str) -> bool | None:
    """Whether the process named by ``process_identity`` still runs; None if not this host's."""
    host, _, rest = owner.partition(":")
    pid_text, _, start_text = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    try:
        proc = psutil.Process(int(pid_text))
        return str(int(proc.create_time())) == start_text
    except psutil.Error:
        return False
