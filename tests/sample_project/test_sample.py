"""One test passes, one fails on purpose: a run must report both, and exit 1."""

from sample import add, mean


def test_add_passes() -> None:
    assert add(2, 3) == 5


def test_mean_of_nothing_fails_on_purpose() -> None:
    assert mean([]) == 0
