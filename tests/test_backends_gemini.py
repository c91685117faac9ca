"""Gemini (Nano Banana) REST client against a real generateContent server on 127.0.0.1."""

from __future__ import annotations

import base64
import logging
import traceback

import pytest

from isonyc_dagster.backends.base import BackendError, GenerationRequest
from isonyc_dagster.backends.gemini import DEFAULT_PROMPT, GeminiBackend
from isonyc_dagster.backends.transport import HttpSettings
from isonyc_dagster.images import png_bytes
from tests.fake_apis import FakeGemini, edit_template, make_template

API_KEY = "AIzaSy-FAKE-GEMINI-KEY-0123456789"
FAST = HttpSettings(
    timeout_s=1.0, connect_timeout_s=0.5, max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.05
)


@pytest.fixture(scope="module")
def template():
    return make_template(1024, box=(256, 256, 768, 768))[0]


@pytest.fixture(scope="module")
def style_ref():
    import numpy as np

    return png_bytes(np.full((128, 128, 3), (120, 110, 90), np.uint8))


@pytest.fixture()
def api():
    with FakeGemini(api_key=API_KEY, retry_after=0.3, delay=2.0) as server:
        yield server


@pytest.fixture(scope="module")
def small():
    return make_template(64)[0]


def make(api, **http) -> GeminiBackend:
    return GeminiBackend(API_KEY, base_url=api.url, http=FAST.model_copy(update=http))


def make_small(api) -> GeminiBackend:
    """No imageSize requested (like gemini-2.5-flash-image): small templates keep the fault tests fast."""
    return GeminiBackend(API_KEY, base_url=api.url, http=FAST, image_size=None)


def test_template_and_style_ref_sent_inline_key_in_header(api, template, style_ref):
    res = make(api).generate(
        GenerationRequest(template, seed=11, style_refs=(style_ref,), negative_prompt="text")
    )
    rec = api.requests[0]
    assert rec.path == "/v1beta/models/gemini-3-pro-image-preview:generateContent"
    assert "key=" not in rec.path and rec.headers["x-goog-api-key"] == API_KEY
    body = rec.json()
    parts = body["contents"][0]["parts"]
    images = [base64.b64decode(p["inline_data"]["data"]) for p in parts if "inline_data" in p]
    assert images == [template, style_ref]  # lossless, unlabelled, in order: template then style
    assert parts[0]["text"].startswith(DEFAULT_PROMPT) and "AVOID: text" in parts[0]["text"]
    assert body["generationConfig"]["seed"] == 11
    assert body["generationConfig"]["imageConfig"] == {"aspectRatio": "1:1", "imageSize": "1K"}
    # The fake sends a wrong-size draft "thought" image first: it must be skipped, not taken.
    assert res.image_png == edit_template(template, 11)
    p = res.provenance
    assert p["backend"] == "gemini" and p["seed"] == 11 and p["attempts"] == 1 and p["style_refs"] == 1
    assert p["model_version"] == "gemini-3-pro-image-preview"


@pytest.mark.parametrize(
    "fault",
    [
        "503",
        "500",
        "timeout",
        "no_image",
        "thought_only",
        "truncated",
        "wrong_size",
        "bad_b64",
        "garbage_json",
    ],
)
def test_transient_faults_retried(api, small, style_ref, fault):
    api.faults.append(fault)
    res = make_small(api).generate(GenerationRequest(small, seed=2, style_refs=(style_ref,)))
    assert "imageSize" not in api.requests[0].json()["generationConfig"]["imageConfig"]
    assert res.provenance["attempts"] == 2 and res.image_png == edit_template(small, 2)


@pytest.mark.parametrize("fault", ["429", "429-info"])
def test_rate_limit_waits_as_asked(api, small, style_ref, fault):
    api.faults.append(fault)
    make_small(api).generate(GenerationRequest(small, style_refs=(style_ref,)))
    assert api.requests[1].at - api.requests[0].at >= 0.3


def test_safety_block_is_permanent(api, small, style_ref):
    api.faults.append("safety")
    with pytest.raises(BackendError, match="no image \\(finishReason=IMAGE_SAFETY\\)") as ei:
        make_small(api).generate(GenerationRequest(small, style_refs=(style_ref,)))
    assert not ei.value.retryable and len(api.requests) == 1


def test_persistent_no_image_is_a_clear_error(api, small, style_ref):
    api.faults.extend(["no_image"] * 3)
    with pytest.raises(BackendError, match=r"failed after 3 attempt\(s\).*no image.*I cannot draw that"):
        make_small(api).generate(GenerationRequest(small, style_refs=(style_ref,)))


def test_bad_key_message_without_key(api, small, style_ref, caplog):
    caplog.set_level(logging.DEBUG)
    b = GeminiBackend("AIzaSy-WRONG-KEY-000000", base_url=api.url, http=FAST, image_size=None)
    with pytest.raises(BackendError, match="HTTP 400.*API key not valid") as ei:
        b.generate(GenerationRequest(small, style_refs=(style_ref,)))
    assert not ei.value.retryable
    api.faults.extend(["echo_secret"] * 3)
    with pytest.raises(BackendError) as ei:
        make_small(api).generate(GenerationRequest(small, style_refs=(style_ref,)))
    text = str(ei.value) + caplog.text + "".join(traceback.format_exception(ei.value))
    assert "***" in str(ei.value) and API_KEY not in text


def test_requests_that_cannot_succeed_fail_before_calling(api, template, style_ref):
    with pytest.raises(BackendError, match="no style reference"):
        make(api).generate(GenerationRequest(template))
    small = make_template(512)[0]
    with pytest.raises(BackendError, match=r"template is 512×512 but image_size=1K answers 1024×1024"):
        make(api).generate(GenerationRequest(small, style_refs=(style_ref,)))
    with pytest.raises(BackendError, match="style reference 0 is not a decodable image"):
        make(api).generate(GenerationRequest(template, style_refs=(b"nope",)))
    assert api.requests == []
    b = GeminiBackend(API_KEY, base_url=api.url, http=FAST, require_style_ref=False)
    assert b.generate(GenerationRequest(template)).provenance["style_refs"] == 0
