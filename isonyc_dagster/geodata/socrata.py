"""NYC Open Data *Building Footprints* (Socrata dataset 5zhs-2jue) with a local GeoParquet cache.

Query: ``GET {base_url}/resource/5zhs-2jue.geojson?$where=within_box(the_geom, N, W, S, E)&$order=:id
&$limit=L&$offset=O``. Paging advances ``$offset`` by the number of features actually received and stops
at the first empty page, so a server that caps ``$limit`` below the request still yields every row;
``$order`` makes the pages a stable partition of the result. An optional app token travels in the
``X-App-Token`` header (from the argument or ``$SOCRATA_APP_TOKEN``; never logged, never in an error).
429/5xx/timeouts/connection errors are retried with tenacity: exponential backoff with full jitter, or
exactly the server's ``Retry-After`` when it sends one.

Cache: the complete result of one query is written atomically (temp file + rename) as GeoParquet
(pyarrow; WKB ``geometry`` column + ``geo`` metadata, GeoParquet 1.1, CRS OGC:CRS84), named by a hash of
(base URL, dataset, $where, $order). A second call with the same query reads the file and makes no
request. All Socrata values are strings; they stay strings in the cache and are parsed on read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
import tenacity
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from isonyc_dagster.fileio import atomic_output
from isonyc_dagster.geo.geometry import MapGeometry
from isonyc_dagster.geodata._common import (
    ATTRIBUTION_DOITT,
    FeatureSet,
    GeodataError,
    ReadReport,
    ground_features,
    in_window,
    make_buildings,
)
from isonyc_dagster.net import parse_retry_after

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://data.cityofnewyork.us"
BUILDINGS_DATASET = "5zhs-2jue"
APP_TOKEN_ENV = "SOCRATA_APP_TOKEN"
GEOMETRY_FIELD = "the_geom"
#: Rows per request. Socrata serves up to 50,000; smaller pages keep each response a few MB.
DEFAULT_PAGE_SIZE = 5000
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class SocrataError(GeodataError):
    """The Socrata API refused the query or kept failing; the message says which and what to do."""


class _Retryable(Exception):
    """A response or transport failure worth another attempt."""

    def __init__(self, msg: str, retry_after_s: float | None = None) -> None:
        super().__init__(msg)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class SocrataQuery:
    """A ``within_box`` query on one dataset. ``bbox`` is (west, south, east, north) in degrees."""

    bbox: tuple[float, float, float, float]
    dataset: str = BUILDINGS_DATASET
    geometry_field: str = GEOMETRY_FIELD
    order: str = ":id"

    @property
    def where(self) -> str:
        w, s, e, n = self.bbox
        # Socrata's argument order: top-left latitude, top-left longitude, bottom-right lat, bottom-right lng.
        return f"within_box({self.geometry_field}, {n!r}, {w!r}, {s!r}, {e!r})"

    def cache_name(self, base_url: str) -> str:
        key = json.dumps(
            {"base": base_url.rstrip("/"), "dataset": self.dataset, "where": self.where, "order": self.order},
            sort_keys=True,
        )
        return f"{self.dataset}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.parquet"


class _Wait:
    """Tenacity wait: the server's Retry-After when given (capped), else exponential backoff + jitter."""

    def __init__(self, base_s: float, max_s: float, max_retry_after_s: float) -> None:
        self.backoff = tenacity.wait_random_exponential(multiplier=base_s, max=max_s)
        self.max_retry_after_s = max_retry_after_s

    def __call__(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable) and exc.retry_after_s is not None:
            return min(exc.retry_after_s, self.max_retry_after_s)
        return self.backoff(state)


class SocrataClient:
    """Pages through Socrata GeoJSON results with retries. Usable as a context manager."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        app_token: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        timeout_s: float = 60.0,
        max_attempts: int = 6,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        max_retry_after_s: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise SocrataError(f"Socrata base URL {base_url!r} must start with http:// or https://")
        if page_size < 1:
            raise SocrataError(f"page_size must be ≥ 1 (got {page_size})")
        self.base_url = base_url.rstrip("/")
        self.page_size = page_size
        token = app_token if app_token is not None else os.environ.get(APP_TOKEN_ENV)
        headers = {"Accept": "application/json", "User-Agent": "isonyc-dagster"}
        if token:
            headers["X-App-Token"] = token
        self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)
        self._retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max_attempts),
            wait=_Wait(backoff_base_s, backoff_max_s, max_retry_after_s),
            retry=tenacity.retry_if_exception_type(_Retryable),
            sleep=sleep,
            reraise=True,
            before_sleep=self._log_retry,
        )
        self.requests = 0

    def __repr__(self) -> str:  # never show the token
        return f"SocrataClient({self.base_url!r}, page_size={self.page_size})"

    def __enter__(self) -> SocrataClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    @staticmethod
    def _log_retry(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "Socrata request failed (%s); attempt %d, retrying in %.1f s", exc, state.attempt_number, wait
        )

    def _get_page(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        self.requests += 1
        try:
            r = self._client.get(path, params=params)
        except httpx.TimeoutException as e:
            raise _Retryable(f"timeout: {type(e).__name__}") from e
        except httpx.TransportError as e:
            raise _Retryable(f"connection error: {type(e).__name__}: {e}") from e
        if r.status_code in RETRY_STATUS:
            raise _Retryable(f"HTTP {r.status_code}", parse_retry_after(r.headers.get("Retry-After")))
        if r.status_code in (401, 403):
            raise SocrataError(
                f"Socrata refused the request (HTTP {r.status_code}) at {self.base_url}{path}; check the app token "
                f"in ${APP_TOKEN_ENV} (or unset it to query anonymously)"
            )
        if r.status_code == 404:
            raise SocrataError(
                f"Socrata has no dataset at {self.base_url}{path} (HTTP 404); check the dataset id"
            )
        if r.status_code != 200:
            raise SocrataError(
                f"Socrata rejected the query (HTTP {r.status_code}) at {self.base_url}{path} "
                f"with {params}: {_error_message(r)}"
            )
        try:
            body = r.json()
        except ValueError as e:
            raise _Retryable("response is not JSON (truncated?)") from e
        if not isinstance(body, dict) or not isinstance(body.get("features"), list):
            raise SocrataError(f"Socrata answered {self.base_url}{path} with something that is not GeoJSON")
        return body["features"]

    def fetch_features(self, query: SocrataQuery) -> list[dict[str, Any]]:
        """Every GeoJSON feature of ``query``, page by page."""
        path = f"/resource/{query.dataset}.geojson"
        features: list[dict[str, Any]] = []
        while True:
            params = {
                "$where": query.where,
                "$order": query.order,
                "$limit": str(self.page_size),
                "$offset": str(len(features)),
            }
            page = self._retrying(self._get_page, path, params)
            if not page:
                return features
            features.extend(page)
            log.info("Socrata %s: %d features so far", query.dataset, len(features))


def _error_message(r: httpx.Response) -> str:
    try:
        body = r.json()
        return str(body.get("message") or body)[:500]
    except ValueError:
        return r.text[:500]


# --- GeoParquet cache -------------------------------------------------------------------------------
def features_to_table(features: list[dict[str, Any]], *, query: SocrataQuery, base_url: str) -> pa.Table:
    """GeoJSON features → Arrow table: string properties + WKB ``geometry`` with GeoParquet metadata."""
    names: dict[str, None] = {}
    for f in features:
        names.update(dict.fromkeys((f.get("properties") or {}).keys()))
    geoms = np.array([shape(f["geometry"]) if f.get("geometry") else None for f in features], dtype=object)
    cols: dict[str, pa.Array] = {}
    for name in names:
        vals = [(f.get("properties") or {}).get(name) for f in features]
        cols[name] = pa.array([None if v is None else str(v) for v in vals], type=pa.string())
    cols["geometry"] = pa.array(shapely.to_wkb(geoms), type=pa.binary())
    present = geoms[~shapely.is_missing(geoms)]
    types = sorted({g.geom_type for g in present})
    bbox = [float(v) for v in shapely.total_bounds(present)] if len(present) else []
    geo = {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {"encoding": "WKB", "geometry_types": types, **({"bbox": bbox} if bbox else {})}
        },
    }
    meta = {
        b"geo": json.dumps(geo).encode(),
        b"isonyc:socrata": json.dumps(
            {
                "base_url": base_url,
                "dataset": query.dataset,
                "where": query.where,
                "order": query.order,
                "fetched_at": time.time(),
                "count": len(features),
            }
        ).encode(),
    }
    return pa.table(cols).replace_schema_metadata(meta)


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "isonyc-dagster" / "socrata"


def fetch_table(
    query: SocrataQuery,
    *,
    cache_dir: str | Path | None = None,
    client: SocrataClient | None = None,
    base_url: str = DEFAULT_BASE_URL,
    refresh: bool = False,
) -> tuple[pa.Table, Path, bool]:
    """The query's rows from the cache, or from Socrata (then cached). Returns (table, path, from_cache)."""
    base = client.base_url if client is not None else base_url.rstrip("/")
    path = Path(cache_dir or default_cache_dir()) / query.cache_name(base)
    if path.exists() and not refresh:
        try:
            return pq.read_table(path), path, True
        except (pa.ArrowInvalid, OSError) as e:
            log.warning("Socrata cache %s is unreadable (%s); fetching again", path, e)
    own = client is None
    client = client or SocrataClient(base_url)
    try:
        features = client.fetch_features(query)
    except _Retryable as e:
        raise SocrataError(
            f"Socrata at {base} kept failing ({e}) after all retries; try again later or use a local file"
        ) from None
    finally:
        if own:
            client.close()
    table = features_to_table(features, query=query, base_url=base)
    with atomic_output(path) as tmp:  # readers never see half a cache file
        pq.write_table(table, tmp, compression="zstd")
    return table, path, False


def window_bbox_lnglat(geometry: MapGeometry, window: BaseGeometry) -> tuple[float, float, float, float]:
    """(west, south, east, north) around a ground-metre window, rounded outward to 1e-4° (~10 m) so
    nearly identical windows share one cache entry."""
    outline = shapely.segmentize(window.envelope.exterior, max(window.length / 400, 1.0))
    e, n = shapely.get_coordinates(outline).T
    lng, lat = geometry.ground_to_lnglat(e, n)
    q = 1e4
    return (
        math.floor(lng.min() * q) / q,
        math.floor(lat.min() * q) / q,
        math.ceil(lng.max() * q) / q,
        math.ceil(lat.max() * q) / q,
    )


def read_socrata_buildings(
    geometry: MapGeometry,
    window: BaseGeometry,
    *,
    base_url: str = DEFAULT_BASE_URL,
    app_token: str | None = None,
    cache_dir: str | Path | None = None,
    client: SocrataClient | None = None,
    refresh: bool = False,
    skip_placeholders: bool = True,
) -> FeatureSet:
    """Building footprints from NYC Open Data inside ``window`` (ground metres), cached locally."""
    query = SocrataQuery(bbox=window_bbox_lnglat(geometry, window))
    own = client is None
    client = client or SocrataClient(base_url, app_token=app_token)
    try:
        table, path, cached = fetch_table(query, cache_dir=cache_dir, client=client, refresh=refresh)
    finally:
        if own:
            client.close()
    source = f"{client.base_url}/resource/{query.dataset} ({'cache ' if cached else ''}{path.name})"
    fs = buildings_from_table(
        table, geometry, window=window, source=source, skip_placeholders=skip_placeholders
    )
    fs.sources = [f"{client.base_url}/resource/{query.dataset}.geojson?$where={query.where}"]
    return fs


def buildings_from_table(
    table: pa.Table,
    geometry: MapGeometry,
    *,
    window: BaseGeometry | None = None,
    source: str = "socrata",
    dataset: str = BUILDINGS_DATASET,
    skip_placeholders: bool = True,
) -> FeatureSet:
    """Normalized buildings from a cached Socrata table (string fields, WKB lon/lat geometry)."""
    report = ReadReport(source=source, buildings_expected=True)
    geoms = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    attrs = {n: table.column(n).to_pylist() for n in table.column_names if n != "geometry"}
    every = ground_features(geometry, geoms, attrs, report, id_prefix="socrata", what="building")
    buildings = make_buildings(
        in_window(every, window, report),
        report,
        source=f"socrata:{dataset}",
        skip_placeholders=skip_placeholders,
    )
    return FeatureSet(
        buildings=buildings, attribution=[ATTRIBUTION_DOITT], sources=[source], reports=[report]
    )
