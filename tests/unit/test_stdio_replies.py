"""The answer to a line the SDK cannot read: found by text, one line, never to a response."""

from __future__ import annotations

import pytest
from mcp import types

from mcp_sandbox.transport.stdio_replies import reply_to_unreadable


def _unreadable(line: str) -> Exception:
    try:
        types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    except Exception as e:  # whatever the SDK's reader would have handed on
        return e
    raise AssertionError(f"the SDK reads {line!r}")


CALL = '{"jsonrpc":"2.0","id":%s,"method":"tools/call","params":{"name":"shell","arguments":%s}}'


@pytest.mark.parametrize("request_id", ["7", '"abc"', "-3"])
def test_a_tool_call_gets_an_is_error_result_with_its_own_id(request_id: str) -> None:
    reply = reply_to_unreadable(_unreadable(CALL % (request_id, '{"command":"\\ud800"}')))
    assert isinstance(reply, types.JSONRPCResponse)
    assert str(reply.id) == request_id.strip('"')
    assert reply.result["isError"] is True
    [text] = [c["text"] for c in reply.result["content"]]
    assert text.startswith("invalid request: ") and "surrogate" in text and "\n" not in text


def test_another_method_gets_a_parse_error() -> None:
    line = '{"jsonrpc":"2.0","id":4,"method":"tools/list","params":{"cursor":"\\udc80"}}'
    reply = reply_to_unreadable(_unreadable(line))
    assert isinstance(reply, types.JSONRPCError) and reply.error.code == types.PARSE_ERROR


@pytest.mark.parametrize(
    "line",
    [
        '{"jsonrpc":"2.0","method":"notifications/progress","params":{"x":"\\ud800"}}',
        # A response to the server's own question: its id is the server's.
        '{"jsonrpc":"2.0","id":1,"result":{"content":"\\ud800"}}',
        '{"jsonrpc":"2.0","params":{"x":"\\ud800"}}',
    ],
)
def test_no_answer_without_a_request_to_answer(line: str) -> None:
    assert reply_to_unreadable(_unreadable(line)) is None


def test_huge_numbers_and_deep_nesting_are_answered_too() -> None:
    for arguments in ('{"memory_mib":' + "9" * 5000 + "}", "[" * 100_000 + "]" * 100_000):
        reply = reply_to_unreadable(_unreadable(CALL % (9, arguments)))
        assert isinstance(reply, types.JSONRPCResponse) and reply.result["isError"] is True


@pytest.mark.parametrize(
    "line",
    [
        # The TypeScript SDK writes the id last: an "id" inside the arguments comes first.
        '{"method":"tools/call","params":{"name":"shell","arguments":{"id":777,"command":"'
        '\\ud800"}},"jsonrpc":"2.0","id":39}',
        '{"jsonrpc":"2.0","method":"tools/call","params":{"id":[777],"x":{"id":777},'
        '"arguments":{"command":"\\ud800"}},"id" : 39 }',
    ],
)
def test_the_answer_goes_to_the_requests_own_id_not_one_in_its_params(line: str) -> None:
    reply = reply_to_unreadable(_unreadable(line))
    assert isinstance(reply, types.JSONRPCResponse) and reply.id == 39


def test_an_id_no_reply_can_carry_gets_none_rather_than_stopping_the_server() -> None:
    line = '{"jsonrpc":"2.0","id":"\\ud800","method":"tools/list","params":{}}'
    assert reply_to_unreadable(_unreadable(line)) is None
