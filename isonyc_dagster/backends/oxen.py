"""Oxen.ai hosted fine-tunes: ``POST /api/images/edit`` with the template as a URL.

Oxen fetches ``input_image`` itself, so the template must be reachable without credentials. The
original made every template a *public* GCS object and never deleted it. Here the template goes to
a short-lived object in our own bucket, handed out as a V4 signed URL (valid ``url_ttl_s``), and is
deleted in a ``finally`` as soon as the call ends; the signed URL is a secret (redacted from errors,
absent from provenance). A bucket lifecycle rule ("delete after 1 day" on the prefix) is the
backstop for a process killed mid-call.

Response (one strict schema): ``{"images": [{"url": ...}], ...}``; the image is downloaded without
our credentials and validated (PNG, exact template size).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import Iterator
from typing import Any, Literal, Protocol
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from isonyc_dagster.backends import transport
from isonyc_dagster.backends.base import BackendConfigError, BackendError, GenerationRequest, GenerationResult
from isonyc_dagster.backends.modal import DEFAULT_PROMPT
from isonyc_dagster.backends.remote import RemoteBackend
from isonyc_dagster.backends.transport import HttpSettings
from isonyc_dagster.backends.validate import CheckedImage, checked

log = logging.getLogger("isonyc_dagster.backends.oxen")


class TemplateUploader(Protocol):
    """Stages a template where a remote API can GET it without our credentials, for one call."""

    def stage(self, png: bytes) -> contextlib.AbstractContextManager[str]:
        """Upload ``png``; yield a URL readable without credentials; delete the object on exit."""
        ...


class GCSTemplateUploader:
    """Short-lived template objects in our GCS bucket (google-cloud-storage), never public.

    ``url_mode="signed"`` (production): a V4 signed GET URL. Signing needs a key: service-account
    credentials sign locally; other credentials (GCE/Cloud Run metadata server) are refreshed and
    signed through IAM ``signBlob`` (the service account needs ``iam.serviceAccountTokenCreator`` on
    itself). ``signing_credentials`` overrides the client's credentials for signing only.
    ``api_access_endpoint`` is the host put into signed URLs (default ``https://storage.googleapis.com``).

    ``url_mode="media"``: the JSON API media URL on the client's endpoint, for the storage emulator
    (which needs no signature); on real GCS such a URL requires auth, so it is not for production.
    """

    def __init__(
        self,
        bucket: str,
        *,
        client: Any | None = None,
        prefix: str = "isonyc-templates/",
        url_ttl_s: int = 900,
        url_mode: Literal["signed", "media"] = "signed",
        signing_credentials: Any | None = None,
        api_access_endpoint: str | None = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise BackendConfigError(f"GCS bucket must be a bare bucket name, got {bucket!r}")
        if not 60 <= url_ttl_s <= 7 * 24 * 3600:
            raise BackendConfigError(f"url_ttl_s must be within 60 s .. 7 days (V4 limit), got {url_ttl_s}")
        if url_mode not in ("signed", "media"):
            raise BackendConfigError(f"url_mode must be 'signed' or 'media', got {url_mode!r}")
        if client is None:
            from google.cloud import storage

            client = storage.Client()
        self.client = client
        self.bucket_name = bucket
        self.prefix = prefix
        self.url_ttl_s = url_ttl_s
        self.url_mode = url_mode
        self.signing_credentials = signing_credentials
        self.api_access_endpoint = api_access_endpoint

    def __repr__(self) -> str:
        return f"GCSTemplateUploader(bucket={self.bucket_name!r}, prefix={self.prefix!r}, url_mode={self.url_mode!r})"

    def _signed_url(self, blob: Any) -> str:
        kwargs: dict[str, Any] = {
            "version": "v4",
            "expiration": dt.timedelta(seconds=self.url_ttl_s),
            "method": "GET",
        }
        if self.api_access_endpoint:
            kwargs["api_access_endpoint"] = self.api_access_endpoint
        creds = self.signing_credentials or getattr(self.client, "_credentials", None)
        from google.auth import credentials as ga_credentials

        if isinstance(creds, ga_credentials.Signing):
            kwargs["credentials"] = creds
        else:
            # Metadata-server credentials cannot sign locally: sign through IAM with a fresh token.
            import google.auth.transport.requests

            if creds is None:
                raise BackendError("oxen: cannot sign template URLs: the GCS client has no credentials")
            if not creds.valid:  # compute-engine credentials only learn their real email on refresh
                creds.refresh(google.auth.transport.requests.Request())
            email = getattr(creds, "service_account_email", None)
            if not email or email == "default":
                raise BackendError(
                    "oxen: cannot sign template URLs: the GCS credentials have no signing key and no service "
                    "account email; use a service account (key file or workload identity) for the uploader"
                )
            kwargs.update(service_account_email=email, access_token=creds.token)
        return blob.generate_signed_url(**kwargs)

    def _media_url(self, blob: Any) -> str:
        base = str(self.client._connection.API_BASE_URL).rstrip("/")
        return f"{base}/download/storage/v1/b/{self.bucket_name}/o/{quote(blob.name, safe='')}?alt=media"

    @contextlib.contextmanager
    def stage(self, png: bytes) -> Iterator[str]:
        name = f"{self.prefix}{uuid.uuid4().hex}.png"
        blob = self.client.bucket(self.bucket_name).blob(name)
        # if_generation_match=0: never overwrite an existing object; no ACL change: stays private.
        blob.upload_from_string(png, content_type="image/png", if_generation_match=0)
        try:
            yield self._signed_url(blob) if self.url_mode == "signed" else self._media_url(blob)
        finally:
            try:
                blob.delete()
            except Exception as e:  # a failed cleanup must not mask the call's own outcome
                log.warning(
                    "oxen: could not delete staged template gs://%s/%s (%s); the bucket lifecycle "
                    "rule will remove it",
                    self.bucket_name,
                    name,
                    type(e).__name__,
                )


class OxenImageItem(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: str = Field(pattern=r"^https?://")


class OxenEditResponse(BaseModel):
    """Strict response schema (the original tried six different shapes)."""

    model_config = ConfigDict(extra="ignore")
    images: list[OxenImageItem] = Field(min_length=1)


class OxenBackend(RemoteBackend):
    """Oxen.ai image-edit API (hosted Qwen-Image-Edit fine-tunes)."""

    name = "oxen"

    def __init__(
        self,
        api_key: str,
        model: str,
        uploader: TemplateUploader,
        *,
        base_url: str = "https://hub.oxen.ai",
        steps: int = 14,
        default_prompt: str = DEFAULT_PROMPT,
        send_negative_prompt: bool = True,
        download_attempts: int = 4,
        http: HttpSettings | None = None,
    ) -> None:
        if not api_key:
            raise BackendConfigError("oxen api_key is empty; set it from the environment (e.g. OXEN_API_KEY)")
        if not model:
            raise BackendConfigError(
                "oxen model is empty; give the model id of the fine-tune (e.g. cannoneyed-quiet-green-lamprey)"
            )
        if not base_url.startswith(("http://", "https://")):
            raise BackendConfigError(f"oxen base_url must be an http(s) URL, got {base_url!r}")
        self.uploader = uploader
        self.base_url = base_url.rstrip("/")
        self.steps = steps
        self.default_prompt = default_prompt
        self.send_negative_prompt = send_negative_prompt
        self.download_attempts = download_attempts
        self._api_key = SecretStr(api_key)
        super().__init__(model_id=model, http=http, secrets=[api_key])

    def __repr__(self) -> str:
        return f"OxenBackend(model={self.model_id!r}, base_url={self.base_url!r}, uploader={self.uploader!r})"

    def generate(self, request: GenerationRequest) -> GenerationResult:
        call = self._begin(request)
        headers = {
            "Authorization": f"Bearer {self._api_key.get_secret_value()}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        url = f"{self.base_url}/api/images/edit"
        redact = self.transport.redact
        with contextlib.ExitStack() as stack:
            try:
                signed_url = stack.enter_context(self.uploader.stage(request.template_png))
            except BackendError:
                raise
            except Exception as e:
                raise BackendError(
                    f"oxen: could not stage the template in the bucket ({type(e).__name__}: {redact(str(e))[:300]})",
                    retryable=True,
                ) from None
            # The signed URL grants read access: keep it out of every message, forget it afterwards.
            redact.add(signed_url)
            stack.callback(redact.discard, signed_url)
            payload: dict[str, Any] = {
                "model": self.model_id,
                "input_image": signed_url,
                "prompt": request.prompt or self.default_prompt,
                "num_inference_steps": self.steps,
            }
            if self.send_negative_prompt and request.negative_prompt:
                payload["negative_prompt"] = request.negative_prompt

            def post() -> OxenEditResponse:
                data = self.transport.request_json(
                    "POST", url, what="images/edit", json=payload, headers=headers
                )
                return transport.parse_model(OxenEditResponse, data, what="images/edit")

            resp, attempts = self.transport.call(post, what="images/edit")
            result_url = resp.images[0].url
            redact.add(result_url)  # Oxen's URL may carry its own access token
            stack.callback(redact.discard, result_url)

            def download() -> CheckedImage:
                # 403/404 right after the call: Oxen has not published the file yet (seen in the original).
                raw = self.transport.download(result_url, what="result download", retry_statuses=(403, 404))
                return checked(raw, expected_size=call.size, what="oxen result image")

            image, dl_attempts = self.transport.call(
                download, what="result download", max_attempts=self.download_attempts
            )
        # The Oxen edit API takes no seed: each call is a fresh sample.
        return call.result(
            image.png, seed=None, attempts=attempts, download_attempts=dl_attempts, steps=self.steps
        )


__all__ = ["GCSTemplateUploader", "OxenBackend", "OxenEditResponse", "TemplateUploader"]
