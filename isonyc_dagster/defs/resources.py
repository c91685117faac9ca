"""Dagster resources: the project (config → core objects) and the generator (image model, settings, secrets).

Secrets (API keys, tokens) are plain fields here so that ``Definitions`` can bind them to ``dg.EnvVar``s; Dagster
resolves those at run time and never shows their values in the UI. They are passed to the backend's constructor
and nowhere else (not in logs, metadata, provenance or errors).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from typing import Any

import dagster as dg

from isonyc_dagster.backends.base import BackendConfigError, ImageBackend
from isonyc_dagster.defs.runs import mark_run_process
from isonyc_dagster.geo.config import MapConfig, ProjectConfig
from isonyc_dagster.project import Project


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

    def identity(self, prompt: str) -> str:
        """What decides a step's output besides its template: backend, settings, K, seeds, prompt (no secrets)."""
        key = json.dumps(
            [self.backend, json.loads(self.settings_json or "{}"), self.candidates, self.seed_offset, prompt],
            sort_keys=True,
        )
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def build(self, map_config: MapConfig | None = None) -> ImageBackend:
        """The backend; the offline pixel-art backend also gets the map's camera (its textures follow it)."""
        from isonyc_dagster.backends.registry import make_backend

        settings = self.settings()
        if self.backend == "pixelart" and map_config is not None:
            settings.setdefault("map_config", map_config.model_dump(mode="json"))
        try:
            return make_backend(self.backend, **settings)
        except ValueError as e:  # BackendConfigError, or a settings value a client refuses
            env = BACKEND_ENV.get(self.backend, {})
            where = ", ".join(f"{field} from ${var}" for field, var in env.items())
            hint = f"set {where}; " if where else ""
            raise BackendConfigError(
                f"{e} ({hint}other settings as JSON in $ISONYC_BACKEND_SETTINGS)"
            ) from None


#: Environment variables the remote backends' secrets and endpoints come from.
BACKEND_ENV: dict[str, dict[str, str]] = {
    "modal": {"url": "ISONYC_MODAL_URL", "api_key": "ISONYC_MODAL_KEY", "auth_secret": "ISONYC_MODAL_SECRET"},
    "oxen": {"api_key": "ISONYC_OXEN_API_KEY"},
    "gemini": {"api_key": "ISONYC_GEMINI_API_KEY"},
    "vertex": {},  # Application Default Credentials
}


def generator_resource(backend: str, *, resolve_env: bool = False) -> GeneratorResource:
    """The resource for ``backend`` with settings and secrets from the environment.

    In ``Definitions`` secrets are bound as ``dg.EnvVar`` (resolved by Dagster at run time, never shown in the UI);
    ``resolve_env=True`` reads them now, for the CLI, which runs outside Dagster.
    """
    env = BACKEND_ENV.get(backend, {})
    settings = json.loads(os.environ.get("ISONYC_BACKEND_SETTINGS", "{}"))
    if "url" in env and os.environ.get(env["url"]):
        settings.setdefault("url", os.environ[env["url"]])

    def secret(field: str) -> Any:
        # Only variables that are set are bound: Modal's proxy auth is optional, and a backend that needs a
        # missing key says so (naming the variable) when it is built.
        if field not in env or not os.environ.get(env[field]):
            return None
        return os.environ[env[field]] if resolve_env else dg.EnvVar(env[field])

    return GeneratorResource(
        backend=backend,
        settings_json=json.dumps(settings),
        api_key=secret("api_key"),
        auth_secret=secret("auth_secret"),
        candidates=int(os.environ.get("ISONYC_CANDIDATES", "1")),
    )


_CACHE: dict[str, Project] = {}
_LOCK = threading.Lock()


class ProjectResource(dg.ConfigurableResource):
    """Holds the project config as JSON; builds (and caches per process) the core ``Project``."""

    config_json: str = ProjectConfig().model_dump_json()

    @classmethod
    def for_config(cls, config: ProjectConfig) -> ProjectResource:
        return cls(config_json=config.model_dump_json())

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # The run worker records its process, so a run whose process dies is found and failed (defs/runs.py).
        if context.instance is not None and context.run is not None:
            mark_run_process(context.instance, context.run)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        # Fold the index's write-ahead log into the index at the end of every run: a lost -wal file can then
        # lose at most the commits of one run (and the journal still holds those).
        project = _CACHE.get(self.config_json)
        if project is not None and "store" in project.__dict__:
            project.store.checkpoint()

    def get(self) -> Project:
        """The core project; one per process and config, so the city and renderer load once per run."""
        with _LOCK:
            project = _CACHE.get(self.config_json)
            if project is None:
                project = Project(ProjectConfig.model_validate_json(self.config_json))
                _CACHE[self.config_json] = project
            return project
