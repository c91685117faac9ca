"""Dagster resources: thin ConfigurableResources that build the core objects."""

from .generator import BACKEND_ENV, GeneratorResource, generator_resource
from .project import ProjectResource

__all__ = ["BACKEND_ENV", "GeneratorResource", "ProjectResource", "generator_resource"]
