"""Real HTTP servers on 127.0.0.1 that speak each model API's wire format, with fault injection.

Each fake runs ``http.server.ThreadingHTTPServer`` in a daemon thread on a free port. It answers with
a plausible edit (the template with the red-outlined infill repainted as flat-shaded "pixel art" and
the border removed), and pops one queued *fault* per request:

==================  ===========================================================================
``"429"``           HTTP 429 with ``Retry-After: <retry_after>`` (Google fakes: RESOURCE_EXHAUSTED)
``"429-info"``      Google only: 429 whose delay is in ``error.details[].RetryInfo.retryDelay``
``"500"``/``"503"`` server error (plain text / Google error JSON)
``"timeout"``       sleep ``delay`` s before a normal answer (past the client's read timeout)
``"truncated"``     a PNG cut in half
``"wrong_size"``    a PNG of half the template size
``"transparent"``   an RGBA PNG with transparent pixels
``"garbage_json"``  HTTP 200 with a body that is not JSON
``"schema"``        HTTP 200 JSON of the wrong shape
``"bad_b64"``       the image field is not base64
``"echo_secret"``   HTTP 500 whose body repeats every request header (keys included)
``"401"``           HTTP 401
``"no_image"``      Google only: a candidate with text but no image (finishReason STOP)
``"safety"``        Google only: finishReason IMAGE_SAFETY, no image
``"thought_only"``  Google only: only a draft ``thought`` image
==================  ===========================================================================
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
from PIL import Image
from pydantic import BaseModel

from isonyc_dagster.images import decode_rgb, png_bytes

# --------------------------------------------------------------------------------------------------
# images


def make_template(
    size: int = 64, box: tuple[int, int, int, int] | None = None, seed: int = 0
) -> tuple[bytes, tuple]:
    """A small template: textured "context" with a render inside ``box`` outlined by a 2 px red border."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    arr = np.stack([(xx * 3) % 200 + 20, (yy * 5) % 180 + 30, ((xx + yy) * 2) % 160 + 40], -1).astype(
        np.uint8
    )
    arr = np.clip(arr.astype(int) + rng.integers(-6, 7, arr.shape), 0, 254).astype(np.uint8)  # never pure red
    box = box or (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = arr[y0:y1, x0:x1] // 2 + 60  # "render" pixels
    for i in range(2):
        arr[y0 + i, x0:x1] = (255, 0, 0)
        arr[y1 - 1 - i, x0:x1] = (255, 0, 0)
        arr[y0:y1, x0 + i] = (255, 0, 0)
        arr[y0:y1, x1 - 1 - i] = (255, 0, 0)
    return png_bytes(arr), box


def edit_template(template_png: bytes, seed: int | None = 0) -> bytes:
    """A plausible model edit: repaint the red-outlined box in a 4-level seed-tinted palette, border gone."""
    arr = decode_rgb(template_png)
    red = (arr[..., 0] == 255) & (arr[..., 1] == 0) & (arr[..., 2] == 0)
    if red.any():
        ys, xs = np.nonzero(red)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        region = arr[y0:y1, x0:x1].astype(int)
        # Replace the border by the nearest inner pixels, then posterize: "pixel art".
        region[:2], region[-2:] = region[2:4], region[-4:-2]
        region[:, :2], region[:, -2:] = region[:, 2:4], region[:, -4:-2]
        tint = np.array([(seed or 0) * 7 % 32, (seed or 0) * 13 % 32, (seed or 0) * 3 % 32])
        arr[y0:y1, x0:x1] = np.clip((region // 48) * 48 + 24 + tint, 0, 254).astype(np.uint8)
    return png_bytes(arr)


def corrupt(kind: str, good_png: bytes) -> bytes:
    """The broken variants of an answer image used by the image faults."""
    if kind == "truncated":
        return good_png[: len(good_png) // 2]
    arr = decode_rgb(good_png)
    h, w = arr.shape[:2]
    if kind == "wrong_size":
        return png_bytes(arr[: h // 2, : w // 2])
    if kind == "transparent":
        rgba = np.dstack([arr, np.full((h, w), 255, np.uint8)])
        rgba[0, 0, 3] = 0
        return png_bytes(rgba)
    raise ValueError(kind)


IMAGE_FAULTS = {"truncated", "wrong_size", "transparent"}


# --------------------------------------------------------------------------------------------------
# server base


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class FakeApi:
    """Base: a threaded HTTP server with a fault queue and a record of every request."""

    def __init__(self, *, retry_after: float = 0.3, delay: float = 1.0) -> None:
        self.faults: deque[str] = deque()
        self.requests: list[Recorded] = []
        self.retry_after = retry_after
        self.delay = delay
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                rec = Recorded(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    time.monotonic(),
                )
                with api._lock:
                    api.requests.append(rec)
                try:
                    reply = api.dispatch(rec)
                except Exception as e:  # a bug in a fake must show up as a 500, not a hang
                    reply = Reply(500, f"fake server bug: {e!r}".encode())
                if reply.delay:
                    time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def next_fault(self) -> str | None:
        with self._lock:
            return self.faults.popleft() if self.faults else None

    def api_requests(self, path_part: str = "") -> list[Recorded]:
        return [r for r in self.requests if path_part in r.path]

    # -- generic replies ---------------------------------------------------------------------------
    def generic_fault(self, fault: str, rec: Recorded) -> Reply | None:
        if fault == "429":
            return Reply(
                429,
                b'{"detail": "rate limited"}',
                {"Retry-After": f"{self.retry_after:g}", "Content-Type": "application/json"},
            )
        if fault in ("500", "503"):
            return Reply(int(fault), b"upstream exploded")
        if fault == "garbage_json":
            return Reply(200, b"{not json <html>", {"Content-Type": "application/json"})
        if fault == "schema":
            return Reply(200, b'{"unexpected": true}', {"Content-Type": "application/json"})
        if fault == "echo_secret":
            return Reply(500, json.dumps({"detail": f"bad request headers: {rec.headers}"}).encode())
        if fault == "401":
            return Reply(401, b'{"detail": "unauthorized"}')
        return None

    def dispatch(self, rec: Recorded) -> Reply:  # pragma: no cover - overridden
        raise NotImplementedError


def json_reply(obj: Any, status: int = 200, delay: float = 0.0) -> Reply:
    return Reply(status, json.dumps(obj).encode(), {"Content-Type": "application/json"}, delay)


# --------------------------------------------------------------------------------------------------
# Modal edit_b64


class FakeModal(FakeApi):
    """``POST /edit_b64`` like ``inference/server.py`` (optionally behind Modal proxy auth)."""

    def __init__(self, *, token_id: str | None = None, token_secret: str | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.token_id, self.token_secret = token_id, token_secret

    def dispatch(self, rec: Recorded) -> Reply:
        if self.token_id and (
            rec.headers.get("modal-key") != self.token_id
            or rec.headers.get("modal-secret") != self.token_secret
        ):
            return Reply(401, b"modal-http: missing credentials for proxy authorization")
        fault = self.next_fault()
        if fault and (r := self.generic_fault(fault, rec)):
            return r
        req = rec.json()
        seed = req["seed"] if req.get("seed") is not None else 1234
        img = edit_template(base64.b64decode(req["image_b64"]), seed)
        if fault in IMAGE_FAULTS:
            img = corrupt(fault, img)
        b64 = "!!not base64!!" if fault == "bad_b64" else base64.b64encode(img).decode()
        return json_reply(
            {"image_b64": b64, "seed": seed, "model_id": "fake-qwen", "lora": "fake-lora@v1"},
            delay=self.delay if fault == "timeout" else 0.0,
        )


# --------------------------------------------------------------------------------------------------
# Oxen images/edit


class FakeOxen(FakeApi):
    """``POST /api/images/edit`` (Bearer key); fetches ``input_image``; serves results at ``/results/<id>.png``.

    Extra faults: ``"result_403"`` (the result URL answers 403 once, as while Oxen publishes it),
    ``"result_truncated"`` (the first download is truncated), ``"input_unreachable"`` (Oxen's own
    error when it cannot fetch the input URL, which repeats the URL).
    """

    def __init__(self, *, api_key: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.api_key = api_key
        self.results: dict[str, bytes] = {}
        self.result_faults: dict[str, deque[str]] = {}
        self.fetched_inputs: list[str] = []
        self._n = 0

    def dispatch(self, rec: Recorded) -> Reply:
        m = re.fullmatch(r"/results/(\w+)\.png", rec.path)
        if rec.method == "GET" and m:
            rid = m.group(1)
            pending = self.result_faults.get(rid)
            fault = pending.popleft() if pending else None
            if fault == "result_403":
                return Reply(403, b"<Error>AccessDenied</Error>")
            data = self.results[rid]
            if fault == "result_truncated":
                data = data[: len(data) // 2]
            return Reply(200, data, {"Content-Type": "image/png"})
        if rec.method != "POST" or rec.path != "/api/images/edit":
            return Reply(404, b'{"error": "not found"}')
        if rec.headers.get("authorization") != f"Bearer {self.api_key}":
            return Reply(401, b'{"error": "Invalid API key"}')
        fault = self.next_fault()
        if fault and (r := self.generic_fault(fault, rec)):
            return r
        req = rec.json()
        for key in ("model", "input_image", "prompt"):
            if not isinstance(req.get(key), str) or not req[key]:
                return json_reply({"error": f"missing {key}"}, 400)
        if fault == "input_unreachable":
            return json_reply({"error": f"403 Client Error: Forbidden for url: {req['input_image']}"}, 400)
        src = httpx.get(req["input_image"], timeout=5)
        self.fetched_inputs.append(req["input_image"])
        if src.status_code != 200:
            return json_reply({"error": f"{src.status_code} Client Error for url: {req['input_image']}"}, 400)
        img = edit_template(src.content, 7)
        if fault in IMAGE_FAULTS:
            img = corrupt(fault, img)
        with self._lock:
            self._n += 1
            rid = f"r{self._n}"
        self.results[rid] = img
        if fault in ("result_403", "result_truncated"):
            self.result_faults[rid] = deque([fault])
        return json_reply(
            {
                "model": req["model"],
                "created": int(time.time()),
                "images": [{"url": f"{self.url}/results/{rid}.png"}],
            },
            delay=self.delay if fault == "timeout" else 0.0,
        )


# --------------------------------------------------------------------------------------------------
# Google generateContent (Gemini API and Vertex) and Vertex Imagen predict


def google_error(code: int, status: str, message: str, retry_delay: str | None = None) -> bytes:
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if retry_delay:
        err["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}]
    return json.dumps({"error": err}).encode()


def _inline_images(req: dict[str, Any]) -> list[bytes]:
    out = []
    for content in req.get("contents", []):
        for part in content.get("parts", []):
            d = part.get("inline_data") or part.get("inlineData")
            if d:
                out.append(base64.b64decode(d["data"]))
    return out


class _GoogleFake(FakeApi):
    def google_fault(self, fault: str, rec: Recorded) -> Reply | None:
        if fault == "429":
            return Reply(
                429,
                google_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
                {"Retry-After": f"{self.retry_after:g}", "Content-Type": "application/json"},
            )
        if fault == "429-info":
            return Reply(
                429,
                google_error(
                    429, "RESOURCE_EXHAUSTED", "Quota exceeded", retry_delay=f"{self.retry_after:g}s"
                ),
                {"Content-Type": "application/json"},
            )
        if fault == "503":
            return Reply(
                503,
                google_error(503, "UNAVAILABLE", "The model is overloaded."),
                {"Content-Type": "application/json"},
            )
        return self.generic_fault(fault, rec)

    def generate_content_reply(self, fault: str | None, req: dict[str, Any], model: str) -> Reply:
        images = _inline_images(req)
        if not images:
            return Reply(400, google_error(400, "INVALID_ARGUMENT", "no image in request"))
        seed = req.get("generationConfig", {}).get("seed", 0)
        img = edit_template(images[0], seed)
        if fault in IMAGE_FAULTS:
            img = corrupt(fault, img)
        data = "%%%" if fault == "bad_b64" else base64.b64encode(img).decode()
        image_part = {"inlineData": {"mimeType": "image/png", "data": data}}
        thought_part = {
            "inlineData": {
                "mimeType": "image/png",
                "data": base64.b64encode(corrupt("wrong_size", img)).decode(),
            },
            "thought": True,
        }
        if fault == "no_image":
            parts, finish = [{"text": "I cannot draw that, but here is a description."}], "STOP"
        elif fault == "safety":
            parts, finish = [], "IMAGE_SAFETY"
        elif fault == "thought_only":
            parts, finish = [thought_part], "STOP"
        else:
            parts, finish = [thought_part, {"text": "Here is the tile."}, image_part], "STOP"
        body = {
            "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish}],
            "modelVersion": model,
        }
        return json_reply(body, delay=self.delay if fault == "timeout" else 0.0)


class FakeGemini(_GoogleFake):
    """``POST /v1beta/models/{model}:generateContent`` with the key in ``x-goog-api-key``."""

    def __init__(self, *, api_key: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.api_key = api_key

    def dispatch(self, rec: Recorded) -> Reply:
        m = re.fullmatch(r"/v1beta/models/([\w.-]+):generateContent", rec.path)
        if rec.method != "POST" or not m:
            return Reply(404, google_error(404, "NOT_FOUND", f"no route {rec.path}"))
        if rec.headers.get("x-goog-api-key") != self.api_key:
            return Reply(
                400, google_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.")
            )
        fault = self.next_fault()
        if fault and (r := self.google_fault(fault, rec)):
            return r
        return self.generate_content_reply(fault, rec.json(), m.group(1))


class FakeVertex(_GoogleFake):
    """Vertex ``…/publishers/google/models/{model}:generateContent|predict`` with a Bearer token.

    ``model_faults[model]`` queues faults for one model (e.g. 429 on the primary only).
    """

    def __init__(self, *, token: str, project: str = "proj", location: str = "global", **kw: Any) -> None:
        super().__init__(**kw)
        self.token, self.project, self.location = token, project, location
        self.model_faults: dict[str, deque[str]] = {}

    def dispatch(self, rec: Recorded) -> Reply:
        m = re.fullmatch(
            rf"/v1/projects/{self.project}/locations/{self.location}/publishers/google/models/([\w.-]+):(generateContent|predict)",
            rec.path,
        )
        if rec.method != "POST" or not m:
            return Reply(404, google_error(404, "NOT_FOUND", f"no route {rec.path}"))
        if rec.headers.get("authorization") != f"Bearer {self.token}":
            return Reply(
                401, google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
            )
        model, method = m.groups()
        q = self.model_faults.get(model)
        fault = (q.popleft() if q else None) or self.next_fault()
        if fault and (r := self.google_fault(fault, rec)):
            return r
        req = rec.json()
        if method == "generateContent":
            return self.generate_content_reply(fault, req, model)
        inst = req["instances"][0]
        refs = {r["referenceType"]: r for r in inst["referenceImages"]}
        raw = base64.b64decode(refs["REFERENCE_TYPE_RAW"]["referenceImage"]["bytesBase64Encoded"])
        mask = np.array(
            Image.open(
                io.BytesIO(
                    base64.b64decode(refs["REFERENCE_TYPE_MASK"]["referenceImage"]["bytesBase64Encoded"])
                )
            )
        )
        arr = decode_rgb(raw)
        arr[mask > 0] = (arr[mask > 0] // 64) * 64 + 32  # repaint exactly the masked area
        img = png_bytes(arr)
        if fault in IMAGE_FAULTS:
            img = corrupt(fault, img)
        return json_reply(
            {
                "predictions": [
                    {"bytesBase64Encoded": base64.b64encode(img).decode(), "mimeType": "image/png"}
                ]
            },
            delay=self.delay if fault == "timeout" else 0.0,
        )


# --------------------------------------------------------------------------------------------------
# the original isometric.nyc edit_b64 server and client (interoperability), and a tiny pipeline for ours


class TinyPipeline:
    """Deterministic stand-in for Qwen-Image-Edit: repaints the red-outlined box, tinted by the seed.

    The pipeline of ``inference.server.create_app`` (``req`` is its ``EditRequest``).
    """

    model_id = "tiny-edit@test"
    lora = "tiny-lora@sha256:0000"

    def __init__(self, *, wrong_size: bool = False) -> None:
        self.calls: list[dict] = []
        self.images: list[Image.Image] = []
        self.wrong_size = wrong_size
        self._active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def __call__(self, image: Image.Image, req: Any, seed: int) -> Image.Image:
        with self._lock:
            self._active += 1
            self.max_active = max(self.max_active, self._active)
        try:
            self.calls.append(req.model_dump(exclude={"image_b64"}) | {"seed": seed})
            self.images.append(image.copy())
            out = Image.fromarray(decode_rgb(edit_template(png_bytes(np.asarray(image)), seed)))
            return out.resize((image.width // 2, image.height // 2)) if self.wrong_size else out
        finally:
            with self._lock:
                self._active -= 1


def encode(arr_or_png: np.ndarray | bytes, fmt: str, **save: Any) -> bytes:
    """An image (RGB array or PNG bytes) encoded as ``fmt`` with PIL's ``save`` options."""
    im = (
        Image.fromarray(arr_or_png)
        if isinstance(arr_or_png, np.ndarray)
        else Image.open(io.BytesIO(arr_or_png))
    )
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format=fmt, **save)
    return buf.getvalue()


class OriginalEditRequest(BaseModel):
    """The original server's request model (module level: FastAPI resolves the annotation by name)."""

    image_b64: str
    prompt: str
    negative_prompt: str | None = None
    true_cfg_scale: float = 2.0
    steps: int = 14
    guidance_scale: float = 3.0
    seed: int | None = None


def original_server_app(*, output: str = "PNG") -> Any:
    """The original isometric.nyc ``edit_b64`` server's wire format, as a FastAPI app, on a CPU "model".

    Request ``{"image_b64", "prompt", "negative_prompt"=None, "true_cfg_scale"=2.0, "steps"=14,
    "guidance_scale"=3.0, "seed"=None}`` (unknown fields ignored, pydantic's default); the input is
    decoded and converted to RGB (any format PIL reads); the output has the input's size and is
    answered as ``{"image_b64": <base64>}`` only: no seed (random when null), no model ids. ``output``
    is the answer's format ("PNG", or "JPEG" for a server that answers lossy). Faults in ``app.state.faults``
    ("wrong_size", "truncated") corrupt one answer each. ``app.state.calls`` records each request's seed
    used and input format.
    """
    from fastapi import FastAPI

    app = FastAPI()
    app.state.calls = []
    app.state.faults = deque()

    @app.post("/edit_b64")
    def edit_b64(req: OriginalEditRequest) -> dict[str, str]:
        src = Image.open(io.BytesIO(base64.b64decode(req.image_b64)))
        fmt = src.format
        image = src.convert("RGB")
        seed = req.seed if req.seed is not None else secrets.randbelow(2**32)
        app.state.calls.append({"seed": seed, "input_format": fmt, "steps": req.steps, "prompt": req.prompt})
        out = edit_template(png_bytes(np.asarray(image)), seed)
        fault = app.state.faults.popleft() if app.state.faults else None
        if fault == "wrong_size":
            out = corrupt("wrong_size", out)
        data = encode(out, "JPEG", quality=95) if output == "JPEG" else out
        if fault == "truncated":
            data = data[: len(data) // 2]
        return {"image_b64": base64.b64encode(data).decode("ascii")}

    return app


def original_client_edit(
    endpoint: str, template_png: bytes, prompt: str, *, negative_prompt: str | None = None
) -> bytes:
    """The original isometric.nyc client (``call_local_api_b64``): JPEG q90 of the template on white.

    Flattens the template to RGB on a white background, encodes it as JPEG quality 90 (optimize),
    posts ``{"image_b64", "prompt", "steps": 14, "negative_prompt"}`` with a 600 s timeout, and
    returns the decoded ``image_b64`` of the answer (any other key is ignored).
    """
    im = Image.open(io.BytesIO(template_png)).convert("RGBA")
    flat = Image.new("RGB", im.size, (255, 255, 255))
    flat.paste(im, mask=im.getchannel("A"))
    buf = io.BytesIO()
    flat.save(buf, format="JPEG", quality=90, optimize=True)
    payload = {
        "image_b64": base64.b64encode(buf.getvalue()).decode("ascii"),
        "prompt": prompt,
        "steps": 14,
        "negative_prompt": negative_prompt,
    }
    r = httpx.post(endpoint, json=payload, timeout=600)
    r.raise_for_status()
    data = r.json()
    if "image_b64" not in data:
        raise ValueError(f"no image_b64 in the response: {sorted(data)}")
    return base64.b64decode(data["image_b64"])


# --------------------------------------------------------------------------------------------------
# helpers for ASGI apps and the GCS emulator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    """Run an ASGI app with uvicorn on a free 127.0.0.1 port in a thread; yield its base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def gcs_emulator(bucket: str) -> Iterator[tuple[str, Any]]:
    """gcp-storage-emulator on a free port with ``bucket``; yields (base URL, storage.Client)."""
    from gcp_storage_emulator.server import create_server
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    url = f"http://127.0.0.1:{port}"
    client = storage.Client(
        project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": url}
    )
    try:
        yield url, client
    finally:
        server.stop()
