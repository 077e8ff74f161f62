"""README's architecture map and the package agree, module for module."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_module_is_on_the_map_and_every_mapped_module_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Architecture") :]
    mapped = set(re.findall(r"^  ([a-z_]+\.py)\b", section, re.MULTILINE))
    package = ROOT / "server" / "mcp_sandbox"
    present = {p.name for p in package.glob("*.py")} - {"__init__.py", "__main__.py"}
    assert mapped == present
