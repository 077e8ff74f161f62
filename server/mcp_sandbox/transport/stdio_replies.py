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

# The line's tokens, by text: a string, a bracket or punctuation, or a run of anything else
# (an atom, or at depth, everything up to the next string or bracket).
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\],:]|[^\s"{}\[\],:]+|\s+')
_DEEP = re.compile(r'[^"{}\[\]]+')
_MAX_TOKENS = 100_000
_ID = re.compile(r'-?\d{1,15}|"(?:[^"\\]|\\.){0,200}"')
_METHOD = re.compile(r'"([A-Za-z/_]{1,64})"')
_LONE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_LONE_SURROGATE_CHAR = re.compile("[\ud800-\udfff]")


def _top_level(line: str) -> dict[str, str]:
    """The members of the line's outer object, key -> value text, for values that are
    strings or atoms; by text, without recursion (the line may nest 100,000 deep)."""
    members: dict[str, str] = {}
    depth, key, expect_key, i = 0, "", False, 0
    for _ in range(_MAX_TOKENS):
        if depth > 1 and (deep := _DEEP.match(line, i)) is not None:
            i = deep.end()  # inside a member's value: only strings and brackets matter
        token = _TOKEN.match(line, i)
        if token is None:
            break
        i, t = token.end(), token.group()
        if t in "{[":
            depth += 1
            expect_key, key = depth == 1 and t == "{", ""
        elif t in "}]":
            depth -= 1
        elif depth != 1 or t.isspace():
            continue
        elif t == ",":
            expect_key, key = True, ""
        elif t == ":":
            expect_key = False
        elif expect_key:
            key = t
        elif key:
            members.setdefault(key, t)
            key = ""
    return members


def reply_to_unreadable(error: Exception) -> types.JSONRPCResponse | types.JSONRPCError | None:
    """The answer to a line the SDK could not read, or None (no id found: nothing to answer)."""
    if not isinstance(error, pydantic.ValidationError) or not error.errors():
        return None
    first = error.errors()[0]
    line = first.get("input")
    if not isinstance(line, str):
        return None  # valid JSON the SDK refused as JSON-RPC: left as the SDK leaves it
    members = _top_level(line)
    found = _ID.fullmatch(members.get('"id"', ""))
    method = _METHOD.fullmatch(members.get('"method"', ""))
    if found is None or method is None:
        # A notification needs no answer; a response (to our own question) must get none:
        # its id is ours, and the client may have a request of its own with that number.
        return None
    try:
        request_id: int | str = json.loads(found.group())
    except ValueError:
        return None
    if isinstance(request_id, str) and _LONE_SURROGATE_CHAR.search(request_id):
        return None  # no reply can carry this id: the SDK's writer would fail and stop us
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
