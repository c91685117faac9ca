"""Typed style parameters of the pixel-art backend, and the palette stage that turns indices into colours.

``StyleParams`` holds every knob of the look with its range; the defaults are the backend's original look, and
with them every code path is the original one, so default output is bit-for-bit what it always was. Each field
carries its optimiser group and short key (``Windows.density`` for ``window_density``) and whether a style search
may move it (``search``): ``isonyc_dagster.stylesearch`` builds its converters from these, so there is one list.

Colour knobs (palette family, hue, saturation, brightness, outline strength, texture noise, dither) act in
``colourize`` on the palette indices ``stylize`` produced, as a function of the index and the *world* pixel only,
so they keep the backend seam-free.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from isonyc_dagster.backends.base import BackendConfigError
from isonyc_dagster.backends.pixelart import palette as pal
from isonyc_dagster.backends.pixelart._noise import BAYER4, hash_unit

__all__ = ["StyleParams", "colourize", "load_style", "style_field_info"]


def _f(default: Any, group: str, key: str, *, search: bool = True, **kw: Any) -> Any:
    return Field(default=default, json_schema_extra={"group": group, "key": key, "search": search}, **kw)


WindowPattern = Literal["grid", "bands", "checker"]
PaletteFamily = Literal["classic", "warm", "cool", "muted", "vivid"]
OutlineMode = Literal["depth", "none", "thick"]
RoofStyle = Literal["mixed", "pale", "dark", "tar"]
TreeSprites = Literal["round", "small", "large"]


class StyleParams(BaseModel):
    """Knobs of the look. All of them go into provenance; change them map-wide, never per step."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # --- the original knobs (names kept: settings files and provenance use them)
    seed: int = _f(
        0, "Texture", "seed", search=False, ge=0, le=2**31 - 1, description="map-wide texture seed"
    )
    floor_height_m: float = _f(3.6, "Buildings", "floor_height_m", ge=2.5, le=6.0)
    window_spacing_m: float = _f(3.0, "Windows", "spacing_m", ge=1.5, le=8.0)
    depth_edge_m: float = _f(
        1.5, "Outline", "depth_edge_m", ge=0.25, le=10.0, description="height jump drawn as an occlusion edge"
    )
    tree_density: float = _f(0.85, "Trees", "density", ge=0.0, le=1.0)
    roof_detail_density: float = _f(0.6, "Roofs", "detail_density", ge=0.0, le=1.0)
    lane_dash_m: float = _f(3.0, "Streets", "lane_dash_m", ge=1.0, le=10.0)
    # --- windows
    window_density: float = _f(
        1.0, "Windows", "density", ge=0.2, le=1.0, description="share of window cells drawn"
    )
    window_lit_fraction: float = _f(
        0.012, "Windows", "lit_fraction", ge=0.0, le=0.5, description="warm-lit windows"
    )
    window_pattern: WindowPattern = _f("grid", "Windows", "pattern")
    window_sills: bool = _f(True, "Windows", "sills")
    # --- colour
    palette: PaletteFamily = _f("classic", "Palette", "family")
    hue_shift_deg: float = _f(0.0, "Palette", "hue_shift_deg", ge=-40.0, le=40.0)
    saturation: float = _f(1.0, "Palette", "saturation", ge=0.3, le=1.6)
    brightness: float = _f(1.0, "Palette", "brightness", ge=0.6, le=1.4)
    # --- outlines
    outline_strength: float = _f(1.0, "Outline", "strength", ge=0.0, le=1.0)
    outline_mode: OutlineMode = _f("depth", "Outline", "mode")
    # --- roofs, trees, streets, buildings
    roof_style: RoofStyle = _f("mixed", "Roofs", "style")
    tree_sprites: TreeSprites = _f("round", "Trees", "sprites")
    lane_markings: bool = _f(True, "Streets", "lane_markings")
    awnings: bool = _f(True, "Buildings", "awnings")
    # --- texture
    texture_noise: float = _f(
        0.0, "Texture", "noise", ge=0.0, le=0.15, description="per-pixel brightness jitter"
    )
    dither: float = _f(0.0, "Texture", "dither", ge=0.0, le=1.0, description="ordered dither + posterize")

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def changed(self) -> dict[str, Any]:
        """Only the fields that differ from the default look (empty for the default)."""
        return self.model_dump(mode="json", exclude_defaults=True)

    def style_hash(self) -> str:
        """Short hash of the full parameter set (the default style has one too)."""
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:12]

    @property
    def colour_is_default(self) -> bool:
        return (
            self.palette == "classic"
            and self.hue_shift_deg == 0.0
            and self.saturation == 1.0
            and self.brightness == 1.0
            and self.outline_strength == 1.0
            and self.texture_noise == 0.0
            and self.dither == 0.0
        )

    @classmethod
    def parse(cls, data: dict[str, Any], source: str = "style") -> StyleParams:
        """Validated params from a flat dict; any problem is one ``BackendConfigError`` line naming the field."""
        if not isinstance(data, dict):
            raise BackendConfigError(
                f"{source}: expected an object of style parameters, got {type(data).__name__}"
            )
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown:
            raise BackendConfigError(
                f"{source}: unknown pixel-art style parameter(s) {unknown}; valid: {sorted(cls.model_fields)}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            msgs = "; ".join(
                f"{'.'.join(str(p) for p in x['loc'])}: {x['msg']} (got {x.get('input')!r})"
                for x in e.errors()
            )
            raise BackendConfigError(f"{source}: invalid style parameter(s): {msgs}") from None


def style_field_info() -> dict[str, dict[str, Any]]:
    """Per field: group, key, search flag, kind (float|int|bool|cat), bounds or choices, default."""
    out: dict[str, dict[str, Any]] = {}
    for name, f in StyleParams.model_fields.items():
        extra = f.json_schema_extra
        assert isinstance(extra, dict)
        info: dict[str, Any] = {"group": extra["group"], "key": extra["key"], "search": extra["search"]}
        info["default"] = f.default
        ann = f.annotation
        choices = getattr(ann, "__args__", None)
        if ann is bool:
            info["kind"] = "bool"
        elif choices:
            info["kind"] = "cat"
            info["choices"] = list(choices)
        else:
            info["kind"] = "int" if ann is int else "float"
            lo = hi = None
            for m in f.metadata:
                lo = getattr(m, "ge", lo)
                hi = getattr(m, "le", hi)
            assert lo is not None and hi is not None, f"StyleParams.{name} needs ge/le bounds"
            info["bounds"] = (float(lo), float(hi))
        out[name] = info
    return out


def load_style(path: str | Path) -> StyleParams:
    """StyleParams from a JSON file of flat keys (``{"window_density": 0.6, "palette": "warm"}``)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackendConfigError(
            f"style file {p} does not exist; write one with `isonyc style fit` or remove `style`"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BackendConfigError(f"style file {p} is not readable JSON: {e}") from None
    return StyleParams.parse(data, source=f"style file {p}")


# --- colour stage -------------------------------------------------------------------------------------

#: Palette families: a per-channel gain and a desaturation, applied before the hue/saturation/brightness knobs.
_FAMILY: dict[str, tuple[tuple[float, float, float], float]] = {
    "classic": ((1.0, 1.0, 1.0), 1.0),
    "warm": ((1.08, 1.0, 0.86), 1.0),
    "cool": ((0.88, 0.98, 1.1), 1.0),
    "muted": ((1.0, 1.0, 1.0), 0.55),
    "vivid": ((1.0, 1.0, 1.0), 1.45),
}
_OUTLINES = np.array([pal.idx("outline"), pal.idx("outline_soft"), pal.idx("tree_outline")])
_TABLES: dict[tuple[Any, ...], np.ndarray] = {}


def palette_table(params: StyleParams) -> np.ndarray:
    """(N, 3) float32 palette after family, outline strength, hue, saturation and brightness (cached)."""
    key = (
        params.palette,
        params.hue_shift_deg,
        params.saturation,
        params.brightness,
        params.outline_strength,
    )
    tab = _TABLES.get(key)
    if tab is not None:
        return tab
    gain, sat0 = _FAMILY[params.palette]
    rgb = pal.RGB.astype(np.float64) / 255.0 * np.array(gain)
    # Weak outlines fade toward the colour of the ground they sit on.
    base = pal.RGB[pal.idx("ground")].astype(np.float64) / 255.0
    rgb[_OUTLINES] = base + (rgb[_OUTLINES] - base) * params.outline_strength
    out = np.empty_like(rgb)
    for i, (r, g, b) in enumerate(np.clip(rgb, 0.0, 1.0)):
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        h = (h + params.hue_shift_deg / 360.0) % 1.0
        s = min(1.0, s * sat0 * params.saturation)
        out[i] = colorsys.hsv_to_rgb(h, s, min(1.0, v * params.brightness))
    tab = (out * 255.0).astype(np.float32)
    if len(_TABLES) > 256:
        _TABLES.clear()
    _TABLES[key] = tab
    return tab


def colourize(idx: np.ndarray, wx: np.ndarray, wy: np.ndarray, params: StyleParams) -> np.ndarray:
    """RGB uint8 of palette indices at world pixels (broadcast); the default style is exactly ``pal.RGB[idx]``."""
    if params.colour_is_default:
        return pal.RGB[idx]
    rgb = palette_table(params)[idx]
    if params.texture_noise > 0:
        n = hash_unit(wx, wy, salt=params.seed + 71) - np.float32(0.5)
        rgb = rgb * (1.0 + 2.0 * params.texture_noise * n)[..., None]
    if params.dither > 0:
        # Ordered dither then posterize to 16 levels: the retro banding of limited-colour pixel art.
        t = BAYER4[np.asarray(wy) & 3, np.asarray(wx) & 3] - np.float32(0.5)
        q = np.round((rgb + (32.0 * params.dither * t)[..., None]) / 17.0) * 17.0
        rgb = rgb + params.dither * (q - rgb)  # continuous in ``dither``: 0 is the plain palette
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
