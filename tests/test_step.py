"""Step inputs: render buffers come from the store when intact and are drawn again when their blob is damaged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from isonyc_dagster import layers
from isonyc_dagster.generate.step import StepInputs
from isonyc_dagster.geo.surfaces import PALETTE
from isonyc_dagster.images import png_bytes
from isonyc_dagster.render import RenderResult
from isonyc_dagster.store.local import LocalTileStore

Q = 16


def _render(x: int, y: int) -> RenderResult:
    rng = np.random.default_rng(1000 * x + y)
    surface = rng.integers(1, 6, (Q, Q), dtype=np.uint8)
    building = rng.integers(0, 3, (Q, Q), dtype=np.int32)
    height = rng.random((Q, Q), dtype=np.float32)
    rgb = PALETTE[surface]
    return RenderResult(rgb=rgb, surface=surface, building=building, height=height, origin_px=(x * Q, y * Q))


def test_a_damaged_render_buffer_blob_is_rendered_again(tmp_path: Path) -> None:
    store = LocalTileStore(tmp_path / "store", tile_size=(Q, Q))
    res = _render(3, 4)
    aux_sha = store.put_blob(res.to_npz(), ext="npz")
    store.put_tile(layers.RENDER, 3, 4, png_bytes(res.rgb), {"aux_sha256": aux_sha})
    drawn: list[tuple[int, int]] = []

    def render(x: int, y: int) -> RenderResult:
        drawn.append((x, y))
        return _render(x, y)

    assert np.array_equal(
        StepInputs(store, stored={(3, 4)}, render=render).render_aux(3, 4)["surface"], res.surface
    )
    assert drawn == []  # intact: read from the store
    blob = next((tmp_path / "store" / "blobs").rglob(f"{aux_sha}.npz"))
    blob.write_bytes(blob.read_bytes()[:-100] + b"\0" * 100)
    aux = StepInputs(store, stored={(3, 4)}, render=render).render_aux(3, 4)
    assert drawn == [(3, 4)] and np.array_equal(aux["surface"], res.surface)


def test_a_run_keeps_the_buffers_of_its_most_recent_quadrants_only(tmp_path: Path, monkeypatch) -> None:
    """A 1,000-quadrant range run once kept every decoded buffer (2 GB peak RSS on lower Manhattan): the cache is an
    LRU of ``CACHE_QUADRANTS`` quadrants, and an evicted quadrant is read again, identical."""
    import isonyc_dagster.generate.step as step_mod

    monkeypatch.setattr(step_mod, "CACHE_QUADRANTS", 4)
    store = LocalTileStore(tmp_path / "store", tile_size=(Q, Q))
    drawn: list[tuple[int, int]] = []

    def render(x: int, y: int) -> RenderResult:
        drawn.append((x, y))
        return _render(x, y)

    inputs = StepInputs(store, stored=set(), render=render)  # nothing stored: every quadrant drawn on the fly
    keys = [(x, y) for x in range(5) for y in range(5)]
    for x, y in keys:
        assert np.array_equal(inputs.render_aux(x, y)["surface"], _render(x, y).surface)
    assert len(inputs._aux) == 4 and len(inputs._rendered) == 4
    inputs.render_aux(*keys[-1])  # recent: no new drawing
    assert len(drawn) == 25
    assert np.array_equal(inputs.render_aux(0, 0)["height"], _render(0, 0).height)  # evicted: drawn again
    assert drawn[-1] == (0, 0) and len(drawn) == 26


def test_a_step_run_holds_only_the_calls_in_flight_and_keeps_their_failure_semantics() -> None:
    """A whole run's templates and results once stayed in memory until the run ended (1.6 GB on lower Manhattan):
    calls go out at most 2 × width ahead and are dropped once yielded; after a failure the calls in flight finish
    and are yielded, none starts, and it raises."""
    import gc
    import threading
    import weakref
    from dataclasses import dataclass

    from isonyc_dagster.workers import in_flight

    @dataclass(frozen=True)
    class Call:
        n: int

    class Result:
        def __init__(self, n: int) -> None:
            self.n, self.blob = n, bytearray(1 << 20)

    alive: weakref.WeakSet[Result] = weakref.WeakSet()
    started: list[int] = []
    lock = threading.Lock()

    def call(c: Call) -> Result:
        with lock:
            started.append(c.n)
        if c.n == 30:
            raise RuntimeError("endpoint gone")
        r = Result(c.n)
        alive.add(r)
        return r

    seen, peak = [], 0
    with pytest.raises(RuntimeError, match="endpoint gone"):
        for c, r in in_flight(call, [Call(i) for i in range(50)], 2):
            seen.append(c.n)
            del c, r
            gc.collect()
            peak = max(peak, len(alive))
    assert peak <= 2 * 2 + 1  # the window, not the run
    assert max(started) <= 30 + 2 * 2 and len(started) < 50  # nothing started after the failure's window
    assert sorted(seen) == sorted(n for n in started if n != 30)  # every call that ran was yielded


def test_workers_come_from_the_environment_or_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from isonyc_dagster.workers import WORKERS_ENV, WorkersError, local_workers

    monkeypatch.delenv(WORKERS_ENV, raising=False)
    assert 1 <= local_workers() <= 8
    monkeypatch.setenv(WORKERS_ENV, "3")
    assert local_workers() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(WORKERS_ENV, bad)
        with pytest.raises(WorkersError, match=f"{WORKERS_ENV}=.* is not a whole number"):
            local_workers()
