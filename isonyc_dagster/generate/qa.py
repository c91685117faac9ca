"""Automatic per-quadrant QA of generated pixels (pure numpy; the Dagster checks call it)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Pure red (±8): leftovers of the template's infill border.
RED_TOLERANCE = 8
#: More red pixels than this in one quadrant fails the check.
MAX_RED_PX = 16
#: A quadrant whose pixels vary less than this (std over all channels) is blank.
BLANK_STD = 3.0
#: Sky blue of the original's 3D-Tiles renders (#87CEEB) leaking into a tile means an unloaded render.
SKY_RGB = (135, 206, 235)
SKY_TOLERANCE = 12
MAX_SKY_FRACTION = 0.02


@dataclass
class QuadrantQA:
    red_px: int
    std: float
    sky_fraction: float
    seams: dict[str, float] = field(default_factory=dict)  # edge name → score

    @property
    def red_ok(self) -> bool:
        return self.red_px <= MAX_RED_PX

    @property
    def blank_ok(self) -> bool:
        return self.std >= BLANK_STD and self.sky_fraction <= MAX_SKY_FRACTION

    def seams_ok(self, threshold: float) -> bool:
        return all(v <= threshold for v in self.seams.values())


def red_pixels(rgb: np.ndarray) -> int:
    c = rgb[..., :3].astype(np.int16)
    return int(
        np.count_nonzero(
            (c[..., 0] >= 255 - RED_TOLERANCE) & (c[..., 1] <= RED_TOLERANCE) & (c[..., 2] <= RED_TOLERANCE)
        )
    )


def sky_fraction(rgb: np.ndarray) -> float:
    d = np.abs(rgb[..., :3].astype(np.int16) - np.array(SKY_RGB, np.int16)).max(axis=-1)
    return float(np.count_nonzero(d <= SKY_TOLERANCE)) / d.size


def assess(rgb: np.ndarray) -> QuadrantQA:
    return QuadrantQA(red_px=red_pixels(rgb), std=float(rgb[..., :3].std()), sky_fraction=sky_fraction(rgb))
