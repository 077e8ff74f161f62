"""stdio: a request the SDK cannot read still gets its one-line answer, never silence.

The SDK's stdio reader validates each line with a strict JSON parser. A line it cannot read
(a lone UTF-16 surrogate escape such as ``\\ud800``, which a JavaScript client may send; a
number thousands of digits long; nesting thousands deep) reaches the session as an
exception, which drops it: the caller would wait for its own timeout. This relay sits
between the reader and the server. For such a line whose id it can find, it answers at once
(a ``tools/call`` gets an ``isError`` result, anything else a JSON-RPC parse error), and it
passes everything else on untouched.
"""

from __future__ import annotations

import json
import re

import anyio
import pydantic
from mcp import types
from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage

# The request's id and method, found by text: the line is not JSON the SDK can read. Clients
# write "jsonrpc", "id" and "method" before "params", so the first match is the request's.
_ID = re.compile(r'"id"\s*:\s*(-?\d{1,15}(?![\d.eE])|"(?:[^"\\]|\\.){0,200}")')
_METHOD = re.compile(r'"method"\s*:\s*"([A-Za-z/_]{1,64})"')
_LONE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def reply_to_unreadable(error: Exception) -> types.JSONRPCResponse | types.JSONRPCError | None:
    """The answer to a line the SDK could not read, or None (no id found: nothing to answer)."""
    if not isinstance(error, pydantic.ValidationError) or not error.errors():
        return None
    first = error.errors()[0]
    line = first.get("input")
    if not isinstance(line, str):
        return None  # valid JSON the SDK refused as JSON-RPC: left as the SDK leaves it
    found, method = _ID.search(line), _METHOD.search(line)
    if found is None or method is None:
        # A notification needs no answer; a response (to our own question) must get none:
        # its id is ours, and the client may have a request of its own with that number.
        return None
    try:
        request_id: int | str = json.loads(found.group(1))
    except ValueError:
        return None
    if _LONE_SURROGATE.search(line):
        why = "a string holds a lone UTF-16 surrogate (\\ud800-\\udfff); send valid Unicode"
    else:
        why = " ".join(str(first.get("msg", "not valid JSON-RPC")).split())[:160]
    message = f"invalid request: {why}"
    if method.group(1) == "tools/call":
        result = types.CallToolResult(
            content=[types.TextContent(type="text", text=message)], is_error=True
        )
        return types.JSONRPCResponse(
            jsonrpc="2.0",
            id=request_id,
            result=result.model_dump(by_alias=True, exclude_none=True, mode="json"),
        )
    return types.JSONRPCError(
        jsonrpc="2.0", id=request_id, error=types.ErrorData(code=types.PARSE_ERROR, message=message)
    )


async def run_stdio(server: MCPServer) -> None:
    """``server.run_stdio_async()``, with the relay between the SDK's reader and the server."""
    lowlevel = server._lowlevel_server  # what run_stdio_async runs, given our read stream
    async with stdio_server() as (read_stream, write_stream):
        relay_in, relay_out = anyio.create_memory_object_stream[SessionMessage | Exception](0)

        async def relay() -> None:
            async with relay_in:
                async for item in read_stream:
                    reply = reply_to_unreadable(item) if isinstance(item, Exception) else None
                    if reply is not None:
                        await write_stream.send(SessionMessage(reply))
                    else:
                        await relay_in.send(item)

        async with anyio.create_task_group() as tg:
            tg.start_soon(relay)
            await lowlevel.run(relay_out, write_stream, lowlevel.create_initialization_options())
            tg.cancel_scope.cancel()
