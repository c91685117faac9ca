"""A fake ``edit_b64`` GPU endpoint with realistic timing, on 127.0.0.1, that logs when its GPU was busy.

Like one deployment of ``inference/server.py`` on one GPU: the GPU runs one generation at a time (the
server's lock) taking ``latency_s ± jitter_s`` (uniform), a request beyond ``capacity`` in flight gets
HTTP 429 with ``Retry-After`` (Modal's answer when its input queue is full), and a fraction
``p429`` of requests get a spontaneous 429 too. ``busy`` holds each generation's (start, end) on the
GPU, from which utilisation (GPU busy time / wall time) is computed. Answers are real edits
(:func:`tests.fake_apis.edit_template`), sent after the simulated GPU time.
"""

from __future__ import annotations

import base64
import random
import threading
import time
from typing import Any

from tests.fake_apis import FakeModal, Recorded, Reply, edit_template, json_reply


class FakeGpuEndpoint(FakeModal):
    def __init__(
        self,
        *,
        latency_s: float = 18.0,
        jitter_s: float = 4.0,
        capacity: int = 2,
        p429: float = 0.0,
        retry_after_s: float = 5.0,
        seed: int = 0,
        **kw: Any,
    ) -> None:
        super().__init__(retry_after=retry_after_s, **kw)
        self.latency_s, self.jitter_s, self.capacity, self.p429 = latency_s, jitter_s, capacity, p429
        self._rng = random.Random(seed)
        self._gpu = threading.Lock()
        self._state = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.busy: list[tuple[float, float]] = []  # GPU intervals (time.monotonic())
        self.rejected = 0  # 429s sent

    def dispatch(self, rec: Recorded) -> Reply:
        with self._state:
            spontaneous = self._rng.random() < self.p429
            if spontaneous or self.in_flight >= self.capacity:
                self.rejected += 1
                return self.generic_fault("429", rec) or Reply(429)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            gpu_time = max(
                0.0, self._rng.uniform(self.latency_s - self.jitter_s, self.latency_s + self.jitter_s)
            )
        try:
            req = rec.json()
            seed = req["seed"] if req.get("seed") is not None else 1234
            with self._gpu:
                start = time.monotonic()
                img = edit_template(base64.b64decode(req["image_b64"]), seed)
                time.sleep(max(0.0, gpu_time - (time.monotonic() - start)))
                end = time.monotonic()
            with self._state:
                self.busy.append((start, end))
            return json_reply(
                {
                    "image_b64": base64.b64encode(img).decode(),
                    "seed": seed,
                    "model_id": "fake-gpu",
                    "lora": "fake-lora@v1",
                }
            )
        finally:
            with self._state:
                self.in_flight -= 1

    def busy_seconds(self, t0: float | None = None, t1: float | None = None) -> float:
        """GPU busy time, clipped to [t0, t1] when given."""
        lo = float("-inf") if t0 is None else t0
        hi = float("inf") if t1 is None else t1
        with self._state:
            return sum(max(0.0, min(e, hi) - max(s, lo)) for s, e in self.busy)
