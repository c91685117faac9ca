"""A tiny code location for ``tests/test_codeserver.py``: each op writes where it ran to ``$CODESERVER_TEST_OUT``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg

#: The process that imported this module: the run worker itself when spawned, the forkserver when forked.
IMPORTED_IN = os.getpid()


def _report(name: str) -> None:
    out = Path(os.environ["CODESERVER_TEST_OUT"]) / f"{name}-{os.getpid()}.json"
    out.write_text(json.dumps({"pid": os.getpid(), "imported_in": IMPORTED_IN}))


@dg.op
def where() -> None:
    _report("where")


@dg.op
def linger() -> None:
    _report("linger")
    time.sleep(120)


@dg.job(executor_def=dg.in_process_executor)
def where_job() -> None:
    where()


@dg.job(executor_def=dg.in_process_executor)
def linger_job() -> None:
    linger()


defs = dg.Definitions(jobs=[where_job, linger_job])
