"""Geodata: one normalized city model and the readers that fill it."""

from isonyc_dagster.geodata.model import Building, City, Park, Road

__all__ = ["Building", "City", "Park", "Road"]
