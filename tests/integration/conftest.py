from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox_client import labelled_volumes


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under integration/ needs the real daemon."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="module", autouse=True)
def _no_volume_left() -> Iterator[None]:
    """No module leaves a workspace volume (a copy's tmpfs) behind."""
    yield
    assert labelled_volumes() == [], "a workspace volume was left behind"
