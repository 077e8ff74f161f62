"""README's architecture map and the package agree, module for module."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "server" / "mcp_sandbox"


def mapped_modules() -> set[str]:
    """``pkg/module.py`` for each module the map lists (two spaces a level)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Architecture") :]
    start = section.index("server/mcp_sandbox/\n")
    block = section[start : section.index("```", start)]
    found, package = set(), ""
    for line in block.splitlines()[1:]:
        m = re.match(r"^( +)([a-z_]+)(/|\.py)", line)
        if m is None:
            continue
        depth = len(m.group(1)) // 2
        if m.group(3) == "/":
            package = m.group(2) + "/"
        else:
            found.add((package if depth == 2 else "") + m.group(2) + ".py")
    return found


def test_every_module_is_on_the_map_and_every_mapped_module_exists() -> None:
    present = {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    }
    assert mapped_modules() == present


def test_every_subpackage_says_what_lives_there_and_what_it_may_import() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        doc = init.read_text()
        assert doc.startswith('"""') and "May import" in doc, init
