"""Serve an exported map directory over HTTP (the DZI pyramid, its sidecar and the viewer page).

Python's threaded ``http.server`` is enough for a local viewer and has no dependencies; this adds what
a tile viewer needs from it: exact MIME types (.dzi, .webp, .pmtiles are unknown to ``mimetypes`` on
many systems), revalidating cache headers (tiles are rewritten in place by incremental updates, so they
must not be cached as immutable), single byte ranges (PMTiles clients read archives by range), and no
hidden files (the pyramid manifest and lock live beside the tiles).
"""

from __future__ import annotations

import email.utils
import http.server
import os
import re
import socket
import threading
import urllib.parse
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, AnyStr, BinaryIO

if TYPE_CHECKING:
    from _typeshed import SupportsRead, SupportsWrite

__all__ = ["MIME_TYPES", "MapServer", "serve", "start_server"]

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
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = MIME_TYPES
    server_version = "isonyc-serve"
    protocol_version = "HTTP/1.1"  # keep-alive: a viewer fetches hundreds of tiles

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base-class signature
        if not getattr(self.server, "quiet", True):
            super().log_message(format, *args)

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
        if self._hidden():
            self.send_error(404, "File not found")
            return None
        path = self.translate_path(self.path)
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

    def __init__(
        self,
        directory: str | os.PathLike[str],
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        quiet: bool = True,
    ):
        root = Path(directory)
        if not root.is_dir():
            raise FileNotFoundError(
                f"map directory {root} does not exist; build the pyramid and write the viewer into it first"
            )
        self.root = root.resolve()
        self.quiet = quiet
        if ":" in host:
            self.address_family = socket.AF_INET6
        self._thread: threading.Thread | None = None
        try:
            super().__init__((host, port), partial(_Handler, directory=str(self.root)))
        except OSError as e:
            raise OSError(
                f"cannot listen on {host}:{port} ({e.strerror}); choose another port with port="
            ) from e
        # The bound address (port 0 picks one), read once so the URL stays known after close().
        bound_host, bound_port = self.socket.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self._url = f"http://{shown}:{bound_port}/"

    @property
    def url(self) -> str:
        """Where to point a browser."""
        return self._url

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


def start_server(directory: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 0) -> MapServer:
    """Start serving ``directory`` in the background (port 0 = any free port); close() when done."""
    return MapServer(directory, host, port).start()


def serve(
    directory: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8000, *, quiet: bool = False
) -> str:
    """Serve ``directory`` until Ctrl-C; prints and returns the URL. Binds to localhost unless told otherwise."""
    server = MapServer(directory, host, port, quiet=quiet)
    url = server.url
    print(f"Serving {server.root} at {url}  (Ctrl-C to stop)", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"Note: listening on {host}, so other machines on the network can read this map.", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return url
