"""Edge values of the float pixel check, including its bit-pattern fast path."""

from __future__ import annotations

import numpy as np
import pytest

from service.server.errors import InvalidInput
from service.server.validation import check_unit_range


@pytest.mark.parametrize("value", [0.0, -0.0, 1.0, 0.5, np.float32(1e-45)])
def test_values_in_unit_range_pass(value):
    check_unit_range(np.full((2, 784), value, np.float32), "pixels")


@pytest.mark.parametrize("value, kind", [(np.nextafter(np.float32(1), np.float32(2)), "out-of-range"),
                                         (-1e-30, "out-of-range"), (np.nan, "non-finite"),
                                         (np.inf, "non-finite"), (-np.inf, "non-finite")])
def test_values_outside_are_named_with_their_position(value, kind):
    pixels = np.zeros((3, 784), np.float32)
    pixels[2, 17] = value
    with pytest.raises(InvalidInput, match=f"{kind} value .* at image 2, pixel 17"):
        check_unit_range(pixels, "pixels")
