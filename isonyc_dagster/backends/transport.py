"""Shared HTTP layer of the remote image backends: retries, rate limits, circuit breaker, redaction.

Every remote backend (Modal, Oxen, Gemini, Vertex; see :mod:`.remote`) runs each HTTP attempt through
its one :class:`ResilientTransport`, which gives them the same behaviour:

- exponential backoff with full jitter (tenacity) on 429, 5xx, timeouts, connection errors and
  invalid responses; a server's ``Retry-After`` (header, or Google's ``RetryInfo.retryDelay``) is a
  lower bound on the wait, and one longer than ``max_retry_after_s`` ends the call at once
  (retryable) instead of parking a worker for an hour;
- a per-backend concurrency limit (a semaphore held only while a request is in flight, not while
  backing off);
- a circuit breaker: after ``breaker_threshold`` consecutive endpoint failures (5xx, timeouts,
  connection errors, unusable responses; *not* 429, which means "alive but busy") calls fail fast
  for ``breaker_cooldown_s``; then one probe goes through (half-open) and decides;
- strict image validation (:mod:`.validate`): decodable, complete, the exact expected size,
  an allowed mode, never resized;
- secrets (keys, tokens, signed URLs) are redacted from every message this module builds, and the
  final :class:`CallFailed` does not chain the underlying library exception (whose text we do not
  control).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import httpx
import tenacity
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from isonyc_dagster.backends.base import BackendConfigError, BackendError
from isonyc_dagster.errors import IsonycError
from isonyc_dagster.net import google_retry_delay, parse_retry_after

T = TypeVar("T")

log = logging.getLogger("isonyc_dagster.backends")


class HttpSettings(BaseModel):
    """Retry, timeout, concurrency and circuit-breaker settings shared by every remote backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float = Field(
        default=600.0, gt=0, description="read timeout of one request (model calls are slow)"
    )
    connect_timeout_s: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=5, ge=1, le=100, description="attempts per call, the first included")
    backoff_base_s: float = Field(default=1.0, ge=0, description="first backoff window; doubles per attempt")
    backoff_max_s: float = Field(
        default=60.0, ge=0, description="cap on one backoff wait (not on Retry-After)"
    )
    max_retry_after_s: float = Field(
        default=300.0,
        ge=0,
        description="a Retry-After longer than this ends the call (retryable) instead of waiting",
    )
    max_concurrency: int = Field(default=4, ge=1, le=1024, description="requests in flight per backend")
    breaker_threshold: int = Field(
        default=5, ge=1, description="consecutive endpoint failures that open the circuit"
    )
    breaker_cooldown_s: float = Field(default=60.0, ge=0, description="how long an open circuit fails fast")
    max_response_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)


def split_http_settings(settings: dict[str, Any]) -> tuple[HttpSettings, dict[str, Any]]:
    """Split flat keyword settings into an :class:`HttpSettings` and the rest (for ``make_backend``)."""
    names = set(HttpSettings.model_fields)
    http = {k: v for k, v in settings.items() if k in names}
    rest = {k: v for k, v in settings.items() if k not in names}
    try:
        return HttpSettings(**http), rest
    except ValidationError as e:
        msgs = "; ".join(
            f"{'.'.join(map(str, x['loc']))}: {x['msg']} (got {x.get('input')!r})" for x in e.errors()
        )
        raise BackendConfigError(f"invalid HTTP settings: {msgs}") from None


# --------------------------------------------------------------------------------------------------
# errors


class AttemptError(IsonycError):
    """One failed attempt. ``transient`` ones are retried; the message is already redacted."""

    def __init__(
        self,
        message: str,
        *,
        transient: bool,
        status: int | None = None,
        retry_after: float | None = None,
        endpoint_failure: bool = False,
        rate_limited: bool = False,
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status
        self.retry_after = retry_after
        self.endpoint_failure = endpoint_failure
        self.rate_limited = rate_limited


class CallFailed(BackendError):
    """A call that failed for good: after its retries, or at once when the circuit is open."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        attempts: int,
        status: int | None = None,
        rate_limited: bool = False,
        circuit_open: bool = False,
    ) -> None:
        super().__init__(message, retryable=retryable)
        self.attempts = attempts
        self.status = status
        self.rate_limited = rate_limited
        self.circuit_open = circuit_open


# --------------------------------------------------------------------------------------------------
# secrets


class Redactor:
    """Replaces every known secret (and its URL-encoded form) with ``***`` in text."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets: list[str] = []
        self._lock = threading.Lock()
        for s in secrets:
            self.add(s)

    def add(self, secret: str | None) -> None:
        # Very short strings would redact ordinary words; real keys and signed URLs are long.
        if not secret or len(secret) < 6:
            return
        from urllib.parse import quote

        with self._lock:
            for form in {secret, quote(secret, safe=""), quote(secret, safe="/:")}:
                if form not in self._secrets:
                    self._secrets.append(form)
            self._secrets.sort(key=len, reverse=True)

    def discard(self, secret: str | None) -> None:
        if not secret:
            return
        from urllib.parse import quote

        with self._lock:
            for form in {secret, quote(secret, safe=""), quote(secret, safe="/:")}:
                if form in self._secrets:
                    self._secrets.remove(form)

    def __call__(self, text: str) -> str:
        with self._lock:
            secrets = list(self._secrets)
        for s in secrets:
            text = text.replace(s, "***")
        return text


# --------------------------------------------------------------------------------------------------
# circuit breaker


class CircuitBreaker:
    """Consecutive-failure circuit breaker (closed → open → half-open → closed), thread-safe.

    Written here rather than taken from a library: the maintained Python breakers (pybreaker,
    circuitbreaker) wrap whole calls and count every exception, while we must count per *attempt*
    and only endpoint failures (a 429 or a 400 says the endpoint is alive).
    """

    def __init__(
        self, name: str, threshold: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ):
        self.name = name
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_in_flight = False
        self._last_error = ""

    @property
    def state(self) -> str:
        with self._lock:
            return self._state_locked()

    def _state_locked(self) -> str:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.cooldown_s:
            return "half-open"
        return "open"

    def before_attempt(self) -> None:
        """Raise :class:`CallFailed` at once while open; admit a single probe when half-open."""
        with self._lock:
            state = self._state_locked()
            if state == "closed":
                return
            if state == "half-open" and not self._probe_in_flight:
                self._probe_in_flight = True
                return
            assert self._opened_at is not None
            wait = max(0.0, self.cooldown_s - (self._clock() - self._opened_at))
            raise CallFailed(
                f"{self.name}: circuit open after {self._failures} consecutive endpoint failures "
                f"(last: {self._last_error}); not calling the endpoint for another {wait:.1f} s. "
                "Check that the endpoint is up; the call can be retried later.",
                retryable=True,
                attempts=0,
                circuit_open=True,
            )

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._probe_in_flight = False

    def record_failure(self, message: str) -> None:
        with self._lock:
            self._failures += 1
            self._last_error = message
            if self._probe_in_flight or self._failures >= self.threshold:
                if self._opened_at is None or self._probe_in_flight:
                    log.warning("%s: circuit opened after %d consecutive failures", self.name, self._failures)
                self._opened_at = self._clock()
            self._probe_in_flight = False

    def record_neutral(self) -> None:
        """An attempt that says nothing about endpoint health (429, client error) ends a probe."""
        with self._lock:
            self._probe_in_flight = False


# --------------------------------------------------------------------------------------------------
# wire helpers


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------------
# transport


def _wait_strategy(settings: HttpSettings) -> Callable[[tenacity.RetryCallState], float]:
    full_jitter = tenacity.wait_random_exponential(
        multiplier=settings.backoff_base_s, max=settings.backoff_max_s
    )

    def wait(state: tenacity.RetryCallState) -> float:
        backoff = full_jitter(state)
        exc = state.outcome.exception() if state.outcome else None
        ra = getattr(exc, "retry_after", None)
        if ra is not None:
            # Honour the server: never earlier than asked; a little jitter so callers don't stampede.
            return max(backoff, ra * (1.0 + random.uniform(0.0, 0.1)))
        return backoff

    return wait


class ResilientTransport:
    """One endpoint's HTTP client with retries, concurrency limit, circuit breaker and redaction."""

    def __init__(
        self,
        name: str,
        settings: HttpSettings,
        *,
        secrets: Iterable[str | None] = (),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self.settings = settings
        self.redact = Redactor(secrets)
        self.breaker = CircuitBreaker(name, settings.breaker_threshold, settings.breaker_cooldown_s)
        self._semaphore = threading.BoundedSemaphore(settings.max_concurrency)
        self._sleep = sleep
        timeout = httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s)
        # Authenticated API calls never follow redirects: httpx would forward custom auth headers
        # (x-goog-api-key, Modal-Secret) to whatever host a redirect names.
        self.client = httpx.Client(timeout=timeout, follow_redirects=False)
        # Unauthenticated downloads (signed/public result URLs) may redirect (CDNs do).
        self.download_client = httpx.Client(timeout=timeout, follow_redirects=True)

    def close(self) -> None:
        self.client.close()
        self.download_client.close()

    # -- the retry loop ---------------------------------------------------------------------------
    def call(
        self,
        attempt: Callable[[], T],
        *,
        what: str,
        give_up: Callable[[AttemptError], bool] | None = None,
        max_attempts: int | None = None,
    ) -> tuple[T, int]:
        """Run ``attempt`` until it succeeds; return (value, attempts used).

        ``attempt`` performs one request and raises :class:`AttemptError` on failure. ``give_up``
        may end the retries early (e.g. to fall back to another model on a 429). Raises
        :class:`CallFailed` with a redacted message when the call fails for good.
        """
        limit = max_attempts or self.settings.max_attempts
        attempts = 0

        def stop(state: tenacity.RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            ra = getattr(exc, "retry_after", None)
            # In this order: ``give_up`` may count what it sees, so it runs only when nothing else stops.
            return (
                state.attempt_number >= limit
                or (ra is not None and ra > self.settings.max_retry_after_s)
                or (give_up is not None and isinstance(exc, AttemptError) and give_up(exc))
            )

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning(
                "%s: %s attempt %d/%d failed (%s); retrying in %.2f s",
                self.name,
                what,
                state.attempt_number,
                limit,
                exc,
                wait,
            )

        retrying = tenacity.Retrying(
            stop=stop,
            wait=_wait_strategy(self.settings),
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, AttemptError) and e.transient),
            reraise=True,
            sleep=self._sleep,
            before_sleep=before_sleep,
        )
        try:
            for attempt_ctx in retrying:
                with attempt_ctx:
                    attempts = attempt_ctx.retry_state.attempt_number
                    value = self._one_attempt(attempt)
            return value, attempts
        except AttemptError as e:
            detail = self.redact(str(e))
            if e.retry_after is not None and e.retry_after > self.settings.max_retry_after_s:
                detail += (
                    f"; the server asked to wait {e.retry_after:.0f} s, more than max_retry_after_s="
                    f"{self.settings.max_retry_after_s:.0f}, so not waiting"
                )
            raise CallFailed(
                f"{self.name}: {what} failed after {attempts} attempt(s): {detail}",
                retryable=e.transient,
                attempts=attempts,
                status=e.status,
                rate_limited=e.rate_limited,
            ) from None
        except CallFailed as e:
            if e.circuit_open:
                e.attempts = attempts - 1 if attempts else 0
            raise

    def _one_attempt(self, attempt: Callable[[], T]) -> T:
        self.breaker.before_attempt()
        with self._semaphore:
            try:
                value = attempt()
            except AttemptError as e:
                e.args = (clip(self.redact(str(e))),)
                if e.endpoint_failure:
                    self.breaker.record_failure(str(e))
                else:
                    self.breaker.record_neutral()
                raise
            except httpx.TimeoutException:
                err = AttemptError(
                    f"request timed out (read timeout {self.settings.timeout_s:g} s)",
                    transient=True,
                    endpoint_failure=True,
                )
                self.breaker.record_failure(str(err))
                raise err from None
            except httpx.TransportError as e:
                err = AttemptError(
                    clip(self.redact(f"connection failed ({type(e).__name__}: {e})")),
                    transient=True,
                    endpoint_failure=True,
                )
                self.breaker.record_failure(str(err))
                raise err from None
            except BaseException:
                self.breaker.record_neutral()
                raise
        self.breaker.record_success()
        return value

    # -- request helpers --------------------------------------------------------------------------
    def read_capped(self, response: httpx.Response) -> bytes:
        """The response body, refusing more than ``max_response_bytes``."""
        limit = self.settings.max_response_bytes
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise AttemptError(
                f"response too large ({declared} bytes > {limit})",
                transient=False,
                status=response.status_code,
            )
        buf = bytearray()
        for chunk in response.iter_bytes():
            buf.extend(chunk)
            if len(buf) > limit:
                raise AttemptError(
                    f"response too large (> {limit} bytes)", transient=False, status=response.status_code
                )
        return bytes(buf)

    @contextlib.contextmanager
    def stream(
        self, method: str, url: str, *, download: bool = False, **kwargs: Any
    ) -> Iterator[httpx.Response]:
        client = self.download_client if download else self.client
        with client.stream(method, url, **kwargs) as response:
            yield response

    def request_json(self, method: str, url: str, *, what: str, **kwargs: Any) -> Any:
        """One request whose success body is JSON; HTTP errors become classified AttemptErrors."""
        with self.stream(method, url, **kwargs) as response:
            body = self.read_capped(response)
            raise_for_status(response, body, what=what)
            try:
                return json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise AttemptError(
                    f"{what}: HTTP {response.status_code} but the body is not JSON: {excerpt(body)}",
                    transient=True,
                    status=response.status_code,
                    endpoint_failure=True,
                ) from None

    def download(self, url: str, *, what: str, retry_statuses: tuple[int, ...] = ()) -> bytes:
        """GET bytes from an unauthenticated URL (a signed/public result URL)."""
        with self.stream("GET", url, download=True) as response:
            body = self.read_capped(response)
            if response.status_code in retry_statuses:
                raise AttemptError(
                    f"{what}: HTTP {response.status_code} (not published yet?)",
                    transient=True,
                    status=response.status_code,
                )
            raise_for_status(response, body, what=what)
            return body


#: Messages are cut to this length *after* redaction (cutting first could split a secret past the redactor).
MESSAGE_LIMIT = 500
_RAW_LIMIT = 8192


def clip(text: str, limit: int = MESSAGE_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def excerpt(body: bytes, limit: int = _RAW_LIMIT) -> str:
    text = body[:limit].decode("utf-8", "replace").replace("\n", " ").strip()
    return repr(text + ("…" if len(body) > limit else ""))


def _error_message(body: bytes) -> tuple[str, Any]:
    try:
        parsed = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return excerpt(body), None
    if isinstance(parsed, dict):
        err = parsed.get("error")
        if isinstance(err, dict):  # Google style {"error": {"code", "message", "status"}}
            status = err.get("status")
            msg = str(err.get("message", ""))[:_RAW_LIMIT]
            return (f"{status}: {msg}" if status else msg), parsed
        for key in ("detail", "error", "message"):
            if key in parsed:
                return str(parsed[key])[:_RAW_LIMIT], parsed
    return excerpt(body), parsed


def raise_for_status(response: httpx.Response, body: bytes, *, what: str) -> None:
    """Classify a non-2xx response into an :class:`AttemptError` (2xx returns)."""
    code = response.status_code
    if 200 <= code < 300:
        return
    message, parsed = _error_message(body)
    resource_exhausted = "RESOURCE_EXHAUSTED" in message
    if code == 429 or resource_exhausted:
        ra = parse_retry_after(response.headers.get("retry-after"))
        if ra is None:
            ra = google_retry_delay(parsed)
        raise AttemptError(
            f"{what}: rate limited (HTTP {code}{', Retry-After ' + format(ra, 'g') + ' s' if ra is not None else ''}): "
            f"{message}",
            transient=True,
            status=code,
            retry_after=ra,
            rate_limited=True,
        )
    if code in (408, 425) or code >= 500:
        ra = parse_retry_after(response.headers.get("retry-after"))
        raise AttemptError(
            f"{what}: server error HTTP {code}: {message}",
            transient=True,
            status=code,
            retry_after=ra,
            endpoint_failure=True,
        )
    hint = {
        401: " (check the API key / token)",
        403: " (check the API key / token and its permissions)",
        404: " (check the endpoint URL and model id)",
    }.get(code, "")
    raise AttemptError(f"{what}: HTTP {code}{hint}: {message}", transient=False, status=code)


def parse_model(model: type[BaseModel], data: Any, *, what: str) -> Any:
    """Validate a response against its strict schema; a mismatch is a (retryable) bad response."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, x['loc'])) or '(root)'}: {x['msg']}" for x in e.errors()[:3]
        )
        raise AttemptError(
            f"{what}: response does not match the expected schema ({problems})",
            transient=True,
            endpoint_failure=True,
        ) from None
