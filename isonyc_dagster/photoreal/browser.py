"""The photoreal renderer: a long-lived headless Chromium with a pool of pages running three.js and
3d-tiles-renderer, driven by Playwright.

- Camera: ``camera.camera_for_window`` (the whitebox's projection, fitted in ECEF).
- Completeness: the page renders only once the tiles renderer reports nothing queued, downloading, parsing or
  refused for two consecutive updates at the target screen-space error; a tile that fails to load, or a frame
  still incomplete at the time limit, is an error (never a screenshot of a partial frame).
- Faults: a failed attempt (load error, time limit, crashed page, crashed browser) is recorded and retried on a
  fresh page (and a fresh browser if Chromium died); after ``retries`` it raises ``PhotorealRenderError``.
- Requests: every request of every page goes through one route handler. Page assets come from node_modules
  (``npm ci``; never committed); tiles come from the ``TileCache`` or the network via httpx, with credentials
  added by the source (the page never sees a key).

Playwright's async API runs on a private event loop in a daemon thread, so pages render concurrently and tile
fetches overlap; the public methods are synchronous and thread-safe.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Coroutine, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import numpy as np

from isonyc_dagster.errors import IsonycError
from isonyc_dagster.geo.geometry import MapGeometry
from isonyc_dagster.images import decode_rgb
from isonyc_dagster.photoreal.cache import TileCache
from isonyc_dagster.photoreal.camera import camera_for_window
from isonyc_dagster.photoreal.sources import TileSource, strip_secrets

log = logging.getLogger(__name__)
T = TypeVar("T")

_HERE = Path(__file__).resolve().parent
_REPO = _HERE.parents[1]
PAGE_DIR = _HERE / "page"
#: The page's origin: never resolved, every request to it is answered by the route handler.
ORIGIN = "http://photoreal.isonyc.invalid"
NODE_MODULES_ENV = "ISONYC_NODE_MODULES"
CHROMIUM_ENV = "ISONYC_CHROMIUM"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
#: Packages the page imports (served read-only from node_modules).
PACKAGES = ("three", "3d-tiles-renderer")
#: WebGL without a GPU: ANGLE on SwiftShader (software Vulkan), which Debian's Chromium ships.
CHROMIUM_ARGS = (
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
    "--force-color-profile=srgb",
    "--disable-gpu-vsync",
)
_CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".wasm": "application/wasm",
    ".json": "application/json",
}
_CORS = {"access-control-allow-origin": "*"}


class PhotorealError(IsonycError, RuntimeError):
    """The photoreal renderer cannot run (no Chromium, no three.js in node_modules)."""


class PhotorealRenderError(PhotorealError):
    """A window could not be rendered completely within the limit, after all retries."""

    def __init__(self, message: str, attempts: list[str]) -> None:
        super().__init__(message)
        self.attempts = attempts


def find_node_modules(path: str | os.PathLike[str] | None = None) -> Path:
    """The node_modules directory holding three and 3d-tiles-renderer: ``path``, ``$ISONYC_NODE_MODULES``, the
    repository's or the working directory's."""
    tried = [Path(path)] if path is not None else []
    if path is None and os.environ.get(NODE_MODULES_ENV):
        tried.append(Path(os.environ[NODE_MODULES_ENV]))
    if path is None:
        tried += [_REPO / "node_modules", Path.cwd() / "node_modules"]
    for d in tried:
        if (d / "three/build/three.module.js").is_file() and (
            d / "3d-tiles-renderer/build/index.js"
        ).is_file():
            return d.resolve()
    raise PhotorealError(
        "three.js and 3d-tiles-renderer not found (looked in " + ", ".join(str(d) for d in tried) + "). "
        f"Run `npm ci` in the repository root {_REPO} (needs Node.js), or set {NODE_MODULES_ENV}."
    )


def package_versions(node_modules: Path) -> dict[str, str]:
    return {p: json.loads((node_modules / p / "package.json").read_text())["version"] for p in PACKAGES}


@dataclass
class PhotorealResult:
    """One rendered window: RGB pixels, its world-pixel origin and the render's provenance."""

    rgb: np.ndarray
    origin_px: tuple[int, int]
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RenderSettings:
    ground_height_m: float = -31.3
    error_target: float = 8.0
    timeout_s: float = 60.0
    retries: int = 2
    pages: int = 2
    background: str = "#87ceeb"
    fetch_timeout_s: float = 30.0


class _Loop:
    """An asyncio loop in a daemon thread; ``run`` submits a coroutine and waits for its result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="photoreal-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class PhotorealRenderer:
    """Renders windows of the map from a 3D tileset, exactly aligned with the whitebox. Use as a context
    manager or call ``close``. ``fresh_browser`` launches a new Chromium per window (the original's way;
    only for benchmarks)."""

    def __init__(
        self,
        geometry: MapGeometry,
        source: TileSource,
        settings: RenderSettings | None = None,
        *,
        cache: TileCache | None = None,
        node_modules: str | os.PathLike[str] | None = None,
        chromium: str | None = None,
        fresh_browser: bool = False,
    ) -> None:
        self.geometry = geometry
        self.source = source
        self.settings = settings or RenderSettings()
        self.cache = cache
        self.node_modules = find_node_modules(node_modules)
        self.versions = package_versions(self.node_modules)
        self.chromium = chromium or os.environ.get(CHROMIUM_ENV) or DEFAULT_CHROMIUM
        if not Path(self.chromium).is_file():
            raise PhotorealError(
                f"Chromium not found at {self.chromium}: install it (apt-get install chromium) or set {CHROMIUM_ENV}"
            )
        self.fresh_browser = fresh_browser
        self.browser_launches = 0
        self.pages_created = 0
        self.fetch_errors: deque[str] = deque(maxlen=100)
        self._lock = threading.Lock()
        self._loop: _Loop | None = None
        self._pw: Any = None
        self._browser: Any = None
        self._context: Any = None
        self._idle: list[Any] = []
        self._sem: asyncio.Semaphore | None = None
        self._launching: asyncio.Lock | None = None
        self._http: httpx.AsyncClient | None = None

    # --- public, synchronous -----------------------------------------------------------------------
    def render_window(self, px0: int, py0: int, width: int, height: int) -> PhotorealResult:
        return self.render_windows([(px0, py0, width, height)])[0]

    def render_quadrant(self, x: int, y: int) -> PhotorealResult:
        q = self.geometry.q
        return self.render_window(x * q, y * q, q, q)

    def render_tile(self, x: int, y: int) -> PhotorealResult:
        q = self.geometry.q
        return self.render_window(x * q, y * q, 2 * q, 2 * q)

    def render_quadrants(self, keys: Sequence[tuple[int, int]]) -> list[PhotorealResult]:
        q = self.geometry.q
        return self.render_windows([(x * q, y * q, q, q) for x, y in keys])

    def render_windows(self, windows: Sequence[tuple[int, int, int, int]]) -> list[PhotorealResult]:
        """Render windows concurrently on the page pool; raises PhotorealRenderError if any fails for good."""
        with self._lock:
            if self._loop is None:
                self._loop = _Loop()
            return self._loop.run(self._render_all([tuple(int(v) for v in w) for w in windows]))

    def close(self) -> None:
        with self._lock:
            if self._loop is None:
                return
            self._loop.run(self._shutdown())
            self._loop.stop()
            self._loop = None

    def __enter__(self) -> PhotorealRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- browser and pages ---------------------------------------------------------------------------
    async def _launch(self) -> None:
        from playwright.async_api import async_playwright

        if self._pw is None:
            self._pw = await async_playwright().start()
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.settings.fetch_timeout_s, follow_redirects=True)
        if self._sem is None:
            self._sem = asyncio.Semaphore(max(1, self.settings.pages))
        self._browser = await self._pw.chromium.launch(
            executable_path=self.chromium, headless=True, args=list(CHROMIUM_ARGS)
        )
        self.browser_launches += 1
        self._context = await self._browser.new_context(
            device_scale_factor=1, viewport={"width": 64, "height": 64}
        )
        await self._context.route("**/*", self._route)
        self._idle = []

    async def _new_page(self) -> Any:
        if self._launching is None:
            self._launching = asyncio.Lock()
        async with self._launching:  # pages asking at once after a browser crash relaunch it once
            if self._browser is None or not self._browser.is_connected():
                await self._close_browser()
                await self._launch()
        page = await self._context.new_page()
        self.pages_created += 1
        await page.goto(f"{ORIGIN}/index.html")
        await page.wait_for_function("window.isonycReady === true", timeout=30_000)
        return page

    async def _close_browser(self) -> None:
        browser, self._browser, self._context, self._idle = self._browser, None, None, []
        if browser is not None:
            try:
                await browser.close()
            except Exception:  # noqa: BLE001 — a crashed browser may refuse even to close
                log.debug("closing a dead browser failed", exc_info=True)

    async def _shutdown(self) -> None:
        await self._close_browser()
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._pw is not None:
            await self._pw.stop()
            self._pw = None

    # --- requests --------------------------------------------------------------------------------------
    async def _route(self, route: Any) -> None:
        url = route.request.url
        try:
            if url.startswith(ORIGIN + "/"):
                await self._serve_asset(route, urlsplit(url).path)
            else:
                await self._serve_tile(route, url)
        except Exception as e:  # noqa: BLE001 — the page may have crashed or closed while we fetched
            log.debug("request %s not answered: %s", strip_secrets(url), redact(str(e)))

    async def _serve_asset(self, route: Any, path: str) -> None:
        if path.startswith("/nm/"):
            pkg, _, rest = path[4:].partition("/")
            base = self.node_modules / pkg if pkg in PACKAGES else None
        else:
            base, rest = PAGE_DIR, path.lstrip("/")
        target = (base / rest).resolve() if base is not None else None
        if (
            target is None
            or base is None
            or not target.is_relative_to(base.resolve())
            or not target.is_file()
        ):
            await route.fulfill(status=404, body=f"not found: {path}")
            return
        ctype = _CONTENT_TYPES.get(target.suffix, "application/octet-stream")
        await route.fulfill(status=200, body=target.read_bytes(), headers={"content-type": ctype})

    async def _serve_tile(self, route: Any, url: str) -> None:
        public = strip_secrets(url)
        key = self.source.cache_key(url)
        if route.request.method == "GET" and self.cache is not None:
            hit = await asyncio.to_thread(self.cache.get, key)
            if hit is not None:
                await route.fulfill(status=200, body=hit[1], headers={**hit[0], **_CORS})
                return
        assert self._http is not None
        try:
            resp = await self._http.get(self.source.request_url(url))
        except httpx.HTTPError as e:
            # Name the public URL and the failure kind only: httpx's message would carry the keyed URL.
            msg = f"{public}: {type(e).__name__}"
            self.fetch_errors.append(msg)
            await route.fulfill(status=504, body=msg, headers=_CORS)
            return
        body = resp.content
        if resp.status_code == 200:
            self.source.note_response(url, body)
            if self.cache is not None:
                await asyncio.to_thread(self.cache.put, key, dict(resp.headers), body)
        else:
            self.fetch_errors.append(f"{public}: HTTP {resp.status_code}")
        ctype = resp.headers.get("content-type", "application/octet-stream")
        await route.fulfill(status=resp.status_code, body=body, headers={"content-type": ctype, **_CORS})

    # --- rendering -------------------------------------------------------------------------------------
    async def _render_all(self, windows: list[tuple[int, ...]]) -> list[PhotorealResult]:
        if self._pw is None:
            await self._launch()
        # Let every window settle before raising, so no render is left running on a page being closed.
        out = await asyncio.gather(*(self._render_with_retries(w) for w in windows), return_exceptions=True)
        for r in out:
            if isinstance(r, BaseException):
                raise r
        return [r for r in out if isinstance(r, PhotorealResult)]

    async def _render_with_retries(self, window: tuple[int, ...]) -> PhotorealResult:
        s = self.settings
        px0, py0, width, height = window
        cam = camera_for_window(self.geometry, px0, py0, width, height, s.ground_height_m)
        spec = {
            **cam.to_json(),
            "url": self.source.url,
            "errorTarget": s.error_target,
            "timeoutMs": s.timeout_s * 1000.0,
            "background": s.background,
        }
        failures: list[str] = []
        for attempt in range(1, s.retries + 2):
            t0 = time.perf_counter()
            try:
                out = await self._attempt(spec)
            except _AttemptFailed as e:
                failures.append(f"attempt {attempt}: {e}")
                log.warning("photoreal window %s attempt %d failed: %s", window, attempt, e)
                continue
            rgb = decode_rgb(base64.b64decode(out["png"].split(",", 1)[1]))
            prov = {
                "source": self.source.describe(),
                "attribution": "; ".join(p for p in (self.source.attribution, out["attribution"]) if p),
                "error_target_px": s.error_target,
                "ground_height_m": s.ground_height_m,
                "window": list(window),
                "camera_fit_residual_px": round(cam.residual_px, 4),
                "tiles": out["stats"],
                "updates": out["updates"],
                "timings_ms": {
                    "load": round(out["loadMs"], 1),
                    "draw": round(out["drawMs"], 1),
                    "total": round((time.perf_counter() - t0) * 1000.0, 1),
                },
                "attempts": attempt,
                "failures": failures,
                "software": {**self.versions, "gl": out["gl"]},
            }
            return PhotorealResult(rgb=rgb, origin_px=(int(window[0]), int(window[1])), provenance=prov)
        raise PhotorealRenderError(
            f"photoreal render of window {list(window)} from {strip_secrets(self.source.url)} failed after "
            f"{len(failures)} attempt(s): {failures[-1]}",
            failures,
        )

    async def _attempt(self, spec: dict) -> dict:
        assert self._sem is not None
        async with self._sem:
            if self.fresh_browser:
                await self._close_browser()
                await self._launch()
            try:
                page = self._idle.pop() if self._idle else await self._new_page()
            except Exception as e:  # noqa: BLE001 — Playwright raises plain Errors for a dead browser
                await self._close_browser()
                raise _AttemptFailed(f"could not open a page: {_first_line(e)}") from None
            crashed = asyncio.Event()

            def on_crash(_page: Any) -> None:
                crashed.set()

            page.on("crash", on_crash)
            try:
                out = await asyncio.wait_for(
                    page.evaluate("spec => window.isonycRender(spec)", spec),
                    spec["timeoutMs"] / 1000.0 + 15.0,
                )
            except TimeoutError:
                await _discard(page)
                raise _AttemptFailed("page did not answer within the time limit; page discarded") from None
            except Exception as e:  # noqa: BLE001 — JS errors, crashes and closed targets all arrive as Error
                browser_dead = not (self._browser and self._browser.is_connected())
                dead = crashed.is_set() or page.is_closed() or browser_dead
                await _discard(page)
                if (
                    browser_dead
                ):  # Chromium itself died: its idle pages are gone too; the next page relaunches it
                    await self._close_browser()
                if dead:
                    raise _AttemptFailed(
                        f"page crashed ({_first_line(e)}); retrying on a fresh page"
                    ) from None
                raise _AttemptFailed(_first_line(e)) from None
            page.remove_listener("crash", on_crash)
            self._idle.append(page)
            return out


class _AttemptFailed(Exception):
    pass


async def _discard(page: Any) -> None:
    try:
        await page.close()
    except Exception:  # noqa: BLE001 — a crashed page may not close cleanly
        log.debug("closing a failed page", exc_info=True)


_SECRET_RE = re.compile(
    r"([?&](?:key|session|token|access_token|apikey|api_key)=)[^&\s;:,)'\"]*", re.IGNORECASE
)


def redact(text: str) -> str:
    """``text`` with the values of credential query parameters in any URL it quotes replaced by ``…``."""
    return _SECRET_RE.sub(r"\1…", text)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else type(e).__name__
    return redact(msg.removeprefix("Error: ").removeprefix("Page.evaluate: ").removeprefix("Error: "))
