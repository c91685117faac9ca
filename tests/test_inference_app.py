"""The Modal inference app's HTTP layer on 127.0.0.1 with a tiny CPU pipeline (no GPU, no Modal account)."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import threading

import httpx
import numpy as np
import pytest
from PIL import Image

from inference.server import QwenLoraPipeline, create_app
from isonyc_dagster.backends.base import BackendError, GenerationRequest
from isonyc_dagster.backends.modal import ModalBackend
from isonyc_dagster.backends.transport import HttpSettings
from isonyc_dagster.images import png_bytes
from tests.fake_apis import TinyPipeline, edit_template, encode, make_template, serve_asgi


@pytest.fixture(scope="module")
def pipeline():
    return TinyPipeline()


@pytest.fixture(scope="module")
def server(pipeline):
    with serve_asgi(create_app(pipeline)) as url:
        yield url


@pytest.fixture(scope="module")
def template():
    return make_template(64)[0]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def post(url: str, **body) -> httpx.Response:
    payload = {"prompt": "fill"} | body
    return httpx.post(f"{url}/edit_b64", json=payload, timeout=10)


def test_health_names_model_and_lora(server):
    r = httpx.get(f"{server}/health")
    assert r.json() == {"status": "ok", "model_id": "tiny-edit@test", "lora": "tiny-lora@sha256:0000"}


def test_edit_roundtrip_lossless_with_seed(server, pipeline, template):
    r = post(server, image_b64=base64.b64encode(template).decode(), seed=77, steps=9, negative_prompt="blur")
    assert r.status_code == 200
    body = r.json()
    assert (
        body["seed"] == 77
        and body["model_id"] == "tiny-edit@test"
        and body["lora"] == "tiny-lora@sha256:0000"
    )
    assert base64.b64decode(body["image_b64"]) == edit_template(template, 77)
    assert body["input_format"] == "PNG" and body["input_lossy"] is False
    assert pipeline.calls[-1] == dict(
        prompt="fill", negative_prompt="blur", steps=9, true_cfg_scale=2.0, guidance_scale=3.0, seed=77
    )


def test_jpeg_template_is_accepted_as_rgb_and_marked_lossy(server, pipeline, template):
    """What the original client sends: a JPEG (here of an L-mode image: converted to RGB for the model)."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(template)).convert("L").save(buf, format="JPEG", quality=90)
    r = post(server, image_b64=b64(buf.getvalue()), seed=4)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["input_format"] == "JPEG" and body["input_lossy"] is True and body["seed"] == 4
    assert pipeline.images[-1].mode == "RGB" and pipeline.images[-1].size == (64, 64)
    out = Image.open(io.BytesIO(base64.b64decode(body["image_b64"])))
    assert out.format == "PNG" and out.size == (64, 64)


def test_random_seed_is_returned_and_reproduces(server, template):
    b64 = base64.b64encode(template).decode()
    first = post(server, image_b64=b64).json()
    again = post(server, image_b64=b64, seed=first["seed"]).json()
    assert again["image_b64"] == first["image_b64"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"image_b64": "not base64 !!"}, 400, "image_b64 is not valid base64"),
        ({"image_b64": base64.b64encode(b"hello world").decode()}, 400, "does not decode to an image"),
        ({"image_b64": "BMP"}, 415, "image is BMP; send a lossless PNG"),
        ({"image_b64": "BIG"}, 413, "2064×64; at most 2048×2048"),
        ({"image_b64": "ODD"}, 400, "multiples of 16"),
        ({"image_b64": "TRUNC"}, 400, "does not decode"),
        ({"image_b64": "JPEG_TRUNC"}, 400, "does not decode (truncated JPEG"),
        ({"image_b64": "JPEG_BIG"}, 413, "2064×64; at most 2048×2048"),
        ({"image_b64": "JPEG_ODD"}, 400, "multiples of 16"),
        ({"steps": 0}, 422, "steps: Input should be greater than or equal to 1"),
        ({"steps": 101}, 422, "steps: Input should be less than or equal to 100"),
        ({"true_cfg_scale": -1}, 422, "true_cfg_scale"),
        ({"seed": -5}, 422, "seed"),
        ({"prompt": ""}, 422, "prompt: String should have at least 1 character"),
        ({"unexpected": 1}, 422, "unexpected: Extra inputs are not permitted"),
    ],
)
def test_bad_requests_get_clear_4xx(server, template, body, status, message):
    jpeg = encode(template, "JPEG", quality=90)
    special = {
        "BMP": b64(encode(template, "BMP")),
        "JPEG_TRUNC": b64(jpeg[: len(jpeg) // 2]),
        "JPEG_BIG": b64(encode(np.zeros((64, 2064, 3), np.uint8), "JPEG")),
        "JPEG_ODD": b64(encode(np.zeros((72, 70, 3), np.uint8), "JPEG")),
        "BIG": base64.b64encode(png_bytes(np.zeros((64, 2064, 3), np.uint8))).decode(),
        "ODD": base64.b64encode(png_bytes(np.zeros((72, 70, 3), np.uint8))).decode(),
        "TRUNC": base64.b64encode(template[: len(template) // 2]).decode(),
    }
    body = {"image_b64": base64.b64encode(template).decode()} | body
    body["image_b64"] = special.get(body["image_b64"], body["image_b64"])
    r = post(server, **body)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    assert len(r.content) < 2000  # never echoes the megabytes of input back


def test_pipeline_output_of_wrong_size_is_refused():
    with serve_asgi(create_app(TinyPipeline(wrong_size=True))) as url:
        r = post(url, image_b64=base64.b64encode(make_template(64)[0]).decode())
    assert r.status_code == 500 and "refusing to resize" in r.json()["detail"]


def test_gpu_work_is_serialised(server, pipeline, template):
    b64 = base64.b64encode(template).decode()
    threads = [threading.Thread(target=post, args=(server,), kwargs={"image_b64": b64}) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert pipeline.max_active == 1


def test_modal_backend_end_to_end(server, template):
    b = ModalBackend(f"{server}/edit_b64", http=HttpSettings(timeout_s=10, max_attempts=2))
    res = b.generate(GenerationRequest(template, seed=5, prompt="fill"))
    assert res.image_png == edit_template(template, 5)
    p = res.provenance
    assert p["model_id"] == "tiny-edit@test" and p["lora"] == "tiny-lora@sha256:0000" and p["seed"] == 5
    assert p["seed_confirmed"] is True and p["lossy_output"] is False and p["output_format"] == "PNG"
    # The server's 4xx reaches the client as a clear, non-retryable error (a 72×70 template).
    odd = png_bytes(np.zeros((70, 72, 3), np.uint8))
    with pytest.raises(BackendError, match="HTTP 400.*multiples of 16") as ei:
        b.generate(GenerationRequest(odd, seed=1))
    assert not ei.value.retryable


def test_missing_lora_refuses_to_start(tmp_path):
    with pytest.raises(
        RuntimeError, match="LoRA weights .* not found on the volume.*Refusing to serve the base model"
    ):
        QwenLoraPipeline(
            "Qwen/Qwen-Image-Edit", None, tmp_path / "loras" / "x", "w.safetensors", str(tmp_path)
        )


def test_importing_server_pulls_no_modal_torch_or_diffusers():
    code = (
        "import sys, inference.server as s; "
        "bad = [m for m in ('modal', 'torch', 'diffusers') if m in sys.modules]; "
        "assert not bad, bad; assert not hasattr(s, 'app'); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_root_path_alias_serves_the_same_endpoint(server, template):
    """Modal's fastapi_endpoint style URL (no path) works too, like the original server."""
    r = httpx.post(
        f"{server}/", json={"image_b64": base64.b64encode(template).decode(), "prompt": "p", "seed": 3}
    )
    assert r.status_code == 200 and base64.b64decode(r.json()["image_b64"]) == edit_template(template, 3)
