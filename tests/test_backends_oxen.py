"""Oxen.ai client: template staged in a real GCS emulator, real fake Oxen server, result download."""

from __future__ import annotations

import logging
import traceback
from urllib.parse import parse_qs, urlparse

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from isonyc_dagster.backends.base import BackendError, GenerationRequest
from isonyc_dagster.backends.oxen import GCSTemplateUploader, OxenBackend
from isonyc_dagster.backends.transport import HttpSettings
from tests.fake_apis import FakeOxen, edit_template, gcs_emulator, make_template

API_KEY = "oxen-SECRET-KEY-1234567890"
BUCKET = "isonyc-infills-test"
FAST = HttpSettings(
    timeout_s=0.5, connect_timeout_s=0.5, max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.05
)


@pytest.fixture(scope="module")
def gcs():
    with gcs_emulator(BUCKET) as (url, client):
        yield url, client


@pytest.fixture()
def api():
    with FakeOxen(api_key=API_KEY, retry_after=0.2) as server:
        yield server


@pytest.fixture()
def template():
    return make_template(64)[0]


def throwaway_signing_credentials():
    """A freshly generated service-account key (never used against Google): exercises real V4 signing."""
    from google.oauth2 import service_account

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return service_account.Credentials.from_service_account_info(
        {
            "type": "service_account",
            "client_email": "signer@isonyc-test.iam.gserviceaccount.com",
            "private_key": pem.decode(),
            "private_key_id": "test",
            "token_uri": "http://127.0.0.1:9/token",  # never called: signing is local
        }
    )


def staged_objects(client) -> list[str]:
    return [b.name for b in client.list_blobs(BUCKET)]


def make(api, gcs, *, url_mode="media", **kw) -> OxenBackend:
    url, client = gcs
    if url_mode == "signed":
        uploader = GCSTemplateUploader(
            BUCKET,
            client=client,
            url_mode="signed",
            signing_credentials=throwaway_signing_credentials(),
            api_access_endpoint=url,
        )
    else:
        uploader = GCSTemplateUploader(BUCKET, client=client, url_mode="media")
    return OxenBackend(
        API_KEY, "cannoneyed-test-model", uploader, base_url=api.url, http=FAST.model_copy(update=kw)
    )


@pytest.mark.parametrize("url_mode", ["media", "signed"])
def test_edit_via_staged_template_then_deleted(api, gcs, template, url_mode):
    b = make(api, gcs, url_mode=url_mode)
    res = b.generate(GenerationRequest(template, prompt="fill it", negative_prompt="blurry"))
    assert res.image_png == edit_template(template, 7)
    sent = api.api_requests("/api/images/edit")[0].json()
    assert sent["model"] == "cannoneyed-test-model" and sent["num_inference_steps"] == 14
    assert sent["prompt"] == "fill it" and sent["negative_prompt"] == "blurry"
    assert api.fetched_inputs == [sent["input_image"]]  # Oxen fetched our template itself
    if url_mode == "signed":
        q = parse_qs(urlparse(sent["input_image"]).query)
        assert q["X-Goog-Algorithm"] == ["GOOG4-RSA-SHA256"] and int(q["X-Goog-Expires"][0]) == 900
    assert staged_objects(gcs[1]) == []  # deleted in the finally, never left public
    p = res.provenance
    assert p["backend"] == "oxen" and p["model_id"] == "cannoneyed-test-model" and p["seed"] is None
    assert sent["input_image"] not in repr(p) and API_KEY not in repr(p) and API_KEY not in repr(b)


@pytest.mark.parametrize("fault", ["500", "429", "timeout", "garbage_json", "schema"])
def test_api_faults_retried(api, gcs, template, fault):
    api.faults.append(fault)
    res = make(api, gcs).generate(GenerationRequest(template))
    assert res.provenance["attempts"] == 2 and res.image_png == edit_template(template, 7)
    assert staged_objects(gcs[1]) == []


@pytest.mark.parametrize("fault", ["result_403", "result_truncated"])
def test_result_download_faults_redownload_without_regenerating(api, gcs, template, fault):
    api.faults.append(fault)
    res = make(api, gcs).generate(GenerationRequest(template))
    assert res.provenance["attempts"] == 1 and res.provenance["download_attempts"] == 2
    assert len(api.api_requests("/api/images/edit")) == 1 and res.image_png == edit_template(template, 7)


def test_wrong_size_result_is_refused(api, gcs, template):
    api.faults.append("wrong_size")
    with pytest.raises(BackendError, match=r"oxen result image is 32×32, expected exactly 64×64") as ei:
        make(api, gcs).generate(GenerationRequest(template))
    assert ei.value.retryable
    assert staged_objects(gcs[1]) == []  # cleaned up on failure too


def test_failure_never_leaks_signed_url_or_key(api, gcs, template, caplog):
    caplog.set_level(logging.DEBUG)
    api.faults.append("input_unreachable")  # Oxen's error text repeats the input URL
    with pytest.raises(BackendError) as ei:
        make(api, gcs, url_mode="signed").generate(GenerationRequest(template))
    text = str(ei.value) + caplog.text + "".join(traceback.format_exception(ei.value))
    assert "Forbidden for url: ***" in str(ei.value) and not ei.value.retryable
    assert "X-Goog-Signature" not in text and API_KEY not in text
    api.faults.extend(["echo_secret"] * 3)
    with pytest.raises(BackendError) as ei:
        make(api, gcs).generate(GenerationRequest(template))
    assert API_KEY not in str(ei.value) + caplog.text
    assert staged_objects(gcs[1]) == []


def test_wrong_key_is_a_clear_non_retryable_error(api, gcs, template):
    url, client = gcs
    b = OxenBackend(
        "not-the-key-123",
        "m",
        GCSTemplateUploader(BUCKET, client=client, url_mode="media"),
        base_url=api.url,
        http=FAST,
    )
    with pytest.raises(BackendError, match=r"HTTP 401 \(check the API key / token\): Invalid API key") as ei:
        b.generate(GenerationRequest(template))
    assert not ei.value.retryable


def test_staging_failure_is_a_clear_error(api, gcs, template):
    url, client = gcs
    b = OxenBackend(
        API_KEY,
        "m",
        GCSTemplateUploader("no-such-bucket-xyz", client=client, url_mode="media"),
        base_url=api.url,
        http=FAST,
    )
    with pytest.raises(BackendError, match="could not stage the template in the bucket") as ei:
        b.generate(GenerationRequest(template))
    assert ei.value.retryable and api.requests == []


def test_config_errors():
    with pytest.raises(ValueError, match="api_key is empty"):
        OxenBackend("", "m", object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bare bucket name"):
        GCSTemplateUploader("gs://b/x", client=object())
    with pytest.raises(ValueError, match="url_ttl_s"):
        GCSTemplateUploader("b", client=object(), url_ttl_s=10)


def test_signed_mode_without_a_signing_key_fails_clearly_and_cleans_up(api, gcs, template):
    url, client = gcs  # anonymous credentials: cannot sign
    up = GCSTemplateUploader(BUCKET, client=client, url_mode="signed", api_access_endpoint=url)
    b = OxenBackend(API_KEY, "m", up, base_url=api.url, http=FAST)
    with pytest.raises(BackendError, match="cannot sign template URLs.*use a service account") as ei:
        b.generate(GenerationRequest(template))
    assert not ei.value.retryable and api.requests == [] and staged_objects(client) == []
