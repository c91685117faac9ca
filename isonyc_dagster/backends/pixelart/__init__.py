"""The offline pixel-art backend: palette, procedural style and noise behind ``PixelArtBackend``."""
