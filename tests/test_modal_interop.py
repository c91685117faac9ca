"""Interoperability with the original isometric.nyc ``edit_b64`` server and client, both ways.

Real HTTP on 127.0.0.1 (uvicorn): the original's wire format is re-implemented in ``tests/fake_apis.py``
(:func:`original_server_app`: answers ``{"image_b64"}`` only, PNG or JPEG; :func:`original_client_edit`:
sends JPEG q90 flattened on white). The matrix (client × server) is :func:`test_interop_matrix`.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from inference.server import create_app
from isonyc_dagster.backends.base import BackendError, GenerationRequest
from isonyc_dagster.backends.modal import ModalBackend
from isonyc_dagster.backends.transport import HttpSettings
from isonyc_dagster.backends.validate import InvalidImage, validate_image
from isonyc_dagster.images import decode_rgb
from tests.fake_apis import (
    TinyPipeline,
    edit_template,
    encode,
    make_template,
    original_client_edit,
    original_server_app,
    serve_asgi,
)

FAST = HttpSettings(timeout_s=10, max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.05)


@pytest.fixture(scope="module")
def template() -> bytes:
    return make_template(64)[0]


@pytest.fixture(scope="module")
def original_png():
    app = original_server_app(output="PNG")
    with serve_asgi(app) as url:
        yield app, f"{url}/edit_b64"


@pytest.fixture(scope="module")
def original_jpeg():
    app = original_server_app(output="JPEG")
    with serve_asgi(app) as url:
        yield app, f"{url}/edit_b64"


@pytest.fixture(scope="module")
def ours():
    pipeline = TinyPipeline()
    with serve_asgi(create_app(pipeline)) as url:
        yield pipeline, f"{url}/edit_b64"


def mean_abs_diff(a_png: bytes, b_png: bytes) -> float:
    return float(np.abs(decode_rgb(a_png).astype(int) - decode_rgb(b_png).astype(int)).mean())


# -- our client (ModalBackend) → the original server ------------------------------------------------


def test_our_client_on_original_png_server_seed_unknown(original_png, template):
    app, url = original_png
    res = ModalBackend(url, http=FAST).generate(GenerationRequest(template, prompt="fill", seed=42))
    assert app.state.calls[-1]["seed"] == 42 and app.state.calls[-1]["input_format"] == "PNG"
    assert res.image_png == edit_template(template, 42)  # lossless both ways: the exact model pixels
    p = res.provenance
    assert p["seed"] is None and p["seed_requested"] == 42 and p["seed_confirmed"] is False
    assert p["lossy_output"] is False and p["output_format"] == "PNG" and p["attempts"] == 1
    assert p["model_id"] == "qwen-image-edit+lora" and p["lora"] is None  # the server names neither


def test_our_client_on_original_server_picks_and_records_requested_seed(original_png, template):
    app, url = original_png
    res = ModalBackend(url, http=FAST).generate(GenerationRequest(template))
    assert res.provenance["seed"] is None
    assert res.provenance["seed_requested"] == app.state.calls[-1]["seed"]


def test_our_client_on_original_jpeg_server_is_accepted_lossy(original_jpeg, template):
    app, url = original_jpeg
    res = ModalBackend(url, http=FAST).generate(GenerationRequest(template, seed=7))
    out = Image.open(io.BytesIO(res.image_png))
    assert out.format == "PNG" and out.mode == "RGB" and out.size == (64, 64)  # exactly template-sized
    p = res.provenance
    assert p["lossy_output"] is True and p["output_format"] == "JPEG" and p["attempts"] == 1
    assert p["seed"] is None and p["seed_requested"] == 7
    assert 0 < mean_abs_diff(res.image_png, edit_template(template, 7)) < 12  # JPEG noise, same picture


@pytest.mark.parametrize(
    ("fault", "message"),
    [("wrong_size", "is 32×32, expected exactly 64×64"), ("truncated", "truncated JPEG")],
)
def test_bad_jpeg_answers_are_still_refused(original_jpeg, template, fault, message):
    app, url = original_jpeg
    app.state.faults.extend([fault] * 3)
    n = len(app.state.calls)
    with pytest.raises(BackendError, match=message) as ei:
        ModalBackend(url, http=FAST).generate(GenerationRequest(template, seed=1))
    assert ei.value.retryable and len(app.state.calls) - n == 3
    app.state.faults.clear()


def test_jpeg_validation_is_strict():
    arr = np.full((16, 16, 3), 120, np.uint8)
    jpeg = encode(arr, "JPEG")
    assert validate_image(jpeg, expected_size=(16, 16), formats=("PNG", "JPEG")).lossy
    with pytest.raises(InvalidImage, match="is JPEG, expected PNG"):
        validate_image(jpeg, expected_size=(16, 16))  # PNG only unless the caller allows JPEG
    with pytest.raises(InvalidImage, match="is 16×16, expected exactly 32×32"):
        validate_image(jpeg, expected_size=(32, 32), formats=("PNG", "JPEG"))


def test_truncated_jpeg_refused_even_when_pil_would_tolerate_it(monkeypatch):
    data = encode(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8), "JPEG")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # someone else's global setting
    with pytest.raises(InvalidImage, match="truncated JPEG"):
        validate_image(data[: len(data) // 2], expected_size=(64, 64), formats=("PNG", "JPEG"))


# -- the original client → our server ---------------------------------------------------------------


def test_original_client_on_our_server(ours, template):
    pipeline, url = ours
    out = original_client_edit(url, template, "fill", negative_prompt="blur")
    im = Image.open(io.BytesIO(out))
    assert im.format == "PNG" and im.size == (64, 64)
    assert pipeline.images[-1].mode == "RGB" and pipeline.images[-1].size == (64, 64)
    call = pipeline.calls[-1]
    assert call["steps"] == 14 and call["prompt"] == "fill" and call["negative_prompt"] == "blur"
    # The model saw a JPEG copy of the template: close to it, not equal.
    seen = np.asarray(pipeline.images[-1]).astype(int)
    assert 0 < np.abs(seen - decode_rgb(template).astype(int)).mean() < 12


def test_our_server_marks_the_original_clients_request_lossy(ours, template):
    """The same request as the original client, read in full: 200, PNG of the template's size, input_lossy."""
    import httpx

    jpeg = encode(template, "JPEG", quality=90, optimize=True)
    payload = {
        "image_b64": base64.b64encode(jpeg).decode(),
        "prompt": "fill",
        "steps": 14,
        "negative_prompt": None,
    }
    r = httpx.post(ours[1], json=payload, timeout=600)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["input_lossy"] is True and body["input_format"] == "JPEG" and isinstance(body["seed"], int)
    assert Image.open(io.BytesIO(base64.b64decode(body["image_b64"]))).size == (64, 64)


def test_original_client_flattens_alpha_on_white(ours):
    pipeline, url = ours
    rgba = np.zeros((64, 64, 4), np.uint8)  # fully transparent: white once flattened
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    original_client_edit(url, buf.getvalue(), "fill")
    assert np.asarray(pipeline.images[-1]).min() >= 250


# -- the matrix ------------------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["ours", "original_png", "original_jpeg"])
@pytest.mark.parametrize("client", ["ours", "original"])
def test_interop_matrix(request, template, client, server):
    """Every pair answers an image of exactly the template's size; exact pixels only with our client and a PNG answer."""
    url = request.getfixturevalue(server)[1]
    if client == "ours":
        res = ModalBackend(url, http=FAST).generate(GenerationRequest(template, prompt="fill", seed=3))
        out = res.image_png
        assert res.provenance["lossy_output"] is (server == "original_jpeg")
        assert res.provenance["seed_confirmed"] is (server == "ours")
        assert res.provenance["seed"] == (3 if server == "ours" else None)
    else:
        out = original_client_edit(url, template, "fill")
    assert Image.open(io.BytesIO(out)).size == (64, 64)
    exact = out == edit_template(template, 3)
    assert exact is (client == "ours" and server != "original_jpeg")
