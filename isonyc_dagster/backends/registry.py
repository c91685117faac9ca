"""Build a backend by name from flat settings (what a config file or a Dagster resource holds)."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from isonyc_dagster.backends.base import BackendConfigError, ImageBackend
from isonyc_dagster.backends.transport import HttpSettings, split_http_settings

#: name → (module, class). Imported lazily: the offline path must not pay for HTTP/GCS imports.
BACKENDS: dict[str, tuple[str, str]] = {
    "pixelart": ("isonyc_dagster.backends.pixelart", "PixelArtBackend"),
    "modal": ("isonyc_dagster.backends.modal", "ModalBackend"),
    "oxen": ("isonyc_dagster.backends.oxen", "OxenBackend"),
    "gemini": ("isonyc_dagster.backends.gemini", "GeminiBackend"),
    "vertex": ("isonyc_dagster.backends.vertex", "VertexBackend"),
}


#: Generic setting names (what ``GeneratorResource`` passes: ``url``, ``api_key``, ``auth_secret``) → each
#: backend's own parameter names.
SETTING_ALIASES: dict[str, dict[str, str]] = {
    # Modal proxy auth: token id → Modal-Key, token secret → Modal-Secret
    "modal": {"url": "endpoint", "api_key": "token_id", "auth_secret": "token_secret", "model": "model_id"},
    "oxen": {"url": "base_url"},
    "gemini": {"url": "base_url"},
    "vertex": {"url": "endpoint"},
}


def backend_class(name: str) -> type[ImageBackend]:
    if name not in BACKENDS:
        raise BackendConfigError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise BackendConfigError(f"backend {name!r} is not available ({module}.{cls}: {e})") from None


def make_backend(name: str, **settings: Any) -> ImageBackend:
    """Construct backend ``name`` with ``settings``.

    HTTP settings (``timeout_s``, ``max_attempts``, ``max_concurrency``, ``breaker_threshold``, ... see
    :class:`HttpSettings`) may be given flat next to the backend's own; unknown names are an error
    that lists the valid ones. For ``oxen`` pass ``uploader=`` or ``bucket=`` (+ optional
    ``uploader_prefix``, ``url_ttl_s``); for ``vertex`` a missing ``token_provider`` means
    Application Default Credentials. The generic names ``url``/``api_key``/``auth_secret`` map to
    each backend's own (see :data:`SETTING_ALIASES`). Bad settings raise :class:`BackendConfigError` (a
    ``ValueError``), whose message names settings, never their values.
    """
    cls = backend_class(name)
    params = inspect.signature(cls.__init__).parameters
    settings = dict(settings)
    for generic, own in SETTING_ALIASES.get(name, {}).items():
        if generic in settings:
            if own in settings:
                raise BackendConfigError(f"backend {name!r}: give {own} or {generic}, not both")
            settings[own] = settings.pop(generic)
    if name == "vertex" and ("api_key" in settings or "auth_secret" in settings):
        raise BackendConfigError(
            "backend 'vertex' authenticates with Google Application Default Credentials (a bearer token from "
            "token_provider), not an API key; unset api_key/auth_secret for it"
        )
    takes_http = "http" in params
    rest = dict(settings)
    if takes_http and "http" not in rest:
        http, rest = split_http_settings(rest)
        rest["http"] = http
    elif takes_http and not isinstance(rest.get("http"), HttpSettings):
        rest["http"] = HttpSettings(**rest["http"])
    if name == "oxen" and "uploader" not in rest:
        if "bucket" not in rest:
            raise BackendConfigError(
                "backend 'oxen' needs uploader= or bucket= (the GCS bucket for short-lived templates)"
            )
        from isonyc_dagster.backends.oxen import GCSTemplateUploader

        up_kwargs = {"prefix": rest.pop("uploader_prefix", "isonyc-templates/")}
        if "url_ttl_s" in rest:
            up_kwargs["url_ttl_s"] = rest.pop("url_ttl_s")
        rest["uploader"] = GCSTemplateUploader(rest.pop("bucket"), **up_kwargs)
    if name == "vertex" and rest.get("token_provider") is None:
        from isonyc_dagster.backends.vertex import google_auth_token_provider

        rest["token_provider"] = google_auth_token_provider()
    valid = [p for p in params if p != "self" and params[p].kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = sorted(set(rest) - set(valid))
    if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        extra = sorted(HttpSettings.model_fields) if takes_http else []
        raise BackendConfigError(
            f"backend {name!r} got unknown setting(s) {unknown}; valid: {[v for v in valid if v != 'http'] + extra}"
        )
    missing = [
        p
        for p, spec in params.items()
        if p != "self"
        and spec.default is inspect.Parameter.empty
        and spec.kind is not inspect.Parameter.VAR_KEYWORD
        and p not in rest
    ]
    if missing:
        raise BackendConfigError(f"backend {name!r} needs setting(s) {missing}")
    return cls(**rest)
