"""Modal backend: our Qwen-Image-Edit + LoRA server (``inference/server.py``) over the ``edit_b64`` protocol.

Wire format (lossless both ways; the original sent JPEG q90 and lost the red border's crispness)::

    POST <endpoint>   {"image_b64": <PNG>, "prompt", "negative_prompt", "steps", "true_cfg_scale",
                       "guidance_scale", "seed"}
    200               {"image_b64": <PNG>, "seed": <int>, "model_id"?: str, "lora"?: str}

The client always picks the seed (when the request has none) so a retried attempt asks for the
same sample and the seed is known even if the response is lost; our server echoes it, and an echo of
another seed is an error.

It also works with the original isometric.nyc server, which answers ``{"image_b64"}`` only:

- no ``seed`` in the answer: the seed is *unknown* (provenance ``seed: None``, ``seed_confirmed: False``);
  the seed we asked for is kept as ``seed_requested``. Nothing fails once the GPU has run.
- no ``model_id``/``lora``: provenance has this backend's configured ``model_id`` and ``lora: None``.
- a JPEG answer: decoded, checked like a PNG (exact template size, complete, opaque), stored as a
  lossless PNG of the decoded pixels, with ``lossy_output: True`` in provenance.

Optional Modal proxy auth: ``Modal-Key`` / ``Modal-Secret`` headers.

Several endpoints (e.g. one deployment per GPU, or per region): ``endpoint`` may be a list of URLs (or
one string of comma-separated URLs). Each attempt goes to the least busy endpoint with a free slot,
at most ``endpoint_concurrency`` requests in flight per endpoint (2 keeps one GPU fed: one request
runs while the next waits); ``max_concurrency`` (:class:`HttpSettings`) still caps the total. With ``slot_dir`` (a
directory all run processes share; the Dagster resource passes one) ``endpoint_concurrency`` holds host-wide, across
concurrent runs, not per process.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import threading
import time
from collections.abc import Iterator, Sequence

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from isonyc_dagster.backends import transport
from isonyc_dagster.backends._slots import POLL_S, SlotFiles
from isonyc_dagster.backends.base import BackendConfigError, GenerationRequest, GenerationResult
from isonyc_dagster.backends.remote import RemoteBackend
from isonyc_dagster.backends.transport import AttemptError, HttpSettings
from isonyc_dagster.backends.validate import CheckedImage, checked_b64

#: The prompt the "omni" LoRAs were trained with (anchor §4.2).
DEFAULT_PROMPT = (
    "Fill in the outlined section with the missing pixels corresponding to the <isometric nyc pixel art> style, "
    "removing the border and exactly following the shape/style/structure of the surrounding image (if present)."
)


class EditResponse(BaseModel):
    """Strict schema of the server's answer (``seed`` and the ids are absent from the original server's)."""

    model_config = ConfigDict(extra="ignore")

    image_b64: str = Field(min_length=1)
    seed: int | None = None
    model_id: str | None = None
    lora: str | None = None


#: Answer formats accepted: our server's PNG, and the JPEG the original server may send (marked lossy).
ACCEPTED_FORMATS = ("PNG", "JPEG")


def new_seed() -> int:
    return secrets.randbelow(2**31 - 1)


class EndpointPool:
    """Copies of one ``edit_b64`` app: hands out the least busy endpoint that has a free slot (thread-safe).

    Ties go to the endpoint that started a request longest ago, so idle endpoints take turns; a fresh pool starts
    at a random endpoint, so that several processes (concurrent runs) do not all send their first request to the
    first endpoint.
    ``per_endpoint`` None: no limit per endpoint (the transport's ``max_concurrency`` is the only one).
    ``slot_dir``: the limit holds host-wide, across every process using that directory (concurrent runs, see
    ``backends._slots``), and "least busy" counts their requests too; None: this process's requests only.
    """

    def __init__(
        self, urls: Sequence[str], per_endpoint: int | None, slot_dir: str | os.PathLike[str] | None = None
    ) -> None:
        self.urls = list(urls)
        self.per_endpoint = per_endpoint
        self.in_flight = [0] * len(self.urls)
        # Never used is "longest ago": a random order among them (see above).
        self._started = [-random.random() for _ in self.urls]
        self._cond = threading.Condition()
        self._polling = False  # a thread of this process is polling the host-wide slots
        self._shared = (
            SlotFiles(slot_dir, self.urls, per_endpoint)
            if slot_dir is not None and per_endpoint is not None
            else None
        )

    def _take(self) -> tuple[int, int] | None:
        """The endpoint (and host-wide slot, or -1) to send to, now taken; None when all are full (under the lock)."""
        if self._shared is None:
            free = [
                i for i, n in enumerate(self.in_flight) if self.per_endpoint is None or n < self.per_endpoint
            ]
            if not free:
                return None
            return min(free, key=lambda j: (self.in_flight[j], self._started[j])), -1
        slots = self._shared.free()  # each taken: keep the chosen one, give back the others
        free = [i for i, ks in enumerate(slots) if ks]
        chosen = min(free, key=lambda j: (-len(slots[j]), self._started[j])) if free else None
        for i, ks in enumerate(slots):
            for k in ks[1:] if i == chosen else ks:
                self._shared.release(i, k)
        return None if chosen is None else (chosen, slots[chosen][0])

    @contextlib.contextmanager
    def slot(self) -> Iterator[str]:
        """Hold one slot of the chosen endpoint while a request to it is in flight; yields its URL."""
        with self._cond:
            if self._shared is not None and self._shared.forked():  # a forked child: the parent's requests
                self.in_flight = [0] * len(self.urls)  # (and polling threads) are not here
                self._polling = False
            while (taken := self._take()) is None:
                if self._shared is None or self._polling:
                    self._cond.wait()  # a release here (or the thread that polls) wakes it
                    continue
                # Another process's release wakes no one here: one thread of this process looks every POLL_S.
                self._polling = True
                try:
                    self._cond.wait(POLL_S)
                finally:
                    self._polling = False
            if self._shared is not None:
                self._cond.notify()  # another waiter takes over the polling
            i, k = taken
            self.in_flight[i] += 1
            self._started[i] = time.monotonic()
        try:
            yield self.urls[i]
        finally:
            with self._cond:
                self.in_flight[i] -= 1
                if self._shared is not None:
                    self._shared.release(i, k)
                self._cond.notify()

    def close(self) -> None:
        """Close the host-wide slot files (a slot still held is freed)."""
        with self._cond:
            if self._shared is not None:
                self._shared.close()


def endpoint_list(endpoint: str | Sequence[str]) -> list[str]:
    """``endpoint`` as a list of URLs (a string may hold several, comma- or space-separated)."""
    urls = endpoint.replace(",", " ").split() if isinstance(endpoint, str) else list(endpoint)
    if not urls:
        raise BackendConfigError("modal endpoint is empty: give the URL of the edit_b64 endpoint")
    for url in urls:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise BackendConfigError(
                f"modal endpoint must be an http(s) URL of the edit_b64 endpoint, got {url!r}"
            )
    return urls


class ModalBackend(RemoteBackend):
    """Client of the ``edit_b64`` endpoint served by ``inference/server.py`` on Modal."""

    name = "modal"

    def __init__(
        self,
        endpoint: str | Sequence[str],
        *,
        token_id: str | None = None,
        token_secret: str | None = None,
        model_id: str = "qwen-image-edit+lora",
        steps: int = 14,
        true_cfg_scale: float = 2.0,
        guidance_scale: float = 3.0,
        default_prompt: str = DEFAULT_PROMPT,
        http: HttpSettings | None = None,
        endpoint_concurrency: int | None = None,
        slot_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        urls = endpoint_list(endpoint)
        if endpoint_concurrency is not None and endpoint_concurrency < 1:
            raise BackendConfigError(f"modal endpoint_concurrency must be ≥ 1, got {endpoint_concurrency}")
        if (token_id is None) != (token_secret is None):
            raise BackendConfigError(
                "modal proxy auth needs both token_id (Modal-Key) and token_secret (Modal-Secret), or neither"
            )
        if not 1 <= steps <= 100:
            raise BackendConfigError(f"modal steps must be within 1..100, got {steps}")
        self.endpoint = urls[0] if len(urls) == 1 else ",".join(urls)
        self.endpoints = EndpointPool(urls, endpoint_concurrency, slot_dir)
        self.default_prompt = default_prompt
        #: Sent with every request as they are, and recorded in provenance.
        self.sampling = {"steps": steps, "true_cfg_scale": true_cfg_scale, "guidance_scale": guidance_scale}
        self._token_id = SecretStr(token_id) if token_id else None
        self._token_secret = SecretStr(token_secret) if token_secret else None
        super().__init__(model_id=model_id, http=http, secrets=[token_id, token_secret])

    @property
    def max_in_flight(self) -> int:
        per = self.endpoints.per_endpoint
        total = self.transport.settings.max_concurrency
        return total if per is None else min(total, per * len(self.endpoints.urls))

    def close(self) -> None:
        super().close()
        self.endpoints.close()

    def __repr__(self) -> str:
        auth = "proxy-auth" if self._token_id else "no-auth"
        return f"ModalBackend(endpoint={self.endpoint!r}, model_id={self.model_id!r}, {auth})"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._token_id and self._token_secret:
            headers["Modal-Key"] = self._token_id.get_secret_value()
            headers["Modal-Secret"] = self._token_secret.get_secret_value()
        return headers

    def generate(self, request: GenerationRequest) -> GenerationResult:
        call = self._begin(request)
        seed = request.seed if request.seed is not None else new_seed()
        payload = {
            "image_b64": transport.b64(request.template_png),
            "prompt": request.prompt or self.default_prompt,
            "negative_prompt": request.negative_prompt or None,
            **self.sampling,
            "seed": seed,
        }
        headers = self._headers()

        def attempt() -> tuple[CheckedImage, EditResponse]:
            with self.endpoints.slot() as url:
                data = self.transport.request_json(
                    "POST", url, what="edit_b64", json=payload, headers=headers
                )
            resp = transport.parse_model(EditResponse, data, what="edit_b64")
            if resp.seed is not None and resp.seed != seed:
                raise AttemptError(
                    f"edit_b64: server used seed {resp.seed}, not the requested {seed}", transient=False
                )
            image = checked_b64(
                resp.image_b64, expected_size=call.size, what="edit_b64 image", formats=ACCEPTED_FORMATS
            )
            return image, resp

        (image, resp), attempts = self.transport.call(attempt, what="edit_b64")
        confirmed = resp.seed is not None
        return call.result(
            image.png,
            seed=seed if confirmed else None,  # unknown unless the server says which seed it used
            attempts=attempts,
            model_id=resp.model_id,
            **self.sampling,
            lora=resp.lora,
            seed_requested=seed,
            seed_confirmed=confirmed,
            output_format=image.source_format,
            lossy_output=image.lossy,
        )
