"""Every error the project raises on purpose derives from ``IsonycError`` and keeps its standard base."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import isonyc_dagster
from isonyc_dagster.errors import IsonycError


def _project_exceptions() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(isonyc_dagster.__path__, "isonyc_dagster."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
                and not obj.__name__.startswith("_")
            ):
                found.append(obj)
    return found


def test_every_public_error_is_an_isonyc_error() -> None:
    errors = _project_exceptions()
    assert len(errors) >= 15, [e.__name__ for e in errors]
    strays = [f"{e.__module__}.{e.__name__}" for e in errors if not issubclass(e, IsonycError)]
    assert not strays, f"not derived from IsonycError: {strays}"


@pytest.mark.parametrize(
    ("module", "name", "base"),
    [
        ("isonyc_dagster.geo.config", "ConfigError", ValueError),
        ("isonyc_dagster.geo.bounds", "BoundsError", ValueError),
        ("isonyc_dagster.geodata", "GeodataError", ValueError),
        ("isonyc_dagster.generate.plan", "PlanError", ValueError),
        ("isonyc_dagster.generate.template", "TemplateError", RuntimeError),
        ("isonyc_dagster.store.base", "StoreError", RuntimeError),
        ("isonyc_dagster.backends.base", "BackendError", RuntimeError),
        ("isonyc_dagster.backends.base", "BackendConfigError", ValueError),
        ("isonyc_dagster.publish.layout", "PyramidError", ValueError),
        ("isonyc_dagster.publish.viewer", "ViewerError", RuntimeError),
    ],
)
def test_errors_keep_their_standard_base(module: str, name: str, base: type[Exception]) -> None:
    cls = getattr(importlib.import_module(module), name)
    assert issubclass(cls, IsonycError) and issubclass(cls, base)


def test_the_backend_registry_raises_a_project_error() -> None:
    from isonyc_dagster.backends.registry import make_backend

    with pytest.raises(IsonycError, match="unknown backend 'nope'"):
        make_backend("nope")
