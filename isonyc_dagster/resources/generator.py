"""The generation backend resource: which image model generates steps, with its settings and secrets.

Secrets (API keys, tokens) are plain fields here so that ``Definitions`` can bind them to ``dg.EnvVar``s; Dagster
resolves those at run time and never shows their values in the UI. They are passed to the backend's constructor
and nowhere else (not in logs, metadata, provenance or errors).
"""

from __future__ import annotations

import json
from typing import Any

import dagster as dg

from ..backends.base import ImageBackend
from ..config import MapConfig


class GeneratorResource(dg.ConfigurableResource):
    """Builds the configured ``ImageBackend``."""

    backend: str = "pixelart"
    #: Non-secret backend settings as JSON (endpoint URL, model id, steps, timeouts, concurrency, ...).
    settings_json: str = "{}"
    #: Secret credentials (bind to dg.EnvVar in Definitions).
    api_key: str | None = None
    auth_secret: str | None = None
    #: Generate K candidates per step (different seeds) and keep the one with the best seams.
    candidates: int = 1
    #: Added to every step's deterministic seed; change it to regenerate with new seeds.
    seed_offset: int = 0

    def settings(self) -> dict[str, Any]:
        out = json.loads(self.settings_json or "{}")
        if self.api_key:
            out["api_key"] = self.api_key
        if self.auth_secret:
            out["auth_secret"] = self.auth_secret
        return out

    def build(self, map_config: MapConfig | None = None) -> ImageBackend:
        """The backend; the offline pixel-art backend also gets the map's camera (its textures follow it)."""
        from ..backends.registry import make_backend

        settings = self.settings()
        if self.backend == "pixelart" and map_config is not None:
            settings.setdefault("map_config", map_config.model_dump(mode="json"))
        return make_backend(self.backend, **settings)
