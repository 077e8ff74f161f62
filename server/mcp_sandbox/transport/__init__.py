"""How calls arrive: the MCP tools, the stdio relay, the HTTP gate and its tokens, the
launcher, health checks.

May import: oversight and below.
"""
