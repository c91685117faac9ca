"""Dagster resources: thin ConfigurableResources that build the core objects."""

from .generator import GeneratorResource
from .project import ProjectResource

__all__ = ["GeneratorResource", "ProjectResource"]
