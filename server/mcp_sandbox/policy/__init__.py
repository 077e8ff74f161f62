"""PURE: what a call may do and where it may reach.

Limits, languages, tool arguments, escalation rules, workspace path rules, egress rules
(shipped into the proxy image as they are) and secret-looking names. No docker, anyio or mcp.
May import: errors, constants.
"""
