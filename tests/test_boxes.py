"""Named rectangles: inclusive quadrant rectangles and exclusive pixel boxes."""

from __future__ import annotations

import numpy as np

from isonyc_dagster.geo.boxes import PixelBox, QuadRect


def test_quadrect_is_inclusive() -> None:
    r = QuadRect(-2, 3, 0, 4)
    assert (r.width, r.height, r.area) == (3, 2, 6)
    assert list(r.keys()) == [(-2, 3), (-1, 3), (0, 3), (-2, 4), (-1, 4), (0, 4)]
    assert (0, 4) in r and (1, 4) not in r and "0,4" not in r
    assert r == (-2, 3, 0, 4)  # still a tuple for stored JSON and older callers


def test_pixelbox_is_exclusive_and_slices_arrays() -> None:
    b = PixelBox(2, 1, 5, 3)
    assert (b.width, b.height) == (3, 2)
    a = np.arange(36).reshape(6, 6)
    assert a[b.slices()].shape == (2, 3)
    assert b.shifted(10, 20) == PixelBox(12, 21, 15, 23)
