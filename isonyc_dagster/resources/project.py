"""The project resource: config → geometry, bounds, plan, store, city and renderer (core objects)."""

from __future__ import annotations

import threading

import dagster as dg

from ..config import ProjectConfig
from ..project import Project

_CACHE: dict[str, Project] = {}
_LOCK = threading.Lock()


class ProjectResource(dg.ConfigurableResource):
    """Holds the project config as JSON; builds (and caches per process) the core ``Project``."""

    config_json: str = ProjectConfig().model_dump_json()

    @classmethod
    def for_config(cls, config: ProjectConfig) -> ProjectResource:
        return cls(config_json=config.model_dump_json())

    def get(self) -> Project:
        """The core project; one per process and config, so the city and renderer load once per run."""
        with _LOCK:
            project = _CACHE.get(self.config_json)
            if project is None:
                project = Project(ProjectConfig.model_validate_json(self.config_json))
                _CACHE[self.config_json] = project
            return project
