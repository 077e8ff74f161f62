"""Names every room shares: the sandbox's user, our labels, where the workspace sits."""

from __future__ import annotations

SANDBOX_UID = 65534  # nobody: every sandbox and the egress proxy run as this uid and gid
SANDBOX_USER = f"{SANDBOX_UID}:{SANDBOX_UID}"
LABEL = "mcp-sandbox"  # on every container, network and volume of ours
OWNER_LABEL = "mcp-sandbox.owner"  # which server process made it (``host:pid:start``)
WORKDIR = "/workspace"  # where a sandbox sees the workspace
MIB = 1024 * 1024
