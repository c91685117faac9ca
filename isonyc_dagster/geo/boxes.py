"""Named rectangles: inclusive quadrant rectangles and exclusive pixel boxes.

Both used to be bare 4-int tuples that meant different things with the same shape. They are ``NamedTuple``s, so
they still unpack as ``x0, y0, x1, y1`` and compare equal to plain tuples (stored JSON and tests keep working).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple


class QuadRect(NamedTuple):
    """Quadrants ``x0..x1 × y0..y1``, both ends *inclusive* (a bounding box of quadrant keys)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0 + 1

    @property
    def height(self) -> int:
        return self.y1 - self.y0 + 1

    @property
    def area(self) -> int:
        return self.width * self.height

    def __contains__(self, key: object) -> bool:
        if not (isinstance(key, tuple) and len(key) == 2):
            return False
        x, y = key
        return self.x0 <= x <= self.x1 and self.y0 <= y <= self.y1

    def keys(self) -> Iterator[tuple[int, int]]:
        """Every (x, y) in the rectangle, row by row."""
        for y in range(self.y0, self.y1 + 1):
            for x in range(self.x0, self.x1 + 1):
                yield x, y


class PixelBox(NamedTuple):
    """Pixels ``x0 <= x < x1``, ``y0 <= y < y1``: the *exclusive* end, as numpy slices and PIL boxes use."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def shifted(self, dx: int, dy: int) -> PixelBox:
        return PixelBox(self.x0 + dx, self.y0 + dy, self.x1 + dx, self.y1 + dy)

    def slices(self) -> tuple[slice, slice]:
        """``(rows, cols)`` slices for indexing an (H, W, ...) array."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)
