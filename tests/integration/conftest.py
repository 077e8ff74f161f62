from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under integration/ needs the real daemon."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.docker)
