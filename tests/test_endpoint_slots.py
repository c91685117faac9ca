"""Host-wide endpoint slots (``backends._slots``): concurrent run processes share each endpoint's concurrency.

Real processes (fork) send real requests to fake GPU endpoints on 127.0.0.1 (``tests/fake_gpu.py``), which count
the requests in flight on the server side.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from isonyc_dagster.backends.base import BackendConfigError, GenerationRequest
from isonyc_dagster.backends.modal import EndpointPool, ModalBackend
from isonyc_dagster.backends.transport import HttpSettings
from isonyc_dagster.defs.resources import GeneratorResource, generator_resource
from tests.fake_apis import edit_template, make_template
from tests.fake_gpu import FakeGpuEndpoint

FORK = mp.get_context("fork")
TEMPLATE = make_template(64)[0]


def _backend(urls: list[str], slot_dir: Path | None, per: int = 2) -> ModalBackend:
    return ModalBackend(
        urls,
        endpoint_concurrency=per,
        slot_dir=slot_dir,
        http=HttpSettings(max_concurrency=per * len(urls), timeout_s=20, max_attempts=3, backoff_base_s=0.05),
    )


def _send_many(urls: list[str], slot_dir: Path | None, seeds: list[int], start: object) -> None:
    """A run process: its own backend, several requests at once; exit 1 on a wrong answer."""
    backend = _backend(urls, slot_dir)
    start.wait(20)  # type: ignore[attr-defined]  # both processes send at the same time
    with ThreadPoolExecutor(len(urls) * 2) as pool:
        got = list(pool.map(lambda s: backend.generate(GenerationRequest(TEMPLATE, seed=s)).image_png, seeds))
    backend.close()
    os._exit(0 if got == [edit_template(TEMPLATE, s) for s in seeds] else 1)


def _two_processes(slot_dir: Path | None) -> tuple[list[int], int]:
    """Two processes × 12 requests to 2 endpoints (2 per endpoint each): the servers' peak in flight, and 429s."""
    endpoints = [
        FakeGpuEndpoint(latency_s=0.15, jitter_s=0.05, capacity=100, seed=i)  # counts, never refuses
        for i in range(2)
    ]
    for e in endpoints:
        e.__enter__()
    try:
        urls = [f"{e.url}/edit_b64" for e in endpoints]
        start = FORK.Barrier(2)
        procs = [
            FORK.Process(target=_send_many, args=(urls, slot_dir, list(range(p * 12, p * 12 + 12)), start))
            for p in range(2)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        assert [p.exitcode for p in procs] == [0, 0]
        assert sum(len(e.busy) for e in endpoints) == 24
        return [e.max_in_flight for e in endpoints], sum(e.rejected for e in endpoints)
    finally:
        for e in endpoints:
            e.__exit__(None, None, None)


def test_two_processes_never_exceed_an_endpoints_concurrency(tmp_path: Path) -> None:
    peak, _ = _two_processes(tmp_path / "slots")
    assert peak == [2, 2], peak  # both endpoints used to the full, neither ever beyond its 2 slots


def test_without_a_slot_dir_each_process_has_its_own_limit(tmp_path: Path) -> None:
    """The behaviour the shared slots fix (and the reason the test above can fail): per-process pools overlap."""
    peak, _ = _two_processes(None)
    assert max(peak) > 2, peak


def _hold(slot_dir: Path, urls: list[str], per: int, ready: object) -> None:
    """Take one slot and keep it until killed."""
    pool = EndpointPool(urls, per, slot_dir)
    with pool.slot():
        ready.set()  # type: ignore[attr-defined]
        time.sleep(600)


def _enter_in_thread(pool: EndpointPool) -> tuple[threading.Thread, list[str], object]:
    got: list[str] = []
    cm = pool.slot()  # kept referenced: a collected context manager would release its slot
    t = threading.Thread(target=lambda: got.append(cm.__enter__()), daemon=True)
    t.start()
    return t, got, cm


def test_a_killed_holder_frees_its_slot(tmp_path: Path) -> None:
    with FakeGpuEndpoint(latency_s=0.05, jitter_s=0.0, capacity=1) as e:
        urls = [f"{e.url}/edit_b64"]
        ready = FORK.Event()
        holder = FORK.Process(target=_hold, args=(tmp_path, urls, 1, ready))
        holder.start()
        try:
            assert ready.wait(20)
            backend = _backend(urls, tmp_path, per=1)
            done: list[bytes] = []
            threads = [
                threading.Thread(
                    target=lambda s=s: done.append(
                        backend.generate(GenerationRequest(TEMPLATE, seed=s)).image_png
                    ),
                    daemon=True,
                )
                for s in (7, 8, 9)
            ]
            for t in threads:
                t.start()
            threads[0].join(0.5)
            assert not done and not e.busy  # the only slot is another process's: all three wait
            os.kill(holder.pid, signal.SIGKILL)  # type: ignore[arg-type]
            for t in threads:
                t.join(10)
            # The kernel dropped the dead holder's lock; then one request at a time (the server refused none).
            assert sorted(done) == sorted(edit_template(TEMPLATE, s) for s in (7, 8, 9))
            assert e.rejected == 0 and e.max_in_flight == 1
            backend.close()
        finally:
            holder.kill()
            holder.join()


def test_least_busy_counts_other_processes(tmp_path: Path) -> None:
    urls = ["http://127.0.0.1:1/a", "http://127.0.0.1:2/b"]
    ready = FORK.Event()
    holder = FORK.Process(target=_hold, args=(tmp_path, urls, 2, ready))
    holder.start()
    try:
        assert ready.wait(20)
        pool = EndpointPool(urls, 2, tmp_path)
        for _ in range(3):  # whichever endpoint the other process took, ours starts on the other one
            with pool.slot() as first:
                pass
            with pool.slot() as a, pool.slot() as b, pool.slot() as c:
                assert sorted([a, b, c]) == sorted(urls + [first])  # 3 left host-wide: the idle one twice
                t, got, _cm = _enter_in_thread(pool)
                t.join(0.3)
                assert t.is_alive() and not got  # 4 slots, all taken (one by the other process)
            t.join(5)
            assert got == [first]
            _cm.__exit__(None, None, None)  # type: ignore[attr-defined]
        pool.close()
    finally:
        holder.kill()
        holder.join()


def _take_after_fork(pool: EndpointPool) -> None:
    """Exit 0: waited while the parent held the slot, then got it; 3: got it at once; 4: never."""
    t, got, _cm = _enter_in_thread(pool)
    t.join(0.4)
    if got:
        os._exit(3)
    t.join(10)
    os._exit(0 if got == ["http://127.0.0.1:1/a"] else 4)


def test_a_forked_child_does_not_share_its_parents_slot(tmp_path: Path) -> None:
    """A pool made before a fork: the child must wait for the parent's slot, and get it once it is released."""
    pool = EndpointPool(["http://127.0.0.1:1/a"], 1, tmp_path)
    with pool.slot():
        child = FORK.Process(target=_take_after_fork, args=(pool,))
        child.start()
        time.sleep(0.6)
    child.join(15)
    assert child.exitcode == 0
    pool.close()


def test_the_generator_resource_passes_the_slot_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = json.dumps({"url": "http://127.0.0.1:1/edit_b64", "endpoint_concurrency": 2, "steps": 14})
    shared = GeneratorResource(backend="modal", settings_json=settings, slot_dir=str(tmp_path / "s"))
    backend = shared.build_for(None, "modal")
    assert isinstance(backend, ModalBackend) and backend.endpoints._shared is not None
    assert len(list((tmp_path / "s").glob("*/*.lock"))) == 2
    backend.close()
    own = GeneratorResource(backend="modal", settings_json=settings).build_for(None, "modal")
    assert isinstance(own, ModalBackend) and own.endpoints._shared is None  # without it: per process
    assert shared.identity("p") == GeneratorResource(backend="modal", settings_json=settings).identity("p")

    monkeypatch.setenv("ISONYC_SLOT_DIR", str(tmp_path / "env"))
    assert generator_resource("modal").slot_dir == str(tmp_path / "env")


def test_an_unusable_slot_dir_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(BackendConfigError, match="endpoint slot directory .*writable directory"):
        ModalBackend("http://127.0.0.1:1/edit_b64", endpoint_concurrency=2, slot_dir=tmp_path / "file")
