"""Typed map and project configuration (pydantic), loadable from TOML or JSON."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from isonyc_dagster.errors import IsonycError
from isonyc_dagster.geo.model_inputs import (
    AreaRule,
    BackendProfile,
    PreprocessConfig,
    resolve_model_input_files,
)


class ConfigError(IsonycError, ValueError):
    """A configuration file or value is invalid; the message names the field and the fix."""


class LatLng(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    lat: float = Field(ge=-85.0, le=85.0, description="latitude in degrees (WGS84)")
    lng: float = Field(ge=-180.0, le=180.0, description="longitude in degrees (WGS84)")


class MapConfig(BaseModel):
    """The camera and grid of one map. Defaults are the production isometric.nyc values."""

    # NaN and Infinity pass every range check by comparing false; TOML and Python's JSON both can spell them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(default="nyc", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    seed: LatLng = LatLng(lat=40.7484, lng=-73.9857)
    azimuth_deg: float = Field(default=-15.0, ge=-360.0, le=360.0)
    elevation_deg: float = Field(default=-45.0, gt=-90.0, lt=0.0, description="negative = looking down")
    tile_px: int = Field(default=1024, ge=64, le=8192)
    quadrant_px: int = Field(default=512, ge=32, le=4096)
    view_height_m: float = Field(default=300.0, gt=0.0, le=100_000.0)
    projection: Literal["exact", "legacy-flat"] = Field(
        default="exact",
        description="lat/lng ↔ ground: exact (local transverse Mercator) or legacy-flat (isometric-nyc's "
        "111,111 m/degree formula, for maps continued from the original's tiles)",
    )

    @model_validator(mode="after")
    def _quadrant_is_half_tile(self) -> MapConfig:
        if self.tile_px != 2 * self.quadrant_px:
            raise ValueError(
                f"tile_px ({self.tile_px}) must be exactly 2 × quadrant_px ({self.quadrant_px}): "
                "a tile is a 2×2 block of quadrants"
            )
        return self

    @property
    def meters_per_pixel(self) -> float:
        return self.view_height_m / self.tile_px


class PhotorealConfig(BaseModel):
    """The photoreal render layer: a 3D tileset drawn by ``isonyc_dagster.photoreal`` through the whitebox camera."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    tileset: str = Field(
        default="google",
        description="'google' (Map Tiles API, key from $ISONYC_GOOGLE_MAPS_API_KEY) or the http(s) URL of a 3D Tiles "
        "tileset.json (without credentials)",
    )
    ground_height_m: float = Field(
        default=-31.3, ge=-500.0, le=9000.0, description="ellipsoidal height (m) of the whitebox's ground"
    )
    error_target_px: float = Field(default=8.0, gt=0.0, le=256.0, description="target screen-space error")
    timeout_s: float = Field(default=120.0, gt=0.0, le=3600.0, description="limit for one complete render")
    retries: int = Field(default=2, ge=0, le=10, description="retries of a failed render (fresh page each)")
    pages: int = Field(default=2, ge=1, le=16, description="browser pages rendering concurrently")
    cache_max_mb: int = Field(default=2048, ge=0, description="tile cache size in cache_dir; 0 = none")


class PublishConfig(BaseModel):
    """How the published map looks and where ``isonyc publish`` / the ``published_map`` asset deploy it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    clip: str = Field(
        default="bounds",
        description="clip polygon: 'bounds', 'none', a preset (manhattan, nyc) or a GeoJSON (Multi)Polygon path in "
        "lng/lat; pixels whose ground point lies outside are cleared",
    )
    background: str | None = Field(
        default=None,
        pattern=r"^#[0-9a-fA-F]{6}$",
        description="colour of clipped-away pixels as #rrggbb; unset = transparent",
    )
    placeholders: bool = Field(
        default=True, description="show the dimmed whitebox render where a quadrant has no generation yet"
    )
    placeholder_dim: float = Field(
        default=0.55, gt=0.0, le=1.0, description="placeholder brightness (1 = the render as is)"
    )
    to: str | None = Field(
        default=None, description="deploy destination: a directory, gs://bucket/prefix or s3://bucket/prefix"
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint URL (else $ISONYC_S3_ENDPOINT_URL or AWS's default)"
    )
    dagster_url: str | None = Field(
        default=None, description="Dagster UI URL for lineage links in the deployed viewer; unset = no links"
    )
    max_age_s: int = Field(
        default=60, ge=0, le=86_400, description="cache max-age of the .dzi, sidecar, index and manifest"
    )
    tile_max_age_s: int = Field(
        default=3_600, ge=0, le=31_536_000, description="cache max-age of DZI tiles (rewritten in place)"
    )


class TrainingConfig(BaseModel):
    """``[training]``: training pairs and the omni infill dataset (``training/``); the section enables the assets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dir: str = Field(default="data/training", description="where pair sets and dataset versions are written")
    seed: int = Field(default=0, ge=0, description="the dataset's seed: kinds, boxes and the split follow it")
    variants_per_pair: int = Field(
        default=5, ge=1, le=5, description="examples per pair (at most 5: one full infill per pair at 20 %)"
    )
    validation_fraction: float = Field(default=0.2, gt=0.0, lt=1.0, description="share of pairs held out")
    split_block: int = Field(
        default=4, ge=2, le=256, description="side in quadrants of the square areas the split assigns whole"
    )
    include_passed: bool = Field(
        default=False, description="also pair every generated quadrant whose QA checks all pass"
    )
    upload_to: str | None = Field(
        default=None, description="also upload each dataset version here (gs://, s3:// or a directory)"
    )
    preprocess: PreprocessConfig = Field(
        default=PreprocessConfig(),
        description="render preprocessing of the inputs' infill, as the model will get it (off by default)",
    )


class LiftConfig(BaseModel):
    """``[lift]``: 3D scenes of named regions (``lift/``); the section enables the ``scene_3d`` asset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    regions_file: str = Field(
        default="data/regions.json",
        description="the named-region registry (JSON; `isonyc region add|list|rm`)",
    )
    settings: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="LiftSettings overrides for scene_3d (stage, init_iters, max_resolution, ...); checked when the "
        "definitions load",
    )
    auto: bool = Field(
        default=True,
        description="the scene_scheduler sensor starts on: it lifts new regions and re-lifts a region whose "
        "quadrants' generation or render changed",
    )


class ProjectConfig(BaseModel):
    """Everything one deployment needs: the map, the area to build and where data lives."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    map: MapConfig = MapConfig()
    bounds: str = Field(
        default="demo",
        description="a preset name (demo, manhattan, nyc) or a path to a GeoJSON Polygon/MultiPolygon in lat/lng",
    )
    force_bounds: bool = Field(
        default=False,
        description="build bounds that do not overlap the map's city (farther than 50 km from map.seed)",
    )
    geodata: list[str] = Field(
        default_factory=list,
        description="vector files (GeoJSON, GeoPackage, Shapefile, OSM PBF/XML); empty = synthetic offline city",
    )
    store: str = Field(
        default="data/store", description="tile store: a local directory or gs://bucket/prefix"
    )
    cache_dir: str = Field(default="data/cache", description="local cache for prepared geodata and downloads")
    output_dir: str = Field(default="data/map", description="where the Deep Zoom map, PMTiles and viewer go")
    dagster_url: str = Field(
        default="http://127.0.0.1:3000", description="Dagster UI base URL for lineage links"
    )
    console_url: str = Field(
        default="http://127.0.0.1:8000",
        description="map console (`isonyc serve`) base URL: Dagster metadata previews link its /api/blob/<sha256>",
    )
    backend: str = Field(
        default="pixelart",
        description="generation backend: pixelart (offline), modal, oxen, gemini or vertex (settings from env vars)",
    )
    prompt: str = Field(
        default=(
            "Fill in the outlined section with the missing pixels corresponding to the <isometric nyc pixel art> "
            "style, removing the border and exactly following the shape/style/structure of the surrounding image."
        ),
        description="instruction sent to image models with every template",
    )
    publish: PublishConfig = PublishConfig()
    prompt_file: str | None = Field(
        default=None, description="read the prompt from this file (relative to the config)"
    )
    negative_prompt: str = Field(
        default="", description="what models should avoid (sent where a backend supports it)"
    )
    negative_prompt_file: str | None = Field(
        default=None, description="read the negative prompt from this file"
    )
    backends: dict[str, BackendProfile] = Field(
        default_factory=dict,
        description="per-backend prompts, model and render preprocessing ([backends.<name>])",
    )
    rules: list[AreaRule] = Field(
        default_factory=list,
        description="per-area backend/model/prompt overrides ([[rules]]); the smallest area wins",
    )
    reference_count: int = Field(
        default=2, ge=0, le=8, description="style references sent per step (K nearest)"
    )
    anchors_dir: str | None = Field(
        default=None, description="3-6 style images sent while no quadrant is marked reference (a fresh map)"
    )
    render_layer: Literal["whitebox", "photoreal", "both"] = Field(
        default="whitebox",
        description="what the templates' infill shows: the whitebox render or the photoreal layer; both = whitebox "
        "infill plus the photoreal window as a COLOR REFERENCE image (Gemini/Vertex); photoreal/both add that asset",
    )
    photoreal: PhotorealConfig = PhotorealConfig()
    on_stale: Literal["flag", "regenerate"] = Field(
        default="flag",
        description="steps whose context was regenerated: 'flag' (the scheduler counts them, a person decides) or "
        "'regenerate' (the scheduler regenerates them, in wave order); versions a person made are never overwritten",
    )
    scheduler_enabled: bool = Field(
        default=True,
        description="the wave_scheduler sensor is on in a fresh Dagster instance (dagster dev); false: off until "
        "turned on in the UI",
    )
    schedule_cron: str = Field(
        default="0 2 * * *",
        pattern=r"^(|@(hourly|daily|weekly|monthly)|\S+( \S+){4})$",
        description="cron of wave_backfill_schedule, a scheduled backfill over the bounds with the scheduler's "
        "planning (off until turned on in the UI); empty: no schedule",
    )
    derived_layers: list[Literal["night", "snow", "dark"]] = Field(
        default_factory=list,
        description="derived map layers to build offline from the generation (night, snow, dark); each is an asset "
        "layer_<name> and a pyramid <map>_<name>.dzi",
    )
    restyle: dict[str, str] = Field(
        default_factory=dict,
        description="model-restyled layers: name → prompt; each runs the lattice through the configured backend "
        "over the generated map into store layer restyle_<name>",
    )

    @field_validator("restyle")
    @classmethod
    def _restyle_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not name or not name.replace("_", "").isalnum() or not name.islower():
                raise ValueError(f"restyle name {name!r} must be lower-case letters, digits and '_'")
        return v

    style: str | None = Field(
        default=None,
        description="pixel-art style parameters: a JSON file of flat StyleParams keys (e.g. from `isonyc style fit`); "
        "unset = the default look; changing it makes the generation stale",
    )
    training: TrainingConfig | None = Field(
        default=None,
        description="training data (`[training]`): present = the training_pairs/omni_dataset assets",
    )
    lift: LiftConfig | None = Field(
        default=None, description="3D scenes of named regions (`[lift]`): present = the scene_3d asset"
    )

    @field_validator("bounds")
    @classmethod
    def _bounds_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("bounds must be a preset name (demo, manhattan, nyc) or a GeoJSON path")
        return v


def _format_validation_error(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        lines.append(f"field '{loc}': {e['msg']} (got {e.get('input')!r})")
    return f"invalid config {source}: " + "; ".join(lines)


def _read_mapping(path: Path) -> dict[str, Any]:
    """The table of a TOML/JSON config file; every way it can be unreadable is a ConfigError naming the file."""
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; give the path of a .toml or .json file")
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ConfigError(f"config file {path}: unsupported extension {path.suffix!r}; use .toml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {e.start}: {e.object[e.start : e.start + 1]!r}); "
            "save it as UTF-8"
        ) from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror or e}") from None
    try:
        data = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid {suffix[1:].upper()}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path}: expected a JSON object of settings, found {type(data).__name__}"
        )
    return data


def load_map_config(path: str | Path) -> MapConfig:
    """Load a MapConfig from a TOML/JSON file (either bare or under a [map] table)."""
    path = Path(path)
    data = _read_mapping(path)
    data = data.get("map", data)
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path}: 'map' must be a table of settings, found {type(data).__name__}"
        )
    try:
        return MapConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(str(path), e)) from None


def _resolve_source(source: str, base: Path) -> str:
    """A geodata entry relative to the config file: ``socrata`` stays, ``kind:path`` keeps its kind prefix."""
    if source.strip().lower() == "socrata":
        return source
    kind, sep, rest = source.partition(":")
    if sep and kind.isalpha() and len(kind) > 1:  # "parks:x.geojson" (a one-letter prefix is a drive letter)
        return f"{kind}:{rest if Path(rest).is_absolute() else base / rest}"
    return source if Path(source).is_absolute() else str(base / source)


def load_project_config(path: str | Path | None) -> ProjectConfig:
    """Load a ProjectConfig from TOML/JSON; ``None`` gives the embedded offline defaults."""
    if path is None:
        return ProjectConfig()
    path = Path(path)
    data = _read_mapping(path)
    try:
        cfg = ProjectConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(str(path), e)) from None
    # Relative paths in a config file are relative to that file, not to the working directory.
    base = path.parent
    updates: dict[str, Any] = {}
    if cfg.bounds not in ("demo", "manhattan", "nyc") and not Path(cfg.bounds).is_absolute():
        updates["bounds"] = str(base / cfg.bounds)
    updates["geodata"] = [_resolve_source(g, base) for g in cfg.geodata]
    if "://" not in cfg.store and not Path(cfg.store).is_absolute():
        updates["store"] = str(base / cfg.store)
    for name in ("cache_dir", "output_dir"):
        if not Path(getattr(cfg, name)).is_absolute():
            updates[name] = str(base / getattr(cfg, name))
    if cfg.style is not None and not Path(cfg.style).is_absolute():
        updates["style"] = str(base / cfg.style)
    if cfg.training is not None and not Path(cfg.training.dir).is_absolute():
        updates["training"] = cfg.training.model_copy(update={"dir": str(base / cfg.training.dir)})
    if cfg.lift is not None and not Path(cfg.lift.regions_file).is_absolute():
        updates["lift"] = cfg.lift.model_copy(update={"regions_file": str(base / cfg.lift.regions_file)})
    pub: dict[str, Any] = {}
    if (
        cfg.publish.clip not in ("bounds", "none", "demo", "manhattan", "nyc")
        and not Path(cfg.publish.clip).is_absolute()
    ):
        pub["clip"] = str(base / cfg.publish.clip)
    if cfg.publish.to and "://" not in cfg.publish.to and not Path(cfg.publish.to).is_absolute():
        pub["to"] = str(base / cfg.publish.to)
    if pub:
        updates["publish"] = cfg.publish.model_copy(update=pub)
    updates |= resolve_model_input_files(cfg, data, base)
    return cfg.model_copy(update=updates)
