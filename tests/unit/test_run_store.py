"""Kept output: bounded in all, oldest out first, read back as kept."""

from __future__ import annotations

from mcp_sandbox.output.run_store import RunStore, output_uri


def test_the_oldest_streams_go_first_once_the_store_is_full() -> None:
    store = RunStore(max_bytes=10)
    store.keep("a", "stdout", "12345")
    store.keep("b", "stdout", "12345")
    store.keep("c", "stderr", "123")
    assert store.read("a", "stdout") is None
    assert store.read("b", "stdout") == "12345" and store.read("c", "stderr") == "123"


def test_a_stream_larger_than_the_store_is_not_kept() -> None:
    store = RunStore(max_bytes=4)
    store.keep("a", "stdout", "12345")
    assert store.read("a", "stdout") is None


def test_the_uri_names_the_run_and_the_stream() -> None:
    assert output_uri("abc", "stderr") == "sandbox://runs/abc/stderr"
