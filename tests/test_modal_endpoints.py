"""ModalBackend over several endpoints: least-busy dispatch, a per-endpoint concurrency cap (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from isonyc_dagster.backends.base import BackendConfigError, GenerationRequest
from isonyc_dagster.backends.modal import EndpointPool, ModalBackend
from isonyc_dagster.backends.registry import make_backend
from isonyc_dagster.backends.transport import HttpSettings
from tests.fake_apis import edit_template, make_template
from tests.fake_gpu import FakeGpuEndpoint


def test_pool_fills_every_endpoint_before_doubling_up_and_blocks_when_full():
    pool = EndpointPool(["http://a", "http://b", "http://c"], per_endpoint=2)
    with contextlib.ExitStack() as held:
        first = [held.enter_context(pool.slot()) for _ in range(3)]
        assert sorted(first) == ["http://a", "http://b", "http://c"]  # one each before any gets a second
        second = [held.enter_context(pool.slot()) for _ in range(3)]
        assert sorted(second) == ["http://a", "http://b", "http://c"]
        assert pool.in_flight == [2, 2, 2]

        got: list[str] = []
        seventh = pool.slot()  # kept referenced: a collected context manager would release its slot
        waiter = threading.Thread(target=lambda: got.append(seventh.__enter__()))
        waiter.start()
        waiter.join(timeout=0.3)
        assert waiter.is_alive() and got == []  # every endpoint is full: the seventh request waits
    waiter.join(timeout=5)
    assert len(got) == 1 and pool.in_flight[pool.urls.index(got[0])] == 1
    seventh.__exit__(None, None, None)
    assert pool.in_flight == [0, 0, 0]


def test_requests_spread_over_endpoints_within_their_concurrency():
    template = make_template(64)[0]
    with (
        FakeGpuEndpoint(latency_s=0.2, jitter_s=0.0, capacity=2) as e1,
        FakeGpuEndpoint(latency_s=0.2, jitter_s=0.0, capacity=2) as e2,
        FakeGpuEndpoint(latency_s=0.2, jitter_s=0.0, capacity=2) as e3,
    ):
        endpoints = (e1, e2, e3)
        backend = ModalBackend(
            ",".join(f"{e.url}/edit_b64" for e in endpoints),
            endpoint_concurrency=2,
            http=HttpSettings(max_concurrency=16, timeout_s=10, max_attempts=2),
        )
        assert backend.max_in_flight == 6  # 3 endpoints × 2, under max_concurrency
        with ThreadPoolExecutor(12) as pool:
            results = list(
                pool.map(lambda s: backend.generate(GenerationRequest(template, seed=s)), range(18))
            )
        backend.close()
    assert [r.image_png for r in results] == [edit_template(template, s) for s in range(18)]
    # Every endpoint served, none ever had more than 2 in flight (no 429 for a full queue was needed).
    served = [len(e.busy) for e in endpoints]
    assert sum(served) == 18 and min(served) >= 4, served
    assert all(e.max_in_flight == 2 for e in endpoints)
    assert sum(e.rejected for e in endpoints) == 0


def test_endpoint_list_settings():
    b = make_backend(
        "modal", url=["http://127.0.0.1:1/edit_b64", "http://127.0.0.1:2/edit_b64"], endpoint_concurrency=2
    )
    assert b.endpoints.urls == ["http://127.0.0.1:1/edit_b64", "http://127.0.0.1:2/edit_b64"]
    assert b.max_in_flight == 4  # the default max_concurrency (4) caps 2 × 2
    assert ModalBackend("http://x/edit_b64").max_in_flight == 4  # one endpoint: unchanged behaviour
    with pytest.raises(BackendConfigError, match="must be an http"):
        ModalBackend("http://ok/edit_b64, ftp://bad")
    with pytest.raises(BackendConfigError, match="endpoint_concurrency must be ≥ 1"):
        ModalBackend("http://ok/edit_b64", endpoint_concurrency=0)


def test_endpoints_and_transport_settings_do_not_change_the_step_identity() -> None:
    """Adding an endpoint or raising concurrency must not make committed steps look different (and regenerate);
    a setting that changes what the model draws does."""
    import json

    from isonyc_dagster.defs.resources import GeneratorResource

    def identity(**settings: object) -> str:
        return GeneratorResource(backend="modal", settings_json=json.dumps(settings)).identity("p")

    one = identity(url="http://127.0.0.1:1/edit", steps=14)
    assert identity(url="http://127.0.0.1:1/edit,http://127.0.0.1:2/edit", steps=14) == one
    assert identity(url="http://127.0.0.1:3/edit", steps=14, endpoint_concurrency=2, max_concurrency=4) == one
    assert identity(url="http://127.0.0.1:1/edit", steps=14, timeout_s=900.0, max_attempts=9) == one
    assert identity(url="http://127.0.0.1:1/edit", steps=20) != one
    assert identity(url="http://127.0.0.1:1/edit", steps=14, model="other-lora") != one
