"""What this host affords: sandboxes at once, by cores and by memory."""

from __future__ import annotations

import os
from types import SimpleNamespace

import psutil
import pytest

from mcp_sandbox.constants import MIB
from mcp_sandbox.sandbox import admission


@pytest.mark.parametrize(
    ("cores", "available_mib", "memory_mib", "expected"),
    [
        (2, 100_000, 256, 4),  # two per core
        (64, 100_000, 256, 64),  # never past 64
        (8, 1_024, 256, 2),  # half the available memory holds two
        (8, 100, 256, 1),  # always one, however short
        (None, 100_000, 256, 2),  # an unknown core count is one core
    ],
)
def test_sandboxes_at_once_follow_cores_and_memory(
    monkeypatch: pytest.MonkeyPatch,
    cores: int | None,
    available_mib: int,
    memory_mib: int,
    expected: int,
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    memory = SimpleNamespace(available=available_mib * MIB)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: memory)
    assert admission.default_max_concurrent(memory_mib) == expected
