"""Names every room shares: the sandbox's user, our labels, where the workspace sits."""

from __future__ import annotations

SANDBOX_UID = 65534  # nobody: every sandbox and the egress proxy run as this uid and gid
SANDBOX_USER = f"{SANDBOX_UID}:{SANDBOX_UID}"
LABEL = "mcp-sandbox"  # on every container, network and volume of ours
OWNER_LABEL = "mcp-sandbox.owner"  # which server process made it (``host:pid:start``)
WORKDIR = "/workspace"  # where a sandbox sees the workspace
MIB = 1024 * 1024
# On the volumes of a project environment (``environment/``): they outlive the server that
# built them, so the per-owner volume reaper leaves them to the environment's own.
ENVIRONMENT_LABEL = "mcp-sandbox.environment"
ENVIRONMENT_DIR = "/env"  # where a sandbox sees a project environment, read-only
