"""The renderer's HTTP API: ``POST /api/raster`` (flat style parameters → PNG of the fixed scene).

Python's threaded ``http.server``, like ``publish.serve``: FastAPI and uvicorn are only in the test/inference
extras, and the core CLI (``isonyc style data``) must serve rasters without them; one JSON-in/PNG-out route on
127.0.0.1 needs nothing more. Routes:

- ``POST /api/raster`` — body: a JSON object of flat ``StyleParams`` keys (missing keys take the default);
  answer: ``image/png`` of the scene crop. Invalid JSON or parameters: ``422`` with ``{"error": "..."}`` naming
  the field and its range.
- ``GET /api/params`` — the search space: every field's group/key, kind, range or choices and default.
- ``GET /healthz`` — ``ok``.
"""

from __future__ import annotations

import http.server
import json
import threading
from typing import Any

import httpx

from isonyc_dagster.backends.pixelart.params import style_field_info
from isonyc_dagster.images import png_bytes
from isonyc_dagster.stylesearch.scene import Scene
from isonyc_dagster.stylesearch.space import StyleSearchError, to_style_params_flat

__all__ = ["RasterClient", "RasterServer", "start_raster_server"]

_MAX_BODY = 64 * 1024


class _Handler(http.server.BaseHTTPRequestHandler):
    server: RasterServer
    protocol_version = "HTTP/1.1"  # keep-alive: data generation posts thousands of small requests

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        if not self.server.quiet:
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode(), "application/json")

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, b"ok", "text/plain")
        elif self.path == "/api/params":
            info = {
                n: {k: (list(v) if isinstance(v, tuple) else v) for k, v in i.items()}
                for n, i in style_field_info().items()
            }
            self._send(200, json.dumps(info).encode(), "application/json")
        else:
            self._error(404, f"no route {self.path}; POST /api/raster or GET /api/params")

    def do_POST(self) -> None:
        if self.path != "/api/raster":
            self._error(404, f"no route {self.path}; POST /api/raster")
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._error(411, "Content-Length required")
            return
        if int(length) > _MAX_BODY:
            self._error(
                413, f"body of {length} bytes is too large (> {_MAX_BODY}); send only style parameters"
            )
            return
        raw = self.rfile.read(int(length))
        try:
            body = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            self._error(422, f"body is not JSON ({e}); send an object of flat style parameters")
            return
        try:
            params = to_style_params_flat(body, source="raster parameters")
        except StyleSearchError as e:
            self._error(422, str(e))
            return
        png = png_bytes(self.server.scene.render(params), compress_level=1)
        self._send(200, png, "image/png")


class RasterServer(http.server.ThreadingHTTPServer):
    """Serves rasters of one ``Scene``; ``url`` is its base URL. Binds 127.0.0.1 unless told otherwise."""

    daemon_threads = True

    def __init__(self, scene: Scene, host: str = "127.0.0.1", port: int = 0, *, quiet: bool = True) -> None:
        self.scene = scene
        self.quiet = quiet
        super().__init__((host, port), _Handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> RasterServer:
        self._thread = threading.Thread(target=self.serve_forever, name="raster-api", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def __enter__(self) -> RasterServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_raster_server(scene: Scene, host: str = "127.0.0.1", port: int = 0) -> RasterServer:
    """Start the API in a background thread (port 0 = any free port); ``close()`` when done."""
    return RasterServer(scene, host, port).start()


class RasterClient:
    """``POST /api/raster`` with one keep-alive connection."""

    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(timeout=timeout_s)

    def raster(self, flat_params: dict[str, Any]) -> bytes:
        try:
            r = self._client.post(f"{self.url}/api/raster", json=flat_params)
        except httpx.HTTPError as e:
            raise StyleSearchError(
                f"renderer API at {self.url} is unreachable ({type(e).__name__}); start it first"
            ) from None
        if r.status_code != 200:
            try:
                msg = r.json().get("error", r.text)
            except ValueError:
                msg = r.text
            raise StyleSearchError(f"renderer API refused the parameters (HTTP {r.status_code}): {msg}")
        return r.content

    def close(self) -> None:
        self._client.close()
