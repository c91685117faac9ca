"""Serve an exported map directory over HTTP (the DZI pyramid, its sidecar and the viewer page).

Python's threaded ``http.server`` is enough for a local viewer and has no dependencies; this adds what
a tile viewer needs from it: exact MIME types (.dzi, .webp, .pmtiles are unknown to ``mimetypes`` on
many systems), revalidating cache headers (tiles are rewritten in place by incremental updates, so they
must not be cached as immutable), single byte ranges (PMTiles clients read archives by range), and no
hidden files (the pyramid manifest and lock live beside the tiles).

With ``api`` it also mounts an application at ``/api/`` (the map console, ``cli.console``), and with
``dagster_url`` it serves every sidecar with that Dagster UI URL, so the viewer's links follow the URL given at serve
time, not the one baked in when the map was exported.

It also refuses what a plain ``http.server`` lets through: symlinks are resolved and anything outside the map
directory is a 404; there are no directory listings; a path with a NUL, a control character or broken
percent-encoding is a 400; idle keep-alive connections are closed after ``idle_timeout_s``; and the listen backlog
is ``LISTEN_BACKLOG`` instead of 5 (with 5, bursts of 50 connections waited for SYN retransmits: p99 of 4–5 s).
"""

from __future__ import annotations

import email.utils
import http.server
import io
import json
import os
import re
import socket
import sys
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, AnyStr, BinaryIO

if TYPE_CHECKING:
    from _typeshed import SupportsRead, SupportsWrite

__all__ = [
    "DEFAULT_IDLE_TIMEOUT_S",
    "LISTEN_BACKLOG",
    "MIME_TYPES",
    "ApiHandler",
    "ApiResponse",
    "MapServer",
    "serve",
    "start_server",
]

#: Seconds a connection may sit without sending a request before the server closes it (and frees its thread).
DEFAULT_IDLE_TIMEOUT_S = 5.0
#: Pending connections the kernel queues before accepting (it caps this at net.core.somaxconn).
LISTEN_BACKLOG = 1024

MIME_TYPES = {
    ".dzi": "application/xml",
    ".xml": "application/xml",
    ".json": "application/json",
    ".png": "image/png",
    ".webp": "image/webp",
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".map": "application/json",
    ".pmtiles": "application/vnd.pmtiles",
    "": "application/octet-stream",
}
#: Largest request body the ``/api/`` application is given (an edited 2×2 PNG is a few MiB).
MAX_API_BODY = 64 << 20


@dataclass(frozen=True)
class ApiResponse:
    """What the ``/api/`` application answers."""

    status: int
    body: bytes
    content_type: str = "application/json"


#: ``(method, path with query, request headers (lower-case names), body) → response``: the application at ``/api/``.
ApiHandler = Callable[[str, str, Mapping[str, str], bytes], ApiResponse]

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def path_problem(raw: str) -> str | None:
    """Why a request target cannot name a file of the map (None when it can): the reason of a 400."""
    if not raw.startswith("/"):
        return "the request path must start with '/'"
    path = raw.split("?", 1)[0].split("#", 1)[0]
    if _BAD_ESCAPE.search(path):
        return "malformed percent-encoding in the path"
    try:
        decoded = urllib.parse.unquote(path, errors="strict")
    except UnicodeDecodeError:
        return "the path is not UTF-8 after percent-decoding"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
        return "NUL or another control character in the path"
    return None


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = MIME_TYPES
    server_version = "isonyc-serve"
    protocol_version = "HTTP/1.1"  # keep-alive: a viewer fetches hundreds of tiles

    def setup(self) -> None:
        super().setup()
        # With a socket timeout an idle keep-alive connection ends in handle_one_request's "Request timed out"
        # instead of holding its thread forever.
        self.connection.settimeout(getattr(self.server, "idle_timeout_s", DEFAULT_IDLE_TIMEOUT_S))

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base-class signature
        if not getattr(self.server, "quiet", True):
            super().log_message(format, *args)

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        problem = path_problem(self.path)
        if problem is not None:
            self.send_error(400, problem)
            return False
        return True

    def do_GET(self) -> None:
        if not self._api("GET") and not self._sidecar():
            super().do_GET()

    def do_POST(self) -> None:
        if not self._api("POST"):
            self.send_error(405, "Method not allowed")

    def _api(self, method: str) -> bool:
        """Hand ``/api/...`` to the mounted application; False when there is none or the path is another."""
        api: ApiHandler | None = getattr(self.server, "api", None)
        if api is None or not (self.path == "/api" or self.path.startswith("/api/")):
            return False
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = -1
        if not 0 <= n <= MAX_API_BODY:
            self.send_error(413 if n > 0 else 400, f"request body must be 0-{MAX_API_BODY} bytes")
            return True
        headers = {k.lower(): v for k, v in self.headers.items()}
        res = api(method, self.path, headers, self.rfile.read(n) if n else b"")
        self.send_response(res.status)
        self.send_header("Content-Type", res.content_type)
        self.send_header("Content-Length", str(len(res.body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(res.body)
        return True

    def _sidecar(self) -> bool:
        """Serve a top-level sidecar (``<name>.json`` with a ``dagster`` section) with the serve-time Dagster URL."""
        url = getattr(self.server, "dagster_url", None)
        path = self.translate_path(self.path) if url else ""
        top_json = path.endswith(".json") and os.path.dirname(path) == self.directory
        if not path or self._hidden() or not top_json:
            return False
        try:
            side = json.loads(Path(path).read_bytes())
        except (OSError, ValueError):
            return False
        if not isinstance(side, dict) or not isinstance(side.get("dagster"), dict):
            return False
        side["dagster"]["url"] = url
        body = json.dumps(side, indent=2).encode()
        self.send_response(200)
        self.send_header("Content-Type", MIME_TYPES[".json"])
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return True

    def translate_path(self, path: str) -> str:
        """The file's real path (every symlink resolved); "" when that lies outside the map directory or is hidden."""
        root = self.directory
        real = os.path.realpath(super().translate_path(path))
        if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
            return ""
        if any(part.startswith(".") for part in Path(real).relative_to(root).parts):
            return ""
        return real

    def list_directory(self, path: str | os.PathLike[str]) -> io.BytesIO | None:
        # A map directory is served as files, never browsed.
        self.send_error(404, "File not found")
        return None

    def _hidden(self) -> bool:
        path = urllib.parse.unquote(self.path.split("?", 1)[0].split("#", 1)[0])
        return any(part.startswith(".") for part in path.split("/") if part)

    def end_headers(self) -> None:
        # Revalidate every time: cheap 304s locally, never a stale tile after update_pyramid.
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Access-Control-Allow-Origin", "*")
        super().end_headers()

    def send_head(self) -> BinaryIO | None:
        self._remaining: int | None = None
        self._pending_etag: str | None = None
        path = self.translate_path(self.path)
        if self._hidden() or not path:
            self.send_error(404, "File not found")
            return None
        if os.path.isdir(path) or "Range" not in self.headers:
            return self._with_etag(path)
        return self._range(path)

    def _etag(self, path: str) -> str | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'

    def _with_etag(self, path: str) -> BinaryIO | None:
        etag = None if os.path.isdir(path) else self._etag(path)
        if etag is not None and self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        self._pending_etag = etag
        return super().send_head()

    def send_header(self, keyword: str, value: str) -> None:
        super().send_header(keyword, value)
        # Add ETag and Accept-Ranges right after Last-Modified, which the base class sends for every file.
        if keyword == "Last-Modified":
            etag = getattr(self, "_pending_etag", None)
            if etag:
                super().send_header("ETag", etag)
                self._pending_etag = None
            if getattr(self, "_remaining", None) is None:
                super().send_header("Accept-Ranges", "bytes")

    def _range(self, path: str) -> BinaryIO | None:
        m = _RANGE.match(self.headers["Range"].strip())
        try:
            f = open(path, "rb")  # noqa: SIM115 - returned to the base class, which closes it
        except OSError:
            self.send_error(404, "File not found")
            return None
        size = os.fstat(f.fileno()).st_size
        start, end = (m.group(1), m.group(2)) if m else ("", "")
        if not m or (not start and not end):
            f.close()
            self.send_error(416, "Only single byte ranges are supported")
            return None
        if start:
            a, b = int(start), (int(end) if end else size - 1)
        else:  # suffix range: the last N bytes
            a, b = max(0, size - int(end)), size - 1
        b = min(b, size - 1)
        if a > b or a >= size:
            f.close()
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        f.seek(a)
        self._pending_etag = self._etag(path)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {a}-{b}/{size}")
        self.send_header("Content-Length", str(b - a + 1))
        self._remaining = b - a + 1
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", email.utils.formatdate(os.fstat(f.fileno()).st_mtime, usegmt=True))
        self.end_headers()
        return f

    def copyfile(self, source: SupportsRead[AnyStr], outputfile: SupportsWrite[AnyStr]) -> None:
        remaining = getattr(self, "_remaining", None)
        if remaining is None:
            return super().copyfile(source, outputfile)
        self._remaining = None
        while remaining > 0:
            chunk = source.read(min(remaining, 1 << 16))
            if not chunk:
                break
            outputfile.write(chunk)
            remaining -= len(chunk)


class MapServer(http.server.ThreadingHTTPServer):
    """A threaded static server for one directory; ``url`` is where to point a browser."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self,
        directory: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        quiet: bool = True,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        api: ApiHandler | None = None,
        dagster_url: str | None = None,
    ):
        root = Path(directory)
        if not root.is_dir():
            raise FileNotFoundError(
                f"map directory {root} does not exist; build the pyramid and write the viewer into it first"
            )
        if not (isinstance(port, int) and 0 <= port <= 65535):
            raise ValueError(f"port {port!r} is out of range; give 1-65535 (0 = any free port)")
        if not (isinstance(idle_timeout_s, int | float) and 0 < idle_timeout_s < float("inf")):
            raise ValueError(f"idle_timeout_s must be a number of seconds > 0, got {idle_timeout_s!r}")
        self.root = root.resolve()
        self.quiet = quiet
        self.idle_timeout_s = float(idle_timeout_s)
        self.api = api
        self.dagster_url = dagster_url.rstrip("/") if dagster_url else None
        if ":" in host:
            self.address_family = socket.AF_INET6
        self._thread: threading.Thread | None = None
        try:
            super().__init__((host, port), partial(_Handler, directory=str(self.root)))
        except OSError as e:
            raise OSError(
                f"cannot listen on {host}:{port} ({e.strerror}); choose another port or host (--port/--host)"
            ) from e
        # The bound address (port 0 picks one), read once so the URL stays known after close().
        bound_host, bound_port = self.socket.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self._url = f"http://{shown}:{bound_port}/"

    @property
    def url(self) -> str:
        """Where to point a browser."""
        return self._url

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up or stalls mid-response is routine for a tile server, not worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)

    def start(self) -> MapServer:
        """Serve on a background daemon thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name="isonyc-serve", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()

    def __enter__(self) -> MapServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_server(
    directory: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    api: ApiHandler | None = None,
    dagster_url: str | None = None,
) -> MapServer:
    """Start serving ``directory`` in the background (port 0 = any free port); close() when done."""
    return MapServer(directory, host, port, api=api, dagster_url=dagster_url).start()


def serve(
    directory: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    quiet: bool = False,
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    api: ApiHandler | None = None,
    dagster_url: str | None = None,
    banner: str = "",
) -> str:
    """Serve ``directory`` until Ctrl-C; prints and returns the URL. Binds to localhost unless told otherwise.
    ``banner`` is printed after the URL (the console's token)."""
    server = MapServer(
        directory, host, port, quiet=quiet, idle_timeout_s=idle_timeout_s, api=api, dagster_url=dagster_url
    )
    url = server.url
    print(f"Serving {server.root} at {url}  (Ctrl-C to stop)", flush=True)
    if banner:
        print(banner, flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"Note: listening on {host}, so other machines on the network can read this map.", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return url
