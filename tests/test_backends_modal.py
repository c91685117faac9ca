"""Modal ``edit_b64`` client against a real HTTP server on 127.0.0.1 with injected faults."""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
import traceback

import numpy as np
import pytest
from PIL import Image

from isonyc_dagster.backends.base import BackendError, GenerationRequest
from isonyc_dagster.backends.modal import DEFAULT_PROMPT, ModalBackend
from isonyc_dagster.backends.transport import HttpSettings
from tests.fake_apis import FakeModal, edit_template, make_template

KEY_ID = "wk-TOKENID-0123456789"
KEY_SECRET = "ws-TOKENSECRET-abcdefghijklmnop"
FAST = HttpSettings(
    timeout_s=0.5,
    connect_timeout_s=0.5,
    max_attempts=4,
    backoff_base_s=0.01,
    backoff_max_s=0.05,
    breaker_threshold=50,
    breaker_cooldown_s=0.3,
)


@pytest.fixture()
def api():
    with FakeModal(token_id=KEY_ID, token_secret=KEY_SECRET, retry_after=0.3, delay=1.0) as server:
        yield server


@pytest.fixture()
def template():
    return make_template(64)[0]


def backend(api: FakeModal, **http) -> ModalBackend:
    return ModalBackend(
        f"{api.url}/edit_b64", token_id=KEY_ID, token_secret=KEY_SECRET, http=FAST.model_copy(update=http)
    )


def assert_no_secret(*texts: str) -> None:
    for t in texts:
        assert KEY_ID not in t and KEY_SECRET not in t, t


def test_generates_lossless_with_full_provenance(api, template):
    b = backend(api)
    res = b.generate(GenerationRequest(template, prompt="", seed=42))
    # The server got our exact PNG bytes (no JPEG re-encode) and the auth headers.
    sent = api.requests[-1]
    assert base64.b64decode(sent.json()["image_b64"]) == template
    assert (
        sent.json()["prompt"] == DEFAULT_PROMPT and sent.json()["seed"] == 42 and sent.json()["steps"] == 14
    )
    assert sent.headers["modal-key"] == KEY_ID
    assert res.image_png == edit_template(template, 42)
    p = res.provenance
    assert p["backend"] == "modal" and p["model_id"] == "fake-qwen" and p["lora"] == "fake-lora@v1"
    assert p["seed"] == 42 and p["attempts"] == 1 and p["latency_s"] > 0
    assert p["seed_requested"] == 42 and p["seed_confirmed"] is True and p["lossy_output"] is False
    assert p["prompt_sha256"] == GenerationRequest(template).prompt_sha256
    assert_no_secret(repr(p), repr(b))


def test_seed_is_chosen_by_client_and_reused_on_retry(api, template):
    api.faults.append("500")
    res = backend(api).generate(GenerationRequest(template))
    seeds = [r.json()["seed"] for r in api.requests]
    assert len(seeds) == 2 and seeds[0] == seeds[1] == res.provenance["seed"]
    assert res.provenance["attempts"] == 2


@pytest.mark.parametrize(
    "fault",
    ["500", "503", "timeout", "truncated", "wrong_size", "transparent", "garbage_json", "schema", "bad_b64"],
)
def test_each_fault_is_retried_to_a_valid_image(api, template, fault):
    api.faults.append(fault)
    res = backend(api).generate(GenerationRequest(template, seed=3))
    assert res.provenance["attempts"] == 2
    assert res.image_png == edit_template(template, 3)  # never the corrupt answer


@pytest.mark.parametrize("fault", ["500", "timeout", "truncated", "wrong_size", "garbage_json"])
def test_persistent_fault_ends_in_clear_backend_error(api, template, fault):
    api.faults.extend([fault] * 4)
    with pytest.raises(BackendError) as ei:
        backend(api).generate(GenerationRequest(template, seed=3))
    msg = str(ei.value)
    assert msg.startswith("modal: edit_b64 failed after 4 attempt(s):")
    expected = {
        "500": "HTTP 500",
        "timeout": "timed out",
        "truncated": "truncated PNG",
        "wrong_size": "expected exactly 64×64",
        "garbage_json": "not JSON",
    }[fault]
    assert expected in msg and ei.value.retryable
    assert len(api.requests) == 4


def test_retry_after_is_honoured(api, template):
    api.faults.append("429")
    res = backend(api).generate(GenerationRequest(template, seed=1))
    gap = api.requests[1].at - api.requests[0].at
    assert gap >= 0.3  # the server asked for 0.3 s; our own backoff would be ≤ 0.05 s
    assert res.provenance["attempts"] == 2


def test_too_long_retry_after_fails_fast_and_retryable(api, template):
    api.retry_after = 3600
    api.faults.append("429")
    t0 = time.monotonic()
    with pytest.raises(BackendError, match="asked to wait 3600 s.*not waiting") as ei:
        backend(api).generate(GenerationRequest(template))
    assert time.monotonic() - t0 < 2 and ei.value.retryable and len(api.requests) == 1


def test_circuit_opens_fails_fast_then_recovers(api, template):
    b = backend(api, breaker_threshold=3, max_attempts=2)
    api.faults.extend(["500"] * 3)
    with pytest.raises(BackendError):
        b.generate(GenerationRequest(template))  # 2 failures
    with pytest.raises(BackendError):
        b.generate(GenerationRequest(template))  # 3rd failure opens the circuit; 4th attempt fails fast
    assert len(api.requests) == 3
    t0 = time.monotonic()
    with pytest.raises(BackendError, match="circuit open after 3 consecutive endpoint failures") as ei:
        b.generate(GenerationRequest(template))
    assert time.monotonic() - t0 < 0.1 and len(api.requests) == 3  # the endpoint was not called
    assert ei.value.retryable
    time.sleep(0.35)  # cooldown over: half-open, one probe succeeds and closes the circuit
    assert b.generate(GenerationRequest(template)).image_png
    assert b.transport.breaker.state == "closed"


def test_client_error_is_not_retried(api, template):
    b = ModalBackend(f"{api.url}/edit_b64", token_id=KEY_ID, token_secret="ws-wrong-secret-000", http=FAST)
    with pytest.raises(BackendError, match=r"HTTP 401 \(check the API key / token\)") as ei:
        b.generate(GenerationRequest(template))
    assert not ei.value.retryable and len(api.requests) == 1


def test_secrets_never_in_errors_logs_or_tracebacks(api, template, caplog):
    caplog.set_level(logging.DEBUG)
    api.faults.extend(["echo_secret"] * 4)  # the server repeats our headers in its error body
    with pytest.raises(BackendError) as ei:
        backend(api).generate(GenerationRequest(template))
    assert "***" in str(ei.value)
    assert_no_secret(str(ei.value), caplog.text, "".join(traceback.format_exception(ei.value)))
    assert "attempt 1/4 failed" in caplog.text


def test_concurrency_limit(template):
    in_flight, peak = [0], [0]
    lock = threading.Lock()

    class Slow(FakeModal):
        def dispatch(self, rec):
            with lock:
                in_flight[0] += 1
                peak[0] = max(peak[0], in_flight[0])
            time.sleep(0.1)
            with lock:
                in_flight[0] -= 1
            return super().dispatch(rec)

    with Slow() as api:
        b = ModalBackend(
            f"{api.url}/edit_b64", http=FAST.model_copy(update={"max_concurrency": 2, "timeout_s": 5})
        )
        threads = [
            threading.Thread(target=b.generate, args=(GenerationRequest(template, seed=i),)) for i in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(api.requests) == 6 and peak[0] == 2


def test_bad_template_and_bad_config_are_clear(api):
    with pytest.raises(BackendError, match="template must be a lossless PNG"):
        backend(api).generate(GenerationRequest(b"\xff\xd8\xff JPEG"))
    with pytest.raises(ValueError, match="both token_id"):
        ModalBackend("https://x.modal.run", token_id=KEY_ID)
    with pytest.raises(ValueError, match="http"):
        ModalBackend("x.modal.run")


def test_server_ignoring_the_seed_is_an_error(template):
    class WrongSeed(FakeModal):
        def dispatch(self, rec):
            reply = super().dispatch(rec)
            reply.body = reply.body.replace(b'"seed": 5', b'"seed": 6')
            return reply

    with WrongSeed() as api, pytest.raises(BackendError, match="server used seed 6, not the requested 5"):
        ModalBackend(f"{api.url}/edit_b64", http=FAST).generate(GenerationRequest(template, seed=5))


def test_output_is_exactly_the_model_pixels(api, template):
    res = backend(api).generate(GenerationRequest(template, seed=9))
    out = np.array(Image.open(io.BytesIO(res.image_png)))
    assert out.shape == (64, 64, 3)
    assert not ((out[..., 0] == 255) & (out[..., 1] == 0) & (out[..., 2] == 0)).any()  # border repainted
