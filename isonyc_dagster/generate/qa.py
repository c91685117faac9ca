"""Automatic per-quadrant QA of generated pixels: red-border remnants, blank or sky output, seams with the
quadrants of other steps. The Dagster checks report what this finds."""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field

import numpy as np

from isonyc_dagster.generate.plan import LatticePlan
from isonyc_dagster.generate.seams import Edge, qa_seam_score
from isonyc_dagster.generate.step import StepInputs
from isonyc_dagster.generate.template import red_mask

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

    def failures(self, seam_threshold: float) -> dict[str, list[float | int]]:
        """The failed checks (``seams``, ``no_red_border``, ``not_blank``) with the figures that failed them."""
        out: dict[str, list[float | int]] = {}
        if not self.seams_ok(seam_threshold):
            out["seams"] = [round(v, 3) for v in self.seams.values()]
        if not self.red_ok:
            out["no_red_border"] = [self.red_px]
        if not self.blank_ok:
            out["not_blank"] = [round(self.std, 2), round(self.sky_fraction, 4)]
        return out


#: The QA checks, in report order.
CHECKS = ("seams", "no_red_border", "not_blank")

_EDGES = (("left", -1, 0), ("right", 1, 0), ("top", 0, -1), ("bottom", 0, 1))


def red_pixels(rgb: np.ndarray) -> int:
    return int(np.count_nonzero(red_mask(rgb)))


def sky_fraction(rgb: np.ndarray) -> float:
    d = np.abs(rgb[..., :3].astype(np.int16) - np.array(SKY_RGB, np.int16)).max(axis=-1)
    return float(np.count_nonzero(d <= SKY_TOLERANCE)) / d.size


def assess(rgb: np.ndarray) -> QuadrantQA:
    return QuadrantQA(red_px=red_pixels(rgb), std=float(rgb[..., :3].std()), sky_fraction=sky_fraction(rgb))


def assess_quadrant(
    inputs: StepInputs, plan: LatticePlan, bounds: Container[tuple[int, int]], x: int, y: int
) -> QuadrantQA:
    """QA of generated quadrant (x, y), with a seam score for every edge it shares with a generated quadrant of
    another step inside ``bounds``, measured only where the render continues across the edge."""
    rgb = inputs.generated_rgb(x, y)
    if rgb is None:
        raise ValueError(f"quadrant ({x}, {y}) has no generated pixels")
    qa = assess(rgb)
    own = plan.step_for_quadrant(x, y).quadrants
    for name, dx, dy in _EDGES:
        nb = (x + dx, y + dy)
        if nb in own or nb not in bounds or inputs.generated_rgb(*nb) is None:
            continue
        first, second = (nb, (x, y)) if name in ("left", "top") else ((x, y), nb)
        a, b = inputs.generated_rgb(*first), inputs.generated_rgb(*second)
        assert a is not None and b is not None
        edge: Edge = "lr" if name in ("left", "right") else "tb"
        qa.seams[name] = float(
            qa_seam_score(
                a,
                b,
                edge,
                mask=inputs.edge_mask(first, second),
                render_a=inputs.render_rgb(*first),
                render_b=inputs.render_rgb(*second),
            )
        )
    return qa
