"""What this host can afford, read with psutil."""

from __future__ import annotations

import os
import socket

import psutil

_MIB = 1024 * 1024


def default_max_concurrent(memory_mib: int) -> int:
    """Sandboxes at once: two per core, and no more than half the available memory holds."""
    cores = os.cpu_count() or 1
    by_memory = int(psutil.virtual_memory().available / _MIB * 0.5 // memory_mib)
    return max(1, min(cores * 2, by_memory, 64))


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
