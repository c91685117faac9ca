"""Imported once by the code server's forkserver (``defs.codeserver``): warm up what every run worker needs.

Never raises: a failure here only means the workers import the code location themselves (as spawned ones do),
and the run reports the error where Dagster reports it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys


def _warm() -> None:
    from isonyc_dagster.defs.codeserver import PRELOAD_ENV, WORKER_MODULES

    spec = json.loads(os.environ.get(PRELOAD_ENV) or "{}")
    # Python 3.11's forkserver ignores the server's sys.path: restore it, as a spawned worker gets it.
    sys.path[:] = spec.get("sys_path") or sys.path
    for name in WORKER_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    if not spec.get("module"):
        return
    try:
        from dagster._core.code_pointer import load_python_module

        # What the worker's code pointer does (the working directory first on the path while importing).
        module = load_python_module(spec["module"], spec.get("working_directory"))
        defs = getattr(module, "defs", None)
        if defs is not None and hasattr(defs, "get_repository_def"):
            # Built once here; each forked worker then resolves its job from the cached repository.
            defs.get_repository_def()
    except Exception as e:  # noqa: BLE001 - a worker that imports the module itself reports the error properly
        print(
            f"isonyc code server: not preloaded ({spec['module']}: {e}); run workers import it",
            file=sys.stderr,
        )


_warm()
