"""What every remote backend (Modal, Oxen, Gemini, Vertex) shares: its transport and how it reports a result."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from isonyc_dagster.backends.base import GenerationRequest, GenerationResult, ImageBackend
from isonyc_dagster.backends.transport import HttpSettings, ResilientTransport, sha256
from isonyc_dagster.backends.validate import template_size


class RemoteBackend(ImageBackend):
    """An :class:`ImageBackend` that calls a model's HTTP API through one :class:`ResilientTransport`.

    Subclasses check their own settings, then call ``super().__init__`` with the model id, the HTTP
    settings and the secrets to redact from every message. ``generate`` starts with :meth:`_begin` and
    returns :meth:`Generation.result`.
    """

    def __init__(
        self, *, model_id: str, http: HttpSettings | None, secrets: Iterable[str | None] = ()
    ) -> None:
        self.model_id = model_id
        self.transport = ResilientTransport(self.name, http or HttpSettings(), secrets=secrets)

    @property
    def max_in_flight(self) -> int:
        return self.transport.settings.max_concurrency

    def _begin(self, request: GenerationRequest) -> Generation:
        """Start timing ``request``; its template must be a PNG, whose size the answer must have."""
        start = time.monotonic()
        return Generation(self.name, self.model_id, request, template_size(request, backend=self.name), start)

    def close(self) -> None:
        self.transport.close()


@dataclass(frozen=True)
class Generation:
    """One ``generate`` call of a remote backend, from :meth:`RemoteBackend._begin` to its result."""

    backend: str
    model_id: str
    request: GenerationRequest
    size: tuple[int, int]  # of the template, and of the image the model must answer
    start: float  # time.monotonic() at the start

    def result(
        self, image_png: bytes, *, seed: int | None, attempts: int, model_id: str | None = None, **extra: Any
    ) -> GenerationResult:
        """The result with its provenance: the common keys, then ``extra``, then the output's hash.

        ``model_id`` overrides the backend's (a server may name the model it really used, or a fallback ran).
        """
        provenance: dict[str, Any] = {
            "backend": self.backend,
            "model_id": model_id or self.model_id,
            "prompt_sha256": self.request.prompt_sha256,
            "template_sha256": sha256(self.request.template_png),
            "seed": seed,
            "latency_s": round(time.monotonic() - self.start, 4),
            "attempts": attempts,
            **extra,
            "output_sha256": sha256(image_png),
        }
        return GenerationResult(image_png, provenance)
