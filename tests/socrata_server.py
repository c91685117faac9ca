"""A real HTTP server on 127.0.0.1 that answers like Socrata's SODA GeoJSON endpoint.

It serves one GeoJSON file (e.g. ``midtown_east_buildings_socrata_raw.geojson``, which is a verbatim
Socrata response) as ``/resource/<dataset>.geojson`` and honours what our client relies on:
``$where=within_box(the_geom, lat1, lng1, lat2, lng2)`` (features intersecting the box), ``$order``
(``:id`` = row order, or a property, compared as text the way SoQL compares text columns), ``$limit``
(default 1000, optionally capped by ``max_limit``), ``$offset`` and an empty ``features`` page past the
end. Unknown datasets get 404 and malformed queries 400 with a SoQL-style JSON error. ``failures``
injects errors by request number (1-based): ``{2: (429, {"Retry-After": "1"}), 4: (500, {})}``.
Every request is recorded (path, query, whether ``X-App-Token`` was sent and its value).
"""

from __future__ import annotations

import functools
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import shapely
from shapely.geometry import box, shape

_WITHIN_BOX = re.compile(
    r"^\s*within_box\(\s*(?P<col>[a-z_]+)\s*,\s*(?P<a>[-+\d.eE]+)\s*,\s*(?P<b>[-+\d.eE]+)\s*,"
    r"\s*(?P<c>[-+\d.eE]+)\s*,\s*(?P<d>[-+\d.eE]+)\s*\)\s*$"
)


@dataclass
class Request:
    path: str
    params: dict[str, str]
    app_token: str | None
    status: int = 200
    returned: int = 0


@dataclass
class SocrataTestServer:
    geojson: Path
    dataset: str = "5zhs-2jue"
    failures: dict[int, tuple[int, dict[str, str]]] = field(default_factory=dict)
    max_limit: int | None = None
    geometry_field: str = "the_geom"
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.features, self.crs, self._geoms = _load(str(self.geojson))
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    # --- lifecycle ----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL; stays valid (and refuses connections) after ``stop()``."""
        assert self._url is not None, "server not started"
        return self._url

    def start(self) -> SocrataTestServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                server._handle(self)

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        host, port = self._httpd.server_address[:2]
        self._url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> SocrataTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- SODA semantics -----------------------------------------------------------------------------
    def _select(self, params: dict[str, str]) -> list[int]:
        rows = list(range(len(self.features)))
        where = params.get("$where")
        if where is not None:
            m = _WITHIN_BOX.match(where)
            if m is None or m["col"] != self.geometry_field:
                raise _SoqlError(
                    f"could not parse $where {where!r}; expected within_box({self.geometry_field}, ...)"
                )
            lat1, lng1, lat2, lng2 = (float(m[k]) for k in "abcd")
            bbox = box(min(lng1, lng2), min(lat1, lat2), max(lng1, lng2), max(lat1, lat2))
            shapely.prepare(bbox)
            rows = [i for i in rows if self._geoms[i] is not None and bbox.intersects(self._geoms[i])]
        order = params.get("$order")
        if order is not None:
            name, _, direction = order.strip().partition(" ")
            if name != ":id":
                if not any(name in (f.get("properties") or {}) for f in self.features):
                    raise _SoqlError(f"No such column: {name}")
                rows.sort(key=lambda i: str((self.features[i].get("properties") or {}).get(name) or ""))
            if direction.strip().upper() == "DESC":
                rows.reverse()
        return rows

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        with self._lock:
            req = Request(path=url.path, params=params, app_token=h.headers.get("X-App-Token"))
            self.requests.append(req)
            number = len(self.requests)
        if number in self.failures:
            status, headers = self.failures[number]
            req.status = status
            self._send(h, status, {"error": True, "message": f"injected {status}"}, headers)
            return
        if url.path != f"/resource/{self.dataset}.geojson":
            req.status = 404
            self._send(h, 404, {"error": True, "code": "not_found", "message": f"Unknown dataset {url.path}"})
            return
        try:
            limit = int(params.get("$limit", "1000"))
            offset = int(params.get("$offset", "0"))
            if limit < 0 or offset < 0:
                raise ValueError
            rows = self._select(params)
        except ValueError:
            req.status = 400
            self._send(h, 400, {"error": True, "code": "query.soql.invalid", "message": "bad $limit/$offset"})
            return
        except _SoqlError as e:
            req.status = 400
            self._send(h, 400, {"error": True, "code": "query.compiler.malformed", "message": str(e)})
            return
        if self.max_limit is not None:
            limit = min(limit, self.max_limit)
        page = [self.features[i] for i in rows[offset : offset + limit]]
        req.returned = len(page)
        body: dict[str, Any] = {"type": "FeatureCollection", "features": page}
        if self.crs is not None:
            body["crs"] = self.crs
        self._send(h, 200, body)

    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header(
            "Content-Type", "application/vnd.geo+json;charset=utf-8" if status == 200 else "application/json"
        )
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)


class _SoqlError(Exception):
    pass


@functools.lru_cache(maxsize=4)
def _load(path: str) -> tuple[list[dict[str, Any]], Any, list[Any]]:
    # Parsed once per test session: several tests start their own server on the same file.
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    feats = doc["features"]
    return feats, doc.get("crs"), [shape(f["geometry"]) if f.get("geometry") else None for f in feats]
