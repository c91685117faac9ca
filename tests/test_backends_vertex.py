"""Vertex AI client: primary/fallback models on 429, bearer tokens from a callable, Imagen inpainting."""

from __future__ import annotations

import base64
import io
import logging
from collections import deque

import numpy as np
import pytest
from PIL import Image

from isonyc_dagster.backends.base import BackendError, GenerationRequest
from isonyc_dagster.backends.transport import HttpSettings
from isonyc_dagster.backends.vertex import VertexBackend
from tests.fake_apis import FakeVertex, edit_template, make_template

TOKEN = "ya29.FAKE-ACCESS-TOKEN-abcdefghijklmnop"
FAST = HttpSettings(timeout_s=1.0, connect_timeout_s=0.5, backoff_base_s=0.01, breaker_threshold=50)
PRIMARY, FALLBACK = "gemini-3-pro-image-preview", "gemini-2.5-flash-image"


@pytest.fixture()
def api():
    with FakeVertex(token=TOKEN, project="proj", location="global", retry_after=0.2) as server:
        yield server


@pytest.fixture()
def template():
    return make_template(64)[0]


def make(api, *, tokens=None, **kw) -> VertexBackend:
    calls = tokens if tokens is not None else []

    def token() -> str:
        calls.append(1)
        return TOKEN

    kw.setdefault("retry_max", 2)
    kw.setdefault("retry_max_ms", 50)
    return VertexBackend("proj", token_provider=token, endpoint=api.url, http=FAST, **kw)


def test_primary_model_answers(api, template):
    tokens: list[int] = []
    res = make(api, tokens=tokens).generate(GenerationRequest(template, seed=4))
    assert (
        api.requests[0].path
        == f"/v1/projects/proj/locations/global/publishers/google/models/{PRIMARY}:generateContent"
    )
    assert api.requests[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert res.image_png == edit_template(template, 4)
    p = res.provenance
    assert (
        p["backend"] == "vertex" and p["model_id"] == PRIMARY and p["fallbacks"] == [] and p["attempts"] == 1
    )
    assert tokens == [1]


def test_429_on_primary_falls_back(api, template):
    api.model_faults[PRIMARY] = deque(["429"])
    res = make(api).generate(GenerationRequest(template, seed=4))
    models = [r.path.rsplit("/", 1)[1].split(":")[0] for r in api.requests]
    assert models == [PRIMARY, FALLBACK]
    p = res.provenance
    assert p["model_id"] == FALLBACK and p["primary_model"] == PRIMARY and p["attempts"] == 2
    assert p["fallbacks"] == [
        {"from": PRIMARY, "to": FALLBACK, "reason": "rate limited (429 RESOURCE_EXHAUSTED)"}
    ]


def test_fallback_after_n_429s(api, template):
    api.model_faults[PRIMARY] = deque(["429", "429"])
    res = make(api, fallback_after_429s=2).generate(GenerationRequest(template))
    models = [r.path.rsplit("/", 1)[1].split(":")[0] for r in api.requests]
    assert models == [PRIMARY, PRIMARY, FALLBACK] and res.provenance["model_id"] == FALLBACK
    assert api.requests[1].at - api.requests[0].at >= 0.2  # Retry-After honoured on the primary


def test_server_errors_retry_the_same_model(api, template):
    api.model_faults[PRIMARY] = deque(["503", "timeout"])
    api.delay = 1.5
    res = make(api).generate(GenerationRequest(template))
    assert res.provenance["model_id"] == PRIMARY and res.provenance["attempts"] == 3
    assert res.provenance["fallbacks"] == []


def test_both_models_exhausted_is_retryable_error(api, template):
    api.model_faults[PRIMARY] = deque(["429"])
    api.model_faults[FALLBACK] = deque(["429"] * 3)
    with pytest.raises(
        BackendError,
        match=rf"{FALLBACK}:generateContent failed after 3 attempt.*rate limited.*"
        rf"after falling back from {PRIMARY}",
    ) as ei:
        make(api).generate(GenerationRequest(template))
    assert ei.value.retryable and ei.value.attempts == 4
    # retry_max=2 → 3 attempts on the last model; waits honour Retry-After (0.2 s), not retry_max_ms.
    fb = [r for r in api.requests if FALLBACK in r.path]
    assert len(fb) == 3 and fb[1].at - fb[0].at >= 0.2


def test_retry_max_limits_attempts(api, template):
    api.model_faults[PRIMARY] = deque(["500"] * 5)
    with pytest.raises(BackendError, match=r"failed after 2 attempt\(s\).*HTTP 500"):
        make(api, retry_max=1, fallback_model=None).generate(GenerationRequest(template))
    assert len(api.requests) == 2


def test_token_is_requested_per_attempt_and_never_leaks(api, template, caplog):
    caplog.set_level(logging.DEBUG)
    tokens: list[int] = []
    api.model_faults[PRIMARY] = deque(["echo_secret"] * 3)
    with pytest.raises(BackendError) as ei:
        make(api, tokens=tokens, fallback_model=None).generate(GenerationRequest(template))
    assert len(tokens) == 3 and "***" in str(ei.value)
    assert TOKEN not in str(ei.value) + caplog.text


def test_token_provider_failure_is_clear(api, template):
    def broken() -> str:
        raise RuntimeError(f"could not refresh {TOKEN}")

    b = VertexBackend("proj", token_provider=broken, endpoint=api.url, http=FAST)
    with pytest.raises(BackendError, match=r"could not obtain a bearer token \(RuntimeError\)") as ei:
        b.generate(GenerationRequest(template))
    assert TOKEN not in str(ei.value) and not ei.value.retryable and api.requests == []


def test_expired_token_401(api, template):
    b = VertexBackend("proj", token_provider=lambda: "ya29.expired-token-000", endpoint=api.url, http=FAST)
    with pytest.raises(BackendError, match="HTTP 401.*UNAUTHENTICATED") as ei:
        b.generate(GenerationRequest(template))
    assert not ei.value.retryable and "ya29.expired-token-000" not in str(ei.value)


def test_imagen_inpaints_exactly_the_infill_box(api):
    template, box = make_template(64)
    res = make(api, model="imagen-3.0-capability-001", fallback_model=None).generate(
        GenerationRequest(template, seed=8, infill_box=box, negative_prompt="text")
    )
    req = api.requests[0]
    assert req.path.endswith("/models/imagen-3.0-capability-001:predict")
    body = req.json()
    assert body["parameters"]["seed"] == 8 and body["parameters"]["addWatermark"] is False
    assert body["parameters"]["negativePrompt"] == "text"
    mask_b64 = body["instances"][0]["referenceImages"][1]["referenceImage"]["bytesBase64Encoded"]
    mask = np.array(Image.open(io.BytesIO(base64.b64decode(mask_b64))))
    x0, y0, x1, y1 = box
    assert (mask[y0:y1, x0:x1] == 255).all() and mask.sum() == 255 * (x1 - x0) * (y1 - y0)
    before = np.array(Image.open(io.BytesIO(template)))
    after = np.array(Image.open(io.BytesIO(res.image_png)))
    outside = np.ones(mask.shape, bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(before[outside], after[outside]) and not np.array_equal(before, after)
    with pytest.raises(BackendError, match="needs request.infill_box"):
        make(api, model="imagen-3.0-capability-001").generate(GenerationRequest(template))


def test_wrong_size_from_fallback_is_refused(api, template):
    api.model_faults[PRIMARY] = deque(["429"])
    api.model_faults[FALLBACK] = deque(["wrong_size"] * 3)
    with pytest.raises(BackendError, match="is 32×32, expected exactly 64×64"):
        make(api).generate(GenerationRequest(template))


def test_config_errors():
    with pytest.raises(ValueError, match="project is empty"):
        VertexBackend("", token_provider=lambda: "t")
    with pytest.raises(ValueError, match="token_provider must be a callable"):
        VertexBackend("p", token_provider="not-callable")  # type: ignore[arg-type]
    b = VertexBackend("p", token_provider=lambda: "t", location="us-central1")
    assert b.endpoint == "https://us-central1-aiplatform.googleapis.com"
    assert b.transport.settings.max_attempts == 5 and b.transport.settings.backoff_max_s == 30.0
