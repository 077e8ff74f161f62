"""Attacks on the warm copy path (issue #20): where a warm `copy` or `rw` call still differs
from a cold one: each test below showed a problem found in review, fixed since.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

from sandbox_client import call

from .test_warm_copy import COLD, _client, _project


async def _prepared(client: Client) -> None:
    """Once a probe found a warm copy sandbox and the pool has prepared the next one, which
    holds the tree as it is now."""
    with anyio.fail_after(60):
        while True:
            if (await call(client, "shell", command="true", workspace="copy"))["pooled"]:
                break
            await anyio.sleep(0.5)
    await anyio.sleep(2.0)


async def _warm_now(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    """``tool`` in a copy sandbox the pool prepared after the probe that found one warm."""
    await _prepared(client)
    result = await call(client, tool, **args)
    assert result["pooled"] is True
    return result


# Every "ZQX" and 32 hex digits in the program's writable memory (the stub's, before the
# fork): the code holds only the prefix, built at run time.
HEAP_SCAN = r"""
import re
pre = bytes([90, 81]) + b"X"
found = set()
with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
    for line in maps:
        f = line.split()
        if "rw" not in f[1]:
            continue
        lo, hi = (int(x, 16) for x in f[0].split("-"))
        try:
            mem.seek(lo)
            data = mem.read(hi - lo)
        except OSError:
            continue
        hits = re.finditer(re.escape(pre) + b"[0-9a-f]{32}", data)
        found.update(m.group().decode() for m in hits)
print(sorted(found))
"""


async def test_a_file_gone_from_the_host_leaves_nothing_in_the_stub_memory_a_call_sees(
    tmp_path: Path,
) -> None:
    """Held in review: the waiting stub read the file's bytes; the program forked from it
    finds none of them once the host removed the file (nor the old bytes of a changed one)."""
    root = _project(tmp_path / "p")
    gone, old = "ZQX" + secrets.token_hex(16), "ZQX" + secrets.token_hex(16)
    (root / "secret.env").write_text(f"TOKEN={gone}\n" * 50)
    (root / "config.py").write_text(f"KEY = '{old}'\n")
    async with _client(root) as w:
        await _prepared(w)
        (root / "secret.env").unlink()
        (root / "config.py").write_text("KEY = None\n")
        result = await call(w, "run_code", language="python", code=HEAP_SCAN, workspace="copy")
    assert result["pooled"] is True and result["exit_code"] == 0, result["stderr"]
    assert gone not in result["stdout"] and old not in result["stdout"]


# Allocates all but 20 MiB of the sandbox's memory limit, touching every page.
ALMOST_ALL_MEMORY = r"""
limit = 512 << 20  # the call's memory_mib (the default): the sandbox's own may be larger
b = bytearray(limit - (20 << 20))
for i in range(0, len(b), 4096):
    b[i] = 1
print("allocated")
"""


async def test_a_warm_copy_leaves_the_program_the_memory_of_a_cold_one(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    (root / "big.bin").write_bytes(os.urandom(15 * 2**20))
    async with _client(root, COLD) as c:
        cold = await call(c, "run_code", language="python", code=ALMOST_ALL_MEMORY,
                          workspace="copy")  # fmt: skip
    async with _client(root) as w:
        warm = await _warm_now(w, "run_code", language="python", code=ALMOST_ALL_MEMORY,
                               workspace="copy")  # fmt: skip
    assert cold["exit_code"] == 0 and cold["stdout"] == "allocated\n", cold
    assert (warm["exit_code"], warm["oom_killed"]) == (0, False)


# 40 directories of 200 characters: deeper than PATH_MAX (4096) from /workspace.
DEEP = (
    'python3 -c "import os\nfor i in range(40):\n os.mkdir(200*chr(97)); os.chdir(200*chr(97))'
    '\nopen(chr(102),chr(119)).write(chr(120))"; echo top > top.txt'
)


async def test_a_tree_deeper_than_path_max_comes_back_from_a_warm_copy_as_from_a_cold_one(
    tmp_path: Path,
) -> None:
    root = _project(tmp_path / "p")
    async with _client(root, COLD) as c:
        cold = await call(c, "shell", command=DEEP, workspace="copy")
    async with _client(root) as w:
        warm = await _warm_now(w, "shell", command=DEEP, workspace="copy")
    assert cold["exit_code"] == 0 and cold["workspace"]["note"] is None, cold
    # Whole, with the top file as cold has it; the deep file too, which the daemon's
    # archive of a cold copy leaves out (past PATH_MAX).
    assert warm["workspace"]["note"] is None
    warm_paths = {c["path"] for c in warm["workspace"]["changes"]}
    assert {c["path"] for c in cold["workspace"]["changes"]} <= warm_paths
    assert "top.txt" in warm_paths


FEW_FILES = {"MCP_SANDBOX_WORKSPACE_POLICY__COPY_MAX_FILES": "1000"}
MANY = "for i in $(seq 3000); do : > f$i; done"


async def test_a_warm_copy_past_the_entry_bound_is_reported_as_a_cold_one(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    async with _client(root, {**COLD, **FEW_FILES}) as c:
        cold = await call(c, "shell", command=MANY, workspace="copy")
    async with _client(root, FEW_FILES) as w:
        warm = await _warm_now(w, "shell", command=MANY, workspace="copy")
    assert "more than" in cold["workspace"]["note"] and "entries" in cold["workspace"]["note"]
    assert warm["workspace"]["note"] == cold["workspace"]["note"]
