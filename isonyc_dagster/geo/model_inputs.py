"""Config of what is sent to image models besides the template: prompts, per-backend profiles, per-area rules,
render preprocessing, and style-reference settings (pydantic, part of ``ProjectConfig``).

Prompt files (``prompt_file``, ``negative_prompt_file``) are read when the config file is loaded
(:func:`resolve_model_input_files`): the loaded config carries the text, so every process (CLI, Dagster run
workers) sends exactly what was read, and the prompt's hash in provenance names it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: Image files an anchors directory may hold (read in name order).
ANCHOR_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
#: Backend settings that are credentials: only ever from the environment (``defs.resources.BACKEND_ENV``).
SECRET_SETTINGS = frozenset({"api_key", "auth_secret", "token_id", "token_secret", "token", "token_provider"})
#: At most this many anchors (the original's seed-002 ``--anchors_dir`` held 3–6 style images).
MAX_ANCHORS = 6


class PreprocessConfig(BaseModel):
    """Render preprocessing before a template goes to a model (anchor §4.6): each strength 0 (off) … 1.

    Applied in the original's order desaturation → noise → gamma, then the palette hint, to the render pixels of
    the infill only. Off (all zero, no palette) by default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    desaturation: float = Field(default=0.0, ge=0.0, le=1.0, description="blend toward BT.601 luma")
    noise: float = Field(default=0.0, ge=0.0, le=1.0, description="multiplicative Gaussian, σ = 0.15·noise")
    gamma_shift: float = Field(default=0.0, ge=0.0, le=1.0, description="rgb^(1+0.8·g), darkened above 0.5")
    noise_seed: int = Field(default=0, ge=0, description="noise is a function of (world pixel, seed)")
    palette: list[str] = Field(
        default_factory=list, description="palette hint: #RRGGBB colours the render is pulled toward"
    )
    palette_strength: float = Field(
        default=1.0, ge=0.0, le=1.0, description="0 = off, 1 = snap to the palette"
    )

    @field_validator("palette")
    @classmethod
    def _hex_colours(cls, v: list[str]) -> list[str]:
        for c in v:
            s = c.strip().lstrip("#")
            if len(s) != 6 or any(ch not in "0123456789abcdefABCDEF" for ch in s):
                raise ValueError(f"palette colour {c!r} is not #RRGGBB")
        return [f"#{c.strip().lstrip('#').upper()}" for c in v]

    @property
    def active(self) -> bool:
        """Whether this changes any pixel."""
        return bool(
            self.desaturation or self.noise or self.gamma_shift or (self.palette and self.palette_strength)
        )


class _PromptFields(BaseModel):
    """Prompt and negative prompt, each given inline or as a file relative to the config file (not both)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str | None = None
    prompt_file: str | None = None
    negative_prompt: str | None = None
    negative_prompt_file: str | None = None

    @model_validator(mode="after")
    def _inline_or_file(self) -> _PromptFields:
        for name in ("prompt", "negative_prompt"):
            if getattr(self, name) is not None and getattr(self, f"{name}_file") is not None:
                raise ValueError(f"give {name} or {name}_file, not both")
        return self


class PostprocessConfig(BaseModel):
    """Pixel-art post-processing of model outputs (``generate.postprocess``): off by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(
        default=False, description="post-process this backend's outputs before they are stored"
    )
    quantize: bool = Field(
        default=True, description="snap colours to the map's palette (k-means over accepted generations)"
    )
    palette_size: int = Field(default=32, ge=2, le=256, description="colours in a learned palette")
    dehalo: bool = Field(default=True, description="replace anti-aliasing blend pixels by a side's colour")
    pixel_size: int = Field(default=1, ge=1, le=16, description="re-grid art pixels of this size (1 = off)")


class BackendProfile(_PromptFields):
    """Per-backend defaults (``[backends.<name>]``): prompts, model and render preprocessing."""

    model: str | None = Field(default=None, min_length=1, description="model id passed to the backend")
    preprocess: PreprocessConfig = PreprocessConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="non-secret backend settings (endpoint url, project, timeouts); secrets come from env vars",
    )

    @field_validator("settings")
    @classmethod
    def _no_secrets(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(k for k in v if k in SECRET_SETTINGS)
        if bad:
            raise ValueError(
                f"{bad} are secrets: set them as environment variables, never in the config file"
            )
        return v


class AreaRule(_PromptFields):
    """``[[rules]]``: inside ``area`` (GeoJSON polygon path) or ``quadrants`` (inclusive x0, y0, x1, y1), use
    this backend, model and prompts. The smallest area holding a step wins; ties go to the first listed."""

    name: str | None = Field(default=None, min_length=1)
    area: str | None = Field(
        default=None, min_length=1, description="GeoJSON Polygon/MultiPolygon in lat/lng"
    )
    quadrants: tuple[int, int, int, int] | None = Field(default=None, description="x0, y0, x1, y1 inclusive")
    backend: str | None = Field(default=None, min_length=1)
    model: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_area(self) -> AreaRule:
        if (self.area is None) == (self.quadrants is None):
            raise ValueError(
                "a rule needs exactly one of area (a GeoJSON path) or quadrants = [x0, y0, x1, y1]"
            )
        if self.quadrants is not None:
            x0, y0, x1, y1 = self.quadrants
            if x1 < x0 or y1 < y0:
                raise ValueError(
                    f"rule quadrants {list(self.quadrants)} must be [x0, y0, x1, y1] with x0<=x1, y0<=y1"
                )
        if not any(
            getattr(self, f) is not None
            for f in ("backend", "model", "prompt", "prompt_file", "negative_prompt", "negative_prompt_file")
        ):
            raise ValueError("a rule must set at least one of backend, model, prompt, negative_prompt")
        return self


def _read_text(path: Path, what: str) -> str:
    from isonyc_dagster.geo.config import ConfigError  # the config's own error type (no import cycle at load)

    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist (paths are relative to the config file)")
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {path} cannot be read as UTF-8 text: {e}") from None
    if not text:
        raise ConfigError(f"{what} {path} is empty; write the prompt into it or remove the setting")
    return text


def _resolve(path: str, base: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


def _prompt_updates(obj: _PromptFields, base: Path, where: str) -> dict[str, Any]:
    """The fields of ``obj`` with its prompt files read (and the ``_file`` fields cleared)."""
    out: dict[str, Any] = {}
    for name in ("prompt", "negative_prompt"):
        file = getattr(obj, f"{name}_file")
        if file is not None:
            out[name] = _read_text(_resolve(file, base), f"{where}{name}_file")
            out[f"{name}_file"] = None
    return out


def anchor_files(directory: str | Path) -> list[Path]:
    """The style images of an anchors directory, in name order; ``ConfigError`` when unusable."""
    from isonyc_dagster.geo.config import ConfigError

    d = Path(directory)
    if not d.is_dir():
        raise ConfigError(f"anchors_dir {d} is not a directory; point it at a folder of 3-6 style images")
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in ANCHOR_SUFFIXES)
    if not files:
        raise ConfigError(
            f"anchors_dir {d} holds no {'/'.join(ANCHOR_SUFFIXES)} images; add 3-6 style images"
        )
    if len(files) > MAX_ANCHORS:
        raise ConfigError(
            f"anchors_dir {d} holds {len(files)} images; keep at most {MAX_ANCHORS} (3-6 is typical)"
        )
    return files


def resolve_model_input_files(cfg: Any, raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """``ProjectConfig`` field updates for a config file in ``base``: prompt files read, paths made absolute.

    ``raw`` is the file's own table: a top-level ``prompt`` next to ``prompt_file`` is refused (the default prompt
    alone is not a conflict).
    """
    from isonyc_dagster.geo.config import ConfigError

    updates: dict[str, Any] = {}
    for name in ("prompt", "negative_prompt"):
        if raw.get(name) is not None and raw.get(f"{name}_file") is not None:
            raise ConfigError(f"config: give {name} or {name}_file, not both")
        file = getattr(cfg, f"{name}_file")
        if file is not None:
            updates[name] = _read_text(_resolve(file, base), f"{name}_file")
            updates[f"{name}_file"] = None
    updates["backends"] = {
        name: prof.model_copy(update=_prompt_updates(prof, base, f"backends.{name}."))
        for name, prof in cfg.backends.items()
    }
    rules = []
    for i, rule in enumerate(cfg.rules):
        upd = _prompt_updates(rule, base, f"rules[{i}].")
        if rule.area is not None:
            area = _resolve(rule.area, base)
            if not area.is_file():
                raise ConfigError(
                    f"rules[{i}].area {area} does not exist (paths are relative to the config file)"
                )
            upd["area"] = str(area)
        rules.append(rule.model_copy(update=upd))
    updates["rules"] = rules
    if cfg.anchors_dir is not None:
        anchors = _resolve(cfg.anchors_dir, base)
        anchor_files(anchors)  # refuse an unusable directory at load, not at the first step
        updates["anchors_dir"] = str(anchors)
    return updates
