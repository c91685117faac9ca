"""Threads for a run's CPU work: how many, and a bounded map over them that keeps the failure semantics of a run.

Threads, not processes: the heavy parts of every stage (numba kernels declared ``nogil``, Pillow's codecs, zlib,
large numpy operations, pyvips) release the GIL, so two threads render, generate offline and mask ~1.7× as fast
as one on two cores, without pickling pixels between processes or a second copy of the city in memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from isonyc_dagster.errors import IsonycError

#: Environment variable: threads a run gives its CPU work (renders, the offline backend, masks, QA); default: the
#: cores this process may use, at most ``MAX_WORKERS``.
WORKERS_ENV = "ISONYC_WORKERS"
MAX_WORKERS = 8

_T = TypeVar("_T")
_R = TypeVar("_R")


class WorkersError(IsonycError, ValueError):
    """``ISONYC_WORKERS`` is not a whole number ≥ 1."""


def local_workers() -> int:
    """Threads for CPU work: ``$ISONYC_WORKERS``, else the usable cores (capped at ``MAX_WORKERS``)."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            raise WorkersError(
                f"{WORKERS_ENV}={raw!r} is not a whole number ≥ 1; set it to the threads a run may use, or unset it"
            )
        return n
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


def in_flight(
    call: Callable[[_T], _R], items: Iterable[_T], width: int, *, name: str = "work"
) -> Iterator[tuple[_T, _R]]:
    """``call`` on every item, ``width`` at once, yielding ``(item, result)`` as each finishes.

    At most ``2 × width`` items are submitted ahead and results are dropped once yielded, so a 1,000-partition run
    holds a few items' pixels, not all of them. After a failure the calls already running finish and are yielded
    (work done is kept: a model call paid for, a tile committed), none starts, and the first failure is raised.
    With ``width`` 1 the calls run one after another in a single worker thread."""
    width = max(1, width)
    todo = iter(items)
    end: Any = object()
    pending: dict[Future[_R], _T] = {}
    failure: BaseException | None = None
    with ThreadPoolExecutor(width, thread_name_prefix=name) as ex:

        def refill() -> None:
            while failure is None and len(pending) < 2 * width:
                item = next(todo, end)
                if item is end:
                    return
                pending[ex.submit(call, item)] = item

        refill()
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    item = pending.pop(f)
                    if f.cancelled():
                        continue
                    if (e := f.exception()) is not None:
                        if failure is None:
                            failure = e
                            for other in pending:
                                other.cancel()
                        continue
                    yield item, f.result()
                refill()
        finally:
            # A consumer that stops early (a stop request, an error) must not leave the queued calls to run on.
            for other in pending:
                other.cancel()
    if failure is not None:
        raise failure
