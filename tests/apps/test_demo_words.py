"""How `orbitfl demo --compare` words the accuracy difference: a negative drop is "higher"."""

from __future__ import annotations

import pytest

from orbitfl.apps.demo import _points


@pytest.mark.parametrize(
    ("drop", "said"),
    [
        (0.5, "0.50 points lower"),
        (-0.5, "0.50 points higher"),
        (-0.004, "the same (0.00 points)"),
        (1.234, "1.23 points lower"),
    ],
)
def test_the_difference_is_said_the_way_it_went(drop: float, said: str) -> None:
    assert _points(drop) == said
