"""Geodata: one normalized city model and the readers that fill it."""

from isonyc_dagster.geodata._common import GeodataError
from isonyc_dagster.geodata.model import Building, City, Park, Road

__all__ = ["Building", "City", "GeodataError", "Park", "Road"]
