"""Where photoreal tiles come from: any 3D Tiles 1.0/1.1 ``tileset.json`` URL, or Google's Map Tiles API.

The page only ever sees credential-free URLs. Requests leave the browser through the renderer's route handler,
which asks the source for the real request URL (``request_url``: Google's ``key`` and ``session`` added there
and nowhere else) and for the cache key (``cache_key``: the URL with those parameters removed). Provenance,
errors and the tile cache use only credential-free URLs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from isonyc_dagster.errors import IsonycError

GOOGLE = "google"
GOOGLE_ROOT_URL = "https://tile.googleapis.com/v1/3dtiles/root.json"
#: The environment variable holding the Google Maps Platform key (bound as a Dagster EnvVar in defs/).
GOOGLE_KEY_ENV = "ISONYC_GOOGLE_MAPS_API_KEY"
#: Google's terms: the Google logo/name is always shown; the visible tiles' data copyrights follow it.
GOOGLE_ATTRIBUTION = "Google"
#: Query parameters that carry credentials: never stored, logged or shown.
SECRET_PARAMS = frozenset({"key", "session", "access_token", "token", "apikey", "api_key"})


class PhotorealSourceError(IsonycError, ValueError):
    """The photoreal tileset setting is unusable (not a tileset URL, or a source lacking its key)."""


def strip_secrets(url: str) -> str:
    """``url`` without credential-bearing query parameters."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    q = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() not in SECRET_PARAMS]
    return urlunsplit(parts._replace(query=urlencode(q)))


@dataclass
class TileSource:
    """A tileset the page loads from ``url``; ``api_key``, if any, is added only to requests for ``auth_host``."""

    kind: str
    url: str
    attribution: str
    auth_host: str | None = None
    api_key: str | None = field(default=None, repr=False)
    session: str | None = field(default=None, repr=False)

    def request_url(self, url: str) -> str:
        """The URL actually fetched: credentials added for the authenticated host."""
        if not self.api_key or urlsplit(url).netloc != self.auth_host:
            return url
        parts = urlsplit(url)
        q = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ("key", "session")]
        q.append(("key", self.api_key))
        if self.session:
            q.append(("session", self.session))
        return urlunsplit(parts._replace(query=urlencode(q)))

    def cache_key(self, url: str) -> str:
        return strip_secrets(url)

    def note_response(self, url: str, body: bytes) -> None:
        """Google hands out the session token in the root tileset's child URIs; remember it."""
        if self.kind != GOOGLE or self.session or urlsplit(url).path != urlsplit(GOOGLE_ROOT_URL).path:
            return
        try:
            stack = [json.loads(body).get("root", {})]
        except (ValueError, AttributeError):
            return
        while stack:
            tile = stack.pop()
            uri = (tile.get("content") or {}).get("uri", "")
            token = dict(parse_qsl(urlsplit(uri).query)).get("session")
            if token:
                self.session = token
                return
            stack.extend(tile.get("children") or [])

    def describe(self) -> dict:
        """What provenance records about the source: never the key."""
        return {"kind": self.kind, "url": strip_secrets(self.url), "attribution": self.attribution}


def resolve_source(tileset: str, *, api_key: str | None = None) -> TileSource:
    """The source for a config/CLI value: ``google`` or an http(s) URL of a 3D Tiles ``tileset.json``."""
    spec = (tileset or "").strip()
    if spec == GOOGLE:
        if not api_key:
            raise PhotorealSourceError(
                f"photoreal tileset 'google' needs a Google Maps Platform key with the Map Tiles API enabled: "
                f"set {GOOGLE_KEY_ENV}"
            )
        return TileSource(
            GOOGLE, GOOGLE_ROOT_URL, GOOGLE_ATTRIBUTION, urlsplit(GOOGLE_ROOT_URL).netloc, api_key=api_key
        )
    parts = urlsplit(spec)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PhotorealSourceError(
            f"photoreal tileset {spec!r} is not usable: give 'google' or the http(s) URL of a 3D Tiles tileset.json"
        )
    secrets = sorted(k for k, _ in parse_qsl(parts.query) if k.lower() in SECRET_PARAMS)
    if secrets:
        raise PhotorealSourceError(
            f"photoreal tileset URL carries credentials ({', '.join(secrets)}=…); URLs are recorded in provenance, "
            f"so give the tileset URL without them (for Google's API use tileset 'google' and {GOOGLE_KEY_ENV})"
        )
    return TileSource("url", spec, attribution=parts.netloc)


def source_attribution(tileset: str) -> str:
    """The attribution a map made from this tileset's renders shows (the viewer's credit line)."""
    spec = (tileset or "").strip()
    if spec == GOOGLE:
        return f"3D tiles: {GOOGLE_ATTRIBUTION}"
    return f"3D tiles: {urlsplit(spec).netloc or spec}"
