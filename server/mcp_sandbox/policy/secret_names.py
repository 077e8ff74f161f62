"""PURE: which variable names look like they hold a credential."""

from __future__ import annotations

import re

_SECRET_NAME = re.compile(
    r"TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|KEY|CREDENTIAL|_AUTH|^AWS_", re.IGNORECASE
)


def looks_secret_name(name: str) -> bool:
    """True for env var names such as ``GITHUB_TOKEN``, ``DB_PASSWORD``, ``AWS_REGION``."""
    return _SECRET_NAME.search(name) is not None
