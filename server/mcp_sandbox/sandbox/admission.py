"""What this host can afford, read with psutil: how many sandboxes at once."""

from __future__ import annotations

import os

import psutil

from mcp_sandbox.constants import MIB


def default_max_concurrent(memory_mib: int) -> int:
    """Sandboxes at once: two per core, and no more than half the available memory holds."""
    cores = os.cpu_count() or 1
    by_memory = int(psutil.virtual_memory().available / MIB * 0.5 // memory_mib)
    return max(1, min(cores * 2, by_memory, 64))
