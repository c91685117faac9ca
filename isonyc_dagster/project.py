"""One deployment's objects, built from a ``ProjectConfig``: geometry, bounds, plan, store, city, renderer.

Shared by the CLI and the Dagster resources so both run exactly the same code path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from collections import OrderedDict
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shapely import affinity
from shapely.geometry import Polygon

from isonyc_dagster import layers
from isonyc_dagster.fileio import atomic_write
from isonyc_dagster.geo.bounds import QuadrantSet, load_bounds, quadrants_for_bounds
from isonyc_dagster.geo.boxes import QuadRect
from isonyc_dagster.geo.config import ProjectConfig, load_project_config
from isonyc_dagster.geo.geometry import MapGeometry

if TYPE_CHECKING:
    from isonyc_dagster.backends.base import ImageBackend
    from isonyc_dagster.generate.pilot import PilotPatch
    from isonyc_dagster.generate.plan import LatticePlan
    from isonyc_dagster.generate.references import ReferenceSelector
    from isonyc_dagster.generate.rules import StepRules
    from isonyc_dagster.generate.step import StepInputs
    from isonyc_dagster.generate.waves import LatticeOrder
    from isonyc_dagster.geodata.model import City
    from isonyc_dagster.photoreal import PhotorealRenderer
    from isonyc_dagster.publish.clip import PublishSpec
    from isonyc_dagster.render import Renderer, RenderResult
    from isonyc_dagster.store.base import TileStore, TileVersion

log = logging.getLogger(__name__)

#: Ground metres to load beyond the bounds toward the camera: a building this tall standing that far in front of the
#: bounds still reaches into them on screen (45° camera: ground offset = height). One WTC's spire is 541 m.
TALL_BUILDING_MARGIN_M = 600.0
#: Ground metres to load beyond the bounds on the other sides (walls, parks and roads at the edges).
EDGE_MARGIN_M = 80.0

CONFIG_ENV = "ISONYC_CONFIG"

#: Bounds whose ground window is at most this large keep one prepared city (a few km²: the demo, a borough's
#: neighbourhood); larger ones (Manhattan, all of NYC) load the city region by region while rendering.
WHOLE_CITY_MAX_M2 = 100e6
#: Side of a region, in quadrants (2.4 km × 3.4 km of ground, plus margins).
REGION_QUADRANTS = 16
#: Regions (city + renderer) kept in memory per process.
REGIONS_IN_MEMORY = 4


class Project:
    """Lazily built objects of one deployment."""

    def __init__(self, config: ProjectConfig) -> None:
        self.config = config

    @classmethod
    def from_env(cls) -> Project:
        """The project of ``$ISONYC_CONFIG`` (a TOML/JSON file), or the embedded offline default."""
        return cls(load_project_config(os.environ.get(CONFIG_ENV) or None))

    @cached_property
    def geometry(self) -> MapGeometry:
        return MapGeometry(self.config.map)

    @cached_property
    def bounds_lnglat(self):
        return load_bounds(self.config.bounds)

    @cached_property
    def quadrants(self) -> QuadrantSet:
        return quadrants_for_bounds(self.geometry, self.bounds_lnglat, force=self.config.force_bounds)

    @cached_property
    def plan(self) -> LatticePlan:
        from isonyc_dagster.generate.plan import LatticePlan

        return LatticePlan.from_quadrants(self.quadrants.keys)

    @cached_property
    def order(self) -> LatticeOrder:
        """The order of the quadrant and step partition keys (a key range is a compact region)."""
        from isonyc_dagster.generate.waves import LatticeOrder

        return LatticeOrder(self.plan, self.quadrants.keys)

    @cached_property
    def publish_spec(self) -> PublishSpec:
        """How the published map is drawn: the ``[publish]`` clip and placeholders."""
        from isonyc_dagster.publish.clip import publish_spec

        return publish_spec(self.geometry, self.config.publish, self.bounds_lnglat)

    @cached_property
    def store(self) -> TileStore:
        from isonyc_dagster.store import open_store

        q = self.geometry.q  # a map of other than 512 px quadrants stores tiles of its own size
        return open_store(self.config.store, tile_size=(q, q))

    # --- geodata ---------------------------------------------------------------------------------
    def city_window(self) -> Polygon:
        """Ground polygon (metres) of everything that can appear in the bounds' quadrants."""
        return ground_window(self.geometry, self.quadrants.bbox)

    def _city_key(self) -> str:
        parts = {
            "map": self.config.map.model_dump(mode="json"),
            "bounds": self.config.bounds,
            "sources": [(s, _mtime(s)) for s in self.config.geodata],
            "bounds_mtime": _mtime(self.config.bounds),
            "format": 1,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def geodata_key(self) -> str:
        """Identifies the geodata configuration (map, bounds, sources and their modification times)."""
        return self._city_key()

    @property
    def city_cache_path(self) -> Path:
        return Path(self.config.cache_dir) / f"city-{self._city_key()}.pkl"

    @cached_property
    def whole_city(self) -> bool:
        """Small bounds keep one prepared city for everything (cached on disk); large ones load per region."""
        return self.city_window().area <= WHOLE_CITY_MAX_M2

    def region_of(self, x: int, y: int) -> tuple[int, int]:
        """The fixed region (REGION_QUADRANTS² quadrants, aligned to the grid) holding quadrant (x, y)."""
        return x // REGION_QUADRANTS, y // REGION_QUADRANTS

    def _load(self, window: Polygon) -> City:
        from isonyc_dagster.geodata.load import load_city

        return load_city(
            self.geometry,
            self.config.geodata,
            window=window,
            cache_dir=Path(self.config.cache_dir) / "socrata",
        )

    def city(self, *, rebuild: bool = False) -> City:
        """The prepared city: the whole bounds' (cached on disk) for small bounds, else the first region's."""
        if not self.whole_city:
            return self.region_city(*self.region_of(*self.quadrants.keys[0]))
        cached = self.__dict__.get("_city")
        if cached is not None and not rebuild:
            return cached
        path = self.city_cache_path
        city = None
        if path.exists() and not rebuild:
            try:
                city = pickle.loads(path.read_bytes())
            except Exception as e:  # a stale or truncated cache is rebuilt, never trusted
                log.warning("ignoring unreadable geodata cache %s: %s", path, e)
        if city is None:
            city = self._load(self.city_window())
            atomic_write(path, pickle.dumps(city, protocol=pickle.HIGHEST_PROTOCOL))
        self.__dict__["_city"] = city
        self.__dict__.pop("renderer", None)
        return city

    def region_city(self, rx: int, ry: int) -> City:
        """The city of one region (with the margins of ``ground_window``), loaded on demand."""
        return self._region(rx, ry)[0]

    def _region(self, rx: int, ry: int) -> tuple[City, Renderer]:
        from isonyc_dagster.render import Renderer

        regions: OrderedDict[tuple[int, int], tuple[City, Renderer]] = self.__dict__.setdefault(
            "_regions", OrderedDict()
        )
        if (rx, ry) in regions:
            regions.move_to_end((rx, ry))
            return regions[(rx, ry)]
        r = REGION_QUADRANTS
        city = self._load(
            ground_window(self.geometry, QuadRect(rx * r, ry * r, rx * r + r - 1, ry * r + r - 1))
        )
        regions[(rx, ry)] = (city, Renderer(city, self.geometry))
        while len(regions) > REGIONS_IN_MEMORY:
            regions.popitem(last=False)
        return regions[(rx, ry)]

    def renderer_at(self, x: int, y: int) -> Renderer:
        """A renderer that draws quadrant (x, y) exactly.

        Every renderer draws a pixel the same way as long as its city holds every building that reaches that
        pixel (``ground_window``'s margins guarantee it), and building ids and the draw order depend on the
        building alone, so renders from different regions agree pixel for pixel.
        """
        if self.whole_city:
            return self.renderer
        return self._region(*self.region_of(x, y))[1]

    def step_inputs(self, cache_quadrants: int | None = None) -> StepInputs:
        """Fresh per-run inputs of generation steps: stored renders inside the bounds, padding drawn on the fly;
        ``cache_quadrants`` recent quadrants kept decoded (default ``generate.step.CACHE_QUADRANTS``)."""
        from isonyc_dagster.generate.step import StepInputs

        # Photoreal pixels come only from the stored layer: a step over a quadrant without it fails fast. "both" keeps
        # the whitebox infill and sends the photoreal window as a colour reference.
        mode = self.config.render_layer
        return StepInputs(
            self.store,
            stored=self.quadrants,
            render=self.render_quadrant,
            rgb_layer=layers.PHOTOREAL if mode == "photoreal" else layers.RENDER,
            color_layer=layers.PHOTOREAL if mode == "both" else None,
            cache_quadrants=cache_quadrants,
        )

    @cached_property
    def step_rules(self) -> StepRules:
        """Per-step backend, model, prompts and preprocessing (``[[rules]]``, ``[backends.*]``, project prompt)."""
        from isonyc_dagster.generate.rules import StepRules

        return StepRules(self.config, self.geometry)

    def reference_selector(self) -> ReferenceSelector:
        """Fresh per run: style references from the store's ``reference`` quadrants, else ``anchors_dir``."""
        from isonyc_dagster.generate.references import ReferenceSelector

        return ReferenceSelector(
            self.store, count=self.config.reference_count, anchors_dir=self.config.anchors_dir
        )

    def render_quadrant(self, x: int, y: int) -> RenderResult:
        """Render quadrant (x, y) (identical whichever region's renderer draws it)."""
        return self.renderer_at(x, y).render_quadrant(x, y)

    def store_render(self, x: int, y: int) -> tuple[TileVersion, RenderResult]:
        """Render quadrant (x, y) and store it: RGB as the ``render`` tile, the buffers as a compact aux blob."""
        from isonyc_dagster.geo.surfaces import PALETTE_VERSION
        from isonyc_dagster.render import png_bytes
        from isonyc_dagster.render.result import AUX_BLOB_EXT

        renderer = self.renderer_at(x, y)
        res = renderer.render_quadrant(x, y)
        aux_sha = self.store.put_blob(res.to_blob(), ext=AUX_BLOB_EXT)
        provenance = {
            "renderer": "whitebox",
            "palette_version": PALETTE_VERSION,
            "aux_sha256": aux_sha,
            "geodata": self.geodata_key,
            "synthetic": renderer.city.synthetic,
            "buildings_drawn": int(res.stats.get("buildings_drawn", 0)),
        }
        return self.store.put_tile(layers.RENDER, x, y, png_bytes(res.rgb), provenance), res

    def attribution(self) -> str | None:
        """The published map's credit line: the geodata's, plus the 3D tiles' when the infill was photoreal."""
        parts = [self.city().attribution]
        if self.config.render_layer != "whitebox":
            from isonyc_dagster.photoreal import source_attribution

            parts.append(source_attribution(self.config.photoreal.tileset))
        return " ".join(p for p in parts if p) or None

    def photoreal_renderer(self, api_key: str | None = None, tileset: str | None = None) -> PhotorealRenderer:
        """A photoreal renderer for this map (close it when done); ``api_key`` only for the 'google' tileset."""
        from isonyc_dagster.photoreal import PhotorealRenderer, RenderSettings, TileCache, resolve_source

        pc = self.config.photoreal
        source = resolve_source(tileset or pc.tileset, api_key=api_key)
        settings = RenderSettings(
            ground_height_m=pc.ground_height_m,
            error_target=pc.error_target_px,
            timeout_s=pc.timeout_s,
            retries=pc.retries,
            pages=pc.pages,
        )
        cache_path = Path(self.config.cache_dir) / "photoreal" / "tiles.sqlite"
        cache = TileCache(cache_path, pc.cache_max_mb << 20) if pc.cache_max_mb > 0 else None
        return PhotorealRenderer(self.geometry, source, settings, cache=cache)

    def store_photoreal(
        self, renderer: PhotorealRenderer, keys: Sequence[tuple[int, int]]
    ) -> list[tuple[TileVersion, dict]]:
        """Render quadrants photoreal and store each as a ``photoreal`` tile. Only complete renders get here
        (an incomplete one raises before anything is stored)."""
        from isonyc_dagster.images import png_bytes

        out = []
        for (x, y), res in zip(keys, renderer.render_quadrants(list(keys)), strict=True):
            prov = {"renderer": "photoreal", **res.provenance}
            out.append((self.store.put_tile(layers.PHOTOREAL, x, y, png_bytes(res.rgb), prov), prov))
        return out

    @cached_property
    def renderer(self) -> Renderer:
        from isonyc_dagster.render import Renderer

        return Renderer(self.city(), self.geometry)


def ground_window(geometry: MapGeometry, bbox: QuadRect | tuple[int, int, int, int]) -> Polygon:
    """Ground rectangle (metres) holding every feature that can appear in the inclusive quadrant bbox.

    It reaches ``TALL_BUILDING_MARGIN_M`` toward the camera (down the screen) and ``EDGE_MARGIN_M`` elsewhere.
    """
    x0, y0, x1, y1 = bbox
    g = geometry
    margin = EDGE_MARGIN_M * g.ground_depth_px_per_m
    down = TALL_BUILDING_MARGIN_M * g.ground_depth_px_per_m
    px0, py0 = x0 * g.q - margin, y0 * g.q - margin
    px1, py1 = (x1 + 1) * g.q + margin, (y1 + 1) * g.q + down
    rect = Polygon([(px0, py0), (px1, py0), (px1, py1), (px0, py1)])
    return affinity.affine_transform(rect, g.pixel_to_ground_affine)


def _mtime(p: str) -> float | None:
    try:
        return os.stat(p).st_mtime
    except OSError:
        return None


def run_project_pilot(
    config: ProjectConfig,
    backend: ImageBackend,
    patch: PilotPatch,
    out_dir: str | Path,
    *,
    geodata: Sequence[str] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Render the patch (and its left/top padding) from the project's geodata and run the pilot on it."""
    from isonyc_dagster.generate.pilot import run_pilot
    from isonyc_dagster.generate.rules import StepRules
    from isonyc_dagster.geodata.load import load_city
    from isonyc_dagster.render import Renderer

    geometry = MapGeometry(config.map)
    inputs = StepRules(config, geometry).defaults(backend.name).with_backend_default(backend)
    sources = list(geodata) if geodata is not None else config.geodata
    bbox = QuadRect(patch.x0 - 1, patch.y0 - 1, patch.x0 + patch.w - 1, patch.y0 + patch.h - 1)
    renderer = Renderer(load_city(geometry, sources, window=ground_window(geometry, bbox)), geometry)
    renders: dict[tuple[int, int], RenderResult] = {}

    def render(x: int, y: int) -> RenderResult:
        if (x, y) not in renders:
            renders[(x, y)] = renderer.render_quadrant(x, y)
        return renders[(x, y)]

    return run_pilot(
        patch.x0,
        patch.y0,
        patch.w,
        patch.h,
        patch.k,
        patch.overlap_px,
        out_dir,
        backend,
        lambda x, y: render(x, y).rgb,
        render_aux=lambda x, y: render(x, y).aux(),
        prompt=inputs.prompt or "",
        negative_prompt=inputs.negative_prompt,
        preprocess=inputs.preprocess,
        # Style references come from the project's store (marked quadrants) or its anchors_dir.
        references=Project(config).reference_selector() if backend.uses_style_refs else None,
        overwrite=overwrite,
    )
