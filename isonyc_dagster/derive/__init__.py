"""Derived map layers (night, snow, dark) computed offline from the generated pixels and the render buffers."""

from isonyc_dagster.derive.layer import DerivedTile, derive_quadrant, layer_of
from isonyc_dagster.derive.transforms import TRANSFORMS, DeriveError, Source, get_transform

__all__ = [
    "TRANSFORMS",
    "DeriveError",
    "DerivedTile",
    "Source",
    "derive_quadrant",
    "get_transform",
    "layer_of",
]
