"""Dagster resources: the project (config → core objects) and the generator (image model, settings, secrets).

Secrets (API keys, tokens) are plain fields here so that ``Definitions`` can bind them to ``dg.EnvVar``s; Dagster
resolves those at run time and never shows their values in the UI. They are passed to the backend's constructor
and nowhere else (not in logs, metadata, provenance or errors).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from typing import Any

import dagster as dg

from isonyc_dagster.backends.base import BackendConfigError, ImageBackend
from isonyc_dagster.backends.transport import HttpSettings
from isonyc_dagster.defs.runs import mark_run_process, return_freed_memory
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
    #: Credentials of the other backends an area rule may pick (``<backend>_<field>``), bound to dg.EnvVar like
    #: ``api_key`` so that they too are resolved by Dagster at run time and never shown.
    modal_api_key: str | None = None
    modal_auth_secret: str | None = None
    oxen_api_key: str | None = None
    gemini_api_key: str | None = None
    #: The other backends' endpoint URLs (JSON: backend → URL; not secret), read from their variables.
    urls_json: str = "{}"
    #: The project's pixel-art style (``ProjectConfig.style``) as JSON of its non-default ``StyleParams``; empty for
    #: the default look, so existing steps keep their identity.
    style_json: str = ""
    #: Directory of the host-wide endpoint slots (``backends._slots``): through it the processes of concurrent runs
    #: share each Modal endpoint's ``endpoint_concurrency`` instead of each sending that many; empty: per process.
    slot_dir: str = ""

    def _style_part(self, backend: str) -> list[Any]:
        return [json.loads(self.style_json)] if backend == "pixelart" and self.style_json else []

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
            [self.backend, _output_settings(self.settings_json), self.candidates, self.seed_offset, prompt]
            + self._style_part(self.backend),
            sort_keys=True,
        )
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def build(self, map_config: MapConfig | None = None) -> ImageBackend:
        """The backend; the offline pixel-art backend also gets the map's camera (its textures follow it)."""
        return self.build_for(map_config, self.backend)

    def identity_for(
        self, backend: str, model: str | None, prompt: str, profile_settings: dict[str, Any] | None = None
    ) -> str:
        """``identity`` of the backend and model a step resolved to (an area rule may pick others)."""
        if backend == self.backend and model is None and not profile_settings:
            return self.identity(prompt)
        own = _output_settings(self.settings_json) if backend == self.backend else {}
        parts = [backend, model, profile_settings or {}, own, self.candidates, self.seed_offset, prompt]
        parts += self._style_part(backend)
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def build_for(
        self,
        map_config: MapConfig | None,
        backend: str,
        model: str | None = None,
        profile_settings: dict[str, Any] | None = None,
    ) -> ImageBackend:
        """Backend ``backend`` (with ``model``, over ``profile_settings`` from ``[backends.<name>]``).

        The resource's own backend gets its settings and secrets; another one (an area rule's) gets the URL and
        secrets bound for it from its environment variables (``BACKEND_ENV``).
        """
        from isonyc_dagster.backends.registry import make_backend

        settings = dict(profile_settings or {})
        if backend == self.backend:
            settings |= self.settings()
        else:
            settings |= self._rule_backend_settings(backend)
        if model is not None:
            settings["model"] = model
        if backend == "modal" and self.slot_dir:
            settings.setdefault("slot_dir", self.slot_dir)
        if backend == "pixelart" and map_config is not None:
            settings.setdefault("map_config", map_config.model_dump(mode="json"))
        if backend == "pixelart" and self.style_json:  # explicit settings params override the style file
            settings["params"] = json.loads(self.style_json) | dict(settings.get("params") or {})
        try:
            return make_backend(backend, **settings)
        except ValueError as e:  # BackendConfigError, or a settings value a client refuses
            env = BACKEND_ENV.get(backend, {})
            where = ", ".join(f"{field} from ${var}" for field, var in env.items())
            hint = f"set {where}; " if where else ""
            raise BackendConfigError(
                f"{e} ({hint}other settings as JSON in $ISONYC_BACKEND_SETTINGS)"
            ) from None

    def _rule_backend_settings(self, backend: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        url = json.loads(self.urls_json or "{}").get(backend)
        if url:
            out["url"] = url
        for field in BACKEND_ENV.get(backend, {}):
            value = getattr(self, f"{backend}_{field}", None) if field != "url" else None
            if value:
                out[field] = value
        return out


#: Settings that decide where and how a request travels, not what the model draws: changing them (another endpoint
#: list, more concurrency, longer timeouts) must not make committed steps look different and be generated again.
#: The model itself is named by ``model``/``model_id``, and every answer's provenance records who served it.
_TRANSPORT_SETTINGS = frozenset({"url", "endpoint_concurrency", "slot_dir", *HttpSettings.model_fields})


def _output_settings(settings_json: str) -> dict[str, Any]:
    """The backend settings that can change a step's output (``identity``'s part of them)."""
    return {k: v for k, v in json.loads(settings_json or "{}").items() if k not in _TRANSPORT_SETTINGS}


#: Environment variables the remote backends' secrets and endpoints come from.
BACKEND_ENV: dict[str, dict[str, str]] = {
    "modal": {"url": "ISONYC_MODAL_URL", "api_key": "ISONYC_MODAL_KEY", "auth_secret": "ISONYC_MODAL_SECRET"},
    "oxen": {"api_key": "ISONYC_OXEN_API_KEY"},
    "gemini": {"api_key": "ISONYC_GEMINI_API_KEY"},
    "vertex": {},  # Application Default Credentials
}


def project_style(config: ProjectConfig) -> dict[str, Any]:
    """The non-default pixel-art style parameters of ``config.style`` (empty when unset)."""
    if config.style is None:
        return {}
    from isonyc_dagster.backends.pixelart.params import load_style

    return load_style(config.style).changed()


def generator_resource(
    backend: str, *, resolve_env: bool = False, style: dict[str, Any] | None = None
) -> GeneratorResource:
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

    # Area rules may pick any other backend: bind the secrets and URLs of those whose variables are set.
    others: dict[str, Any] = {}
    urls: dict[str, str] = {}
    for name, vars_ in BACKEND_ENV.items():
        if name == backend:
            continue
        for field, var in vars_.items():
            if not os.environ.get(var):
                continue
            if field == "url":
                urls[name] = os.environ[var]
            else:
                others[f"{name}_{field}"] = os.environ[var] if resolve_env else dg.EnvVar(var)
    return GeneratorResource(
        backend=backend,
        settings_json=json.dumps(settings),
        api_key=secret("api_key"),
        auth_secret=secret("auth_secret"),
        candidates=int(os.environ.get("ISONYC_CANDIDATES", "1")),
        urls_json=json.dumps(urls),
        style_json=json.dumps(style, sort_keys=True) if style else "",
        slot_dir=default_slot_dir(),
        **others,
    )


def default_slot_dir() -> str:
    """Where concurrent runs share the model endpoints' slots: ``$ISONYC_SLOT_DIR``, else one directory per user of
    the host (an endpoint's capacity is its own, whichever project or run sends to it)."""
    return os.environ.get("ISONYC_SLOT_DIR") or os.path.join(
        tempfile.gettempdir(), f"isonyc-endpoint-slots-{os.getuid()}"
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
        return_freed_memory()  # a launched run worker too (the drivers set it for themselves)

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
