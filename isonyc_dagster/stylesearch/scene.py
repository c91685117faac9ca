"""The fixed scene the style search renders: one window of a real whitebox render with its buffers.

Every raster of the search is the pixel-art backend drawing the same ``size``² crop, so rasters differ only by
style. The window carries ``MARGIN_PX`` of extra render around the crop (the backend's local operators look that
far), and the backend draws exactly as it does in generation (``generate_array``), so what the search finds is
what ``style = "style.json"`` gives the map.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from isonyc_dagster.backends.base import GenerationRequest
from isonyc_dagster.backends.pixelart.backend import PixelArtBackend
from isonyc_dagster.backends.pixelart.params import StyleParams
from isonyc_dagster.backends.pixelart.style import MARGIN_PX
from isonyc_dagster.fileio import atomic_write
from isonyc_dagster.geo.config import MapConfig
from isonyc_dagster.images import png_bytes
from isonyc_dagster.stylesearch.space import StyleSearchError

if TYPE_CHECKING:
    from isonyc_dagster.render import RenderResult

__all__ = ["MARGIN_PX", "Scene"]


@dataclass
class Scene:
    """A ``size``² crop (plus margin) of a whitebox render and its buffers, at world pixel ``origin``."""

    rgb: np.ndarray  # (S + 2M, S + 2M, 3) whitebox colours
    surface: np.ndarray
    building: np.ndarray
    height: np.ndarray
    origin: tuple[int, int]  # world pixel of the window's top-left (margin included)
    size: int
    map_config: MapConfig = field(default_factory=MapConfig)

    def __post_init__(self) -> None:
        side = self.size + 2 * MARGIN_PX
        for name in ("rgb", "surface", "building", "height"):
            shape = getattr(self, name).shape[:2]
            if shape != (side, side):
                raise StyleSearchError(f"scene {name} is {shape}, expected {side}×{side} (size + 2 × margin)")
        self._backend = PixelArtBackend(self.map_config, harmonize=False, png_compress_level=1)
        m = MARGIN_PX
        self._request = GenerationRequest(
            template_png=png_bytes(self.rgb, compress_level=1),
            infill_box=(m, m, m + self.size, m + self.size),
            origin_px=self.origin,
            aux={"surface": self.surface, "building": self.building, "height": self.height},
        )

    @classmethod
    def from_render(cls, res: RenderResult, size: int, map_config: MapConfig | None = None) -> Scene:
        """The centred ``size``² crop of a render window (which must be at least ``size + 2 × margin``)."""
        h, w = res.surface.shape
        side = _check_side(h, w, size)
        return cls._crop(res, (w - side) // 2, (h - side) // 2, size, map_config)

    @classmethod
    def _crop(cls, res: RenderResult, x: int, y: int, size: int, map_config: MapConfig | None) -> Scene:
        """The scene of ``res``'s window of side ``size`` + margins whose top-left pixel is (x, y)."""
        side = size + 2 * MARGIN_PX
        win = (slice(y, y + side), slice(x, x + side))
        return cls(
            rgb=np.ascontiguousarray(res.rgb[win]),
            surface=np.ascontiguousarray(res.surface[win]),
            building=np.ascontiguousarray(res.building[win]),
            height=np.ascontiguousarray(res.height[win]),
            origin=(res.origin_px[0] + x, res.origin_px[1] + y),
            size=size,
            map_config=map_config or MapConfig(),
        )

    @classmethod
    def most_varied(
        cls, res: RenderResult, size: int, map_config: MapConfig | None = None, step: int = 32
    ) -> Scene:
        """The ``size``² crop (plus margin) of a render whose surface classes are the most even mix.

        A crop of one tower's wall teaches the search nothing about streets, trees or water: the score is the
        entropy of the crop's class shares plus a bonus for the number of distinct buildings.
        """
        h, w = res.surface.shape
        side = _check_side(h, w, size)
        best: tuple[float, int, int] = (-1.0, 0, 0)
        m = MARGIN_PX
        for y in range(0, h - side + 1, step):
            for x in range(0, w - side + 1, step):
                s = res.surface[y + m : y + m + size, x + m : x + m + size]
                p = np.bincount(s.ravel(), minlength=8).astype(np.float64) / s.size
                ent = float(-(p[p > 0] * np.log(p[p > 0])).sum())
                nb = len(np.unique(res.building[y + m : y + m + size, x + m : x + m + size]))
                # Every class with a real share (≥ 2 %) shows its knobs (lane marks need roads, trees parks).
                score = ent + 0.3 * int(np.count_nonzero(p >= 0.02)) + 0.03 * min(nb, 12)
                if score > best[0]:
                    best = (score, x, y)
        _, x, y = best
        return cls._crop(res, x, y, size, map_config)

    @classmethod
    def load_or_build(
        cls,
        path: str | Path,
        render_window: Callable[[int, int, int, int], RenderResult],
        keys: Sequence[tuple[int, int]],
        *,
        size: int,
        map_config: MapConfig,
        quadrant: tuple[int, int] | None = None,
    ) -> Scene:
        """The scene saved at ``path``, else the most varied ``size``² crop of a 2×2-quadrant render (at least
        ``size`` + margins) centred on ``quadrant`` (default: the middle one of ``keys``), saved there."""
        path = Path(path)
        if path.exists():
            return cls.load(path)
        if not 32 <= size <= 1024:
            raise StyleSearchError(f"scene size must be within 32..1024 px, got {size}")
        if quadrant is None:
            if not keys:
                raise StyleSearchError("the project's bounds hold no quadrant to take the style scene from")
            quadrant = sorted(keys)[len(keys) // 2]
        qx, qy = quadrant
        q = map_config.quadrant_px
        side = max(2 * q, size + 2 * MARGIN_PX)
        res = render_window(qx * q + q // 2 - side // 2, qy * q + q // 2 - side // 2, side, side)
        scene = cls.most_varied(res, size, map_config)
        path.parent.mkdir(parents=True, exist_ok=True)
        scene.save(path)
        return scene

    def render(self, params: StyleParams) -> np.ndarray:
        """(size, size, 3) uint8: the crop as the pixel-art backend draws it with ``params``."""
        be = copy.copy(
            self._backend
        )  # the backend is stateless apart from its params: a shallow copy is enough
        be.params = params
        out, _ = be.generate_array(self._request)
        m = MARGIN_PX
        return out[m : m + self.size, m : m + self.size]

    @property
    def whitebox(self) -> np.ndarray:
        m = MARGIN_PX
        return self.rgb[m : m + self.size, m : m + self.size]

    def save(self, path: str | Path) -> None:
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            rgb=self.rgb,
            surface=self.surface,
            building=self.building,
            height=self.height,
            origin=np.array(self.origin),
            size=np.array(self.size),
            map_config=np.array(self.map_config.model_dump_json()),
        )
        atomic_write(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> Scene:
        try:
            with np.load(path) as z:
                kw: dict[str, Any] = {k: z[k] for k in ("rgb", "surface", "building", "height")}
                return cls(
                    **kw,
                    origin=(int(z["origin"][0]), int(z["origin"][1])),
                    size=int(z["size"]),
                    map_config=MapConfig.model_validate_json(str(z["map_config"])),
                )
        except (OSError, KeyError, ValueError) as e:
            raise StyleSearchError(
                f"scene file {path} is unreadable ({e}); delete it to render it again"
            ) from None


def _check_side(h: int, w: int, size: int) -> int:
    """The side of a scene window (``size`` plus margins); refused when the render window is smaller."""
    side = size + 2 * MARGIN_PX
    if h < side or w < side:
        raise StyleSearchError(f"render window {w}×{h} is smaller than the scene window {side}×{side}")
    return side
