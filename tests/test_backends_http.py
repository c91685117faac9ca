"""The shared resilience layer: image validation, Retry-After parsing, circuit breaker, redaction."""

from __future__ import annotations

import email.utils
import io
import time

import numpy as np
import pytest
from PIL import Image

from isonyc_dagster.backends.transport import (
    CallFailed,
    CircuitBreaker,
    HttpSettings,
    Redactor,
    split_http_settings,
)
from isonyc_dagster.backends.validate import InvalidImage, validate_image
from isonyc_dagster.images import png_bytes
from isonyc_dagster.net import google_retry_delay, parse_retry_after


def _img(w: int = 32, h: int = 24, mode: str = "RGB", fmt: str = "PNG") -> bytes:
    arr = (np.arange(w * h * 3).reshape(h, w, 3) % 251).astype(np.uint8)
    im = Image.fromarray(arr).convert(mode)
    out = io.BytesIO()
    im.save(out, format=fmt)
    return out.getvalue()


def test_valid_rgb_png_is_returned_unchanged():
    data = _img()
    checked = validate_image(data, expected_size=(32, 24))
    assert checked.png == data and checked.size == (32, 24)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA"])
def test_other_opaque_modes_become_lossless_rgb_png(mode):
    data = _img(mode=mode)
    checked = validate_image(data, expected_size=(32, 24))
    out = Image.open(io.BytesIO(checked.png))
    assert out.format == "PNG" and out.mode == "RGB"
    assert np.array_equal(np.array(out), np.array(Image.open(io.BytesIO(data)).convert("RGB")))


def test_truncated_png_refused_even_when_pil_would_tolerate_it(monkeypatch):
    from PIL import ImageFile

    data = _img(256, 256)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # someone else's global setting
    with pytest.raises(InvalidImage, match="truncated"):
        validate_image(data[: len(data) // 2], expected_size=(256, 256))


def test_wrong_size_refused_never_resized():
    with pytest.raises(InvalidImage, match=r"32×24, expected exactly 64×64.*not resizing"):
        validate_image(_img(), expected_size=(64, 64))


def test_transparent_pixels_refused():
    arr = np.full((8, 8, 4), 200, np.uint8)
    arr[3, 3, 3] = 10
    with pytest.raises(InvalidImage, match="transparent"):
        validate_image(png_bytes(arr), expected_size=(8, 8))


def test_garbage_jpeg_and_unsupported_mode_refused():
    with pytest.raises(InvalidImage, match="not a decodable image"):
        validate_image(b"<html>502</html>", expected_size=None)
    with pytest.raises(InvalidImage, match="empty"):
        validate_image(b"", expected_size=None)
    with pytest.raises(InvalidImage, match="is JPEG, expected PNG"):
        validate_image(_img(fmt="JPEG"), expected_size=(32, 24))
    assert (
        validate_image(_img(fmt="JPEG"), expected_size=(32, 24), formats=("PNG", "JPEG")).source_format
        == "JPEG"
    )
    with pytest.raises(InvalidImage, match="unsupported mode"):
        validate_image(_img(mode="I;16"), expected_size=(32, 24))


def test_corrupt_crc_refused():
    data = bytearray(_img())
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF  # flip a byte inside the compressed data: CRC mismatch
    with pytest.raises(InvalidImage, match="does not decode"):
        validate_image(bytes(data), expected_size=(32, 24))


def test_retry_after_forms():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= parse_retry_after(when) <= 31
    assert parse_retry_after(email.utils.formatdate(time.time() - 30, usegmt=True)) == 0.0
    body = {
        "error": {
            "code": 429,
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}],
        }
    }
    assert google_retry_delay(body) == 7.0
    assert google_retry_delay({"error": {"code": 500}}) is None and google_retry_delay("x") is None


def test_circuit_breaker_opens_half_opens_and_closes():
    now = [0.0]
    br = CircuitBreaker("svc", threshold=3, cooldown_s=10.0, clock=lambda: now[0])
    for _ in range(2):
        br.before_attempt()
        br.record_failure("HTTP 500")
    assert br.state == "closed"
    br.before_attempt()
    br.record_failure("HTTP 503")
    assert br.state == "open"
    with pytest.raises(CallFailed, match=r"circuit open after 3 consecutive.*HTTP 503.*10\.0 s") as ei:
        br.before_attempt()
    assert ei.value.retryable and ei.value.circuit_open
    now[0] = 10.5
    assert br.state == "half-open"
    br.before_attempt()  # the single probe
    with pytest.raises(CallFailed):
        br.before_attempt()  # a second caller while the probe runs fails fast
    br.record_failure("HTTP 500")  # probe failed: open again for a full cooldown
    assert br.state == "open"
    now[0] = 21.0
    br.before_attempt()
    br.record_success()
    assert br.state == "closed"


def test_rate_limits_do_not_count_as_endpoint_failures():
    br = CircuitBreaker("svc", threshold=2, cooldown_s=10.0)
    for _ in range(5):
        br.before_attempt()
        br.record_neutral()
    assert br.state == "closed"


def test_redactor_hides_plain_and_url_encoded_forms():
    r = Redactor(["sk-SECRET/with+chars=", None, "abc"])
    text = "key sk-SECRET/with+chars= and sk-SECRET%2Fwith%2Bchars%3D and abc"
    assert r(text) == "key *** and *** and abc"  # 'abc' is too short to be a secret


def test_split_http_settings():
    http, rest = split_http_settings({"timeout_s": 5, "max_attempts": 2, "endpoint": "x"})
    assert http == HttpSettings(timeout_s=5, max_attempts=2) and rest == {"endpoint": "x"}
    with pytest.raises(ValueError, match="max_attempts"):
        split_http_settings({"max_attempts": 0})
