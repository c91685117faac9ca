"""The offline pixel-art backend: palette, procedural style and noise behind ``PixelArtBackend``."""

from isonyc_dagster.backends.pixelart.backend import PixelArtBackend
from isonyc_dagster.backends.pixelart.style import StyleParams

__all__ = ["PixelArtBackend", "StyleParams"]
