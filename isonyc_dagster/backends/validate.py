"""Strict checks of the images that cross the wire: templates we send, images the models send back.

A model image is used only if it is decodable, complete, exactly the expected size, in an allowed format
and mode, fully opaque, and never resized (:func:`validate_image`); the remote backends wrap a failure as a
retryable attempt error (:func:`checked`, :func:`checked_b64`), since a later sample may be fine.

PNG is the only format accepted by default. A caller may also allow JPEG (the original isometric.nyc
server's answers can be JPEG): it is decoded, checked the same way and re-encoded as a lossless PNG, and
:attr:`CheckedImage.lossy` says that its pixels went through a lossy codec on the way.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from typing import cast

from PIL import Image, UnidentifiedImageError

from isonyc_dagster.backends.base import BackendError, GenerationRequest
from isonyc_dagster.backends.transport import AttemptError
from isonyc_dagster.errors import IsonycError

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_EOI = b"\xff\xd9"
#: Formats whose pixels are not the model's exact pixels.
LOSSY_FORMATS = frozenset({"JPEG"})
#: Largest image we decode from a model: 4096² (a 1024² template is the production size).
MAX_IMAGE_PIXELS = 4096 * 4096


class InvalidImage(IsonycError, ValueError):
    """An image that must not be used (corrupt, truncated, wrong size or mode)."""


@dataclass(frozen=True)
class CheckedImage:
    png: bytes  # canonical lossless PNG, RGB
    size: tuple[int, int]
    source_format: str
    source_mode: str

    @property
    def lossy(self) -> bool:
        """True when the image arrived in a lossy format (its PNG holds the decoded, not the model's, pixels)."""
        return self.source_format in LOSSY_FORMATS


def png_size(data: bytes, *, what: str = "image") -> tuple[int, int]:
    """(width, height) from a PNG header, without decoding pixels."""
    if not data.startswith(_PNG_SIGNATURE) or len(data) < 24 or data[12:16] != b"IHDR":
        raise InvalidImage(f"{what} is not a PNG (bad signature/header)")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def validate_image(
    data: bytes,
    *,
    expected_size: tuple[int, int] | None,
    what: str = "image",
    formats: tuple[str, ...] = ("PNG",),
) -> CheckedImage:
    """Decode and check a model image; return it as a canonical RGB PNG. Never resizes.

    Refuses: empty or non-image bytes, formats other than ``formats``, a PNG without its IEND chunk or a
    JPEG without its EOI marker (truncated), any decode error (CRC, premature end), a size other than ``expected_size``, more than
    :data:`MAX_IMAGE_PIXELS` pixels (checked from the header before decoding), modes other than
    RGB/RGBA/L/P, and any transparent pixel (a generated tile must be fully opaque).
    """
    if not data:
        raise InvalidImage(f"{what} is empty")
    try:
        im = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError) as e:
        raise InvalidImage(f"{what} is not a decodable image ({len(data)} bytes): {e}") from None
    fmt = im.format or "?"
    if fmt not in formats:
        raise InvalidImage(f"{what} is {fmt}, expected {'/'.join(formats)}")
    if fmt == "PNG" and not data.rstrip(b"\x00").endswith(_PNG_IEND):
        raise InvalidImage(f"{what} is a truncated PNG (no IEND chunk; {len(data)} bytes)")
    if fmt == "JPEG" and not data.rstrip(b"\x00").endswith(_JPEG_EOI):
        raise InvalidImage(f"{what} is a truncated JPEG (no EOI marker; {len(data)} bytes)")
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        raise InvalidImage(f"{what} is {w}×{h}, larger than the {MAX_IMAGE_PIXELS} pixel limit")
    if expected_size is not None and (w, h) != tuple(expected_size):
        raise InvalidImage(
            f"{what} is {w}×{h}, expected exactly {expected_size[0]}×{expected_size[1]} (the template size); "
            "not resizing it"
        )
    mode = im.mode
    if mode not in ("RGB", "RGBA", "L", "P"):
        raise InvalidImage(f"{what} has unsupported mode {mode!r} (expected RGB, RGBA, L or P)")
    try:
        # verify() checks chunk CRCs; it invalidates the image, so decode from a fresh open.
        Image.open(io.BytesIO(data)).verify()
        im = Image.open(io.BytesIO(data))
        im.load()
    except Exception as e:  # PIL raises a zoo of types (OSError, SyntaxError, ValueError, struct.error)
        raise InvalidImage(f"{what} does not decode ({type(e).__name__}: {e})") from None
    if mode in ("RGBA", "P") or "transparency" in im.info:
        # One band: getextrema() is (min, max), not the per-band tuples its return type also allows.
        lo, _hi = cast(tuple[int, int], im.convert("RGBA").getchannel("A").getextrema())
        if lo < 255:
            raise InvalidImage(f"{what} has transparent pixels; a generated image must be fully opaque")
    if fmt == "PNG" and mode == "RGB" and "transparency" not in im.info:
        return CheckedImage(data, (w, h), fmt, mode)
    # Not images.png_bytes: PIL's save keeps the source's ICC profile, which a numpy round trip drops.
    out = io.BytesIO()
    im.convert("RGB").save(out, format="PNG")
    return CheckedImage(out.getvalue(), (w, h), fmt, mode)


def decode_b64(text: str, *, what: str) -> bytes:
    """Strict base64 decode (no silently skipped garbage)."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidImage(f"{what} is not valid base64 ({e})") from None


def template_size(request: GenerationRequest, *, backend: str) -> tuple[int, int]:
    """Size of the request's template; a clear non-retryable error when it is not a PNG."""
    try:
        return png_size(request.template_png, what="template")
    except InvalidImage as e:
        raise BackendError(f"{backend}: bad request: {e}; the template must be a lossless PNG") from None


def checked(
    data: bytes, *, expected_size: tuple[int, int], what: str, formats: tuple[str, ...] = ("PNG",)
) -> CheckedImage:
    """:func:`validate_image` with failures as retryable attempt errors (a later sample may be fine)."""
    try:
        return validate_image(data, expected_size=expected_size, what=what, formats=formats)
    except InvalidImage as e:
        raise AttemptError(str(e), transient=True, endpoint_failure=False) from None


def checked_b64(
    text: str, *, expected_size: tuple[int, int], what: str, formats: tuple[str, ...] = ("PNG",)
) -> CheckedImage:
    """:func:`checked` of a base64 image field; bad base64 is a retryable attempt error too."""
    try:
        raw = decode_b64(text, what=what)
    except InvalidImage as e:
        raise AttemptError(str(e), transient=True) from None
    return checked(raw, expected_size=expected_size, what=what, formats=formats)
