"""mcp-sandbox: run untrusted code in ephemeral, default-deny Docker containers over MCP."""

__version__ = "0.1.0"
