"""Validation shared by the store backends: PNG checks, key and argument checks, tile-write preparation.

Everything a store refuses is refused here, before a single byte is written, so a bad tile in a
multi-tile write can never leave part of the batch behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import numbers
import re
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageFile

from isonyc_dagster.geo.boxes import QuadRect
from isonyc_dagster.store.base import FlagUpdate, StoreError, TileWrite, Water

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: 8-bit and bilevel modes: what the renderer, the models and the pyramid exporter read. 16-bit and float
#: images are refused because every consumer downstream would silently truncate them.
ALLOWED_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA"})

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_EXT_RE = re.compile(r"^[a-z0-9]{1,16}$")
_LAYER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
# Everything Pillow raises on damaged input: zlib errors surface as OSError/zlib.error, bad chunk
# lengths as struct.error, a missing IEND as EOFError/OSError, a broken header as SyntaxError.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)


@dataclass(frozen=True, slots=True)
class PngInfo:
    width: int
    height: int
    mode: str


@dataclass(frozen=True, slots=True)
class PreparedWrite:
    """A validated tile write: PNG checked, sha256 computed, provenance in canonical JSON."""

    layer: str
    x: int
    y: int
    png: bytes
    sha256: str
    provenance: dict[str, Any]
    provenance_json: str


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_sha(sha256: str) -> str:
    """``sha256`` if it is 64 lowercase hex digits (it becomes part of a path), else ``StoreError``."""
    if not isinstance(sha256, str) or not _SHA_RE.match(sha256):
        raise StoreError(f"invalid blob id {sha256!r}: expected 64 lowercase hex digits (a sha256)")
    return sha256


def check_ext(ext: str) -> str:
    if not isinstance(ext, str) or not _EXT_RE.match(ext):
        raise StoreError(
            f"invalid blob extension {ext!r}: use 1-16 lowercase letters/digits, e.g. 'png' or 'npz'"
        )
    return ext


def check_layer(layer: str) -> str:
    if not isinstance(layer, str) or not _LAYER_RE.match(layer):
        raise StoreError(
            f"invalid layer name {layer!r}: use 1-64 characters from letters, digits, '_', '.', '-' "
            "(starting with a letter or digit)"
        )
    return layer


def check_xy(x: int, y: int) -> tuple[int, int]:
    """Quadrant coordinates as plain ints (numpy integers accepted: they come out of arrays)."""
    if type(x) is int and type(y) is int and -(2**62) < x < 2**62 and -(2**62) < y < 2**62:
        return x, y  # fast path: the ABC isinstance check below dominates active_map over 10k keys
    for name, v in (("x", x), ("y", y)):
        # bool is an Integral too; True as a coordinate is always a caller bug.
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise StoreError(f"quadrant {name} must be an int, got {type(v).__name__} {v!r}")
        if not -(2**62) < int(v) < 2**62:
            raise StoreError(f"quadrant {name}={v} is out of range")
    return int(x), int(y)


def check_key(layer: str, x: int, y: int) -> tuple[str, int, int]:
    """Refuse keys that would be ambiguous or unsafe in an index or an object name; normalise ints."""
    return (check_layer(layer), *check_xy(x, y))


def check_keys(keys: Iterable[tuple[int, int]]) -> set[tuple[int, int]]:
    try:
        return {check_xy(*k) for k in keys}
    except TypeError as exc:
        raise StoreError(f"keys must be (x, y) pairs of ints ({exc})") from exc


def check_bbox(bbox: tuple[int, int, int, int] | None) -> QuadRect | None:
    """An inclusive quadrant rectangle (a ``QuadRect`` or a plain 4-tuple) as a ``QuadRect`` of ints."""
    if bbox is None:
        return None
    try:
        x0, y0, x1, y1 = bbox
        (x0, y0), (x1, y1) = check_xy(x0, y0), check_xy(x1, y1)
    except (TypeError, ValueError, StoreError) as exc:
        raise StoreError(f"bbox must be (x0, y0, x1, y1) ints, got {bbox!r}") from exc
    if x0 > x1 or y0 > y1:
        raise StoreError(f"bbox {bbox} is empty: need x0 <= x1 and y0 <= y1 (inclusive bounds)")
    return QuadRect(x0, y0, x1, y1)


def check_flag_args(update: FlagUpdate) -> FlagUpdate:
    """``update`` with ``water`` as a ``Water``; ``StoreError`` unless the flags are bools or ``None``."""
    for name in ("starred", "flagged", "reference"):
        val = getattr(update, name)
        if val is not None and not isinstance(val, bool):
            raise StoreError(f"{name} must be True, False or None, got {val!r}")
    water = update.water
    if water is None:
        return update
    if isinstance(water, bool):
        raise StoreError(f"water must be a Water value, got {water!r}")
    try:
        return dataclasses.replace(update, water=Water(water))
    except ValueError:
        raise StoreError(
            f"water must be one of {[f'{w.name}={w.value}' for w in Water]}, got {water!r}"
        ) from None


def check_size(size: tuple[int, int], *, what: str = "expect_size") -> tuple[int, int]:
    """``size`` as a ``(width, height)`` tuple of positive ints, else ``StoreError`` naming ``what``."""
    if (
        not isinstance(size, tuple | list)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise StoreError(f"{what} must be (width, height) in positive ints, got {size!r}")
    return size[0], size[1]


def canonical_json(provenance: dict[str, Any], *, what: str) -> str:
    """Provenance as canonical JSON (sorted keys), so equal dicts compare equal as text."""
    if not isinstance(provenance, dict):
        raise StoreError(f"{what}: provenance must be a dict, got {type(provenance).__name__}")
    try:
        return json.dumps(
            provenance, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise StoreError(
            f"{what}: provenance is not JSON-serialisable ({exc}); use str/int/float/bool/None, lists and dicts"
        ) from exc


def validate_png(data: bytes, *, expect_size: tuple[int, int] | None, what: str) -> PngInfo:
    """Fully decode ``data`` as PNG and check its size and mode; ``StoreError`` naming ``what`` otherwise.

    ``verify()`` checks every chunk CRC up to IEND (catches truncation and bit flips in any chunk) and
    ``load()`` inflates and unfilters all pixel data (catches damage that still has valid CRCs).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise StoreError(f"{what}: expected PNG bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise StoreError(f"{what}: the PNG is empty (0 bytes); the image was never encoded")
    if not data.startswith(PNG_SIGNATURE):
        raise StoreError(
            f"{what}: not a PNG (starts with {data[:8]!r}); tiles must be PNG-encoded "
            "(e.g. PIL Image.save(buf, format='PNG'))"
        )
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
            info = PngInfo(im.width, im.height, im.mode)
            if expect_size is not None and (im.width, im.height) != expect_size:
                raise StoreError(
                    f"{what}: PNG is {im.width}x{im.height} px but {expect_size[0]}x{expect_size[1]} px is "
                    "expected; crop/resize it or pass expect_size"
                )
            if im.mode not in ALLOWED_MODES:
                raise StoreError(
                    f"{what}: PNG mode {im.mode!r} is not supported; convert it to one of "
                    f"{sorted(ALLOWED_MODES)} (8-bit)"
                )
            im.verify()
        # A global LOAD_TRUNCATED_IMAGES=True set by some other library would make load() accept a cut
        # image; verify() above already refused truncation, and this keeps load() strict as well.
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            raise StoreError(
                f"{what}: cannot validate PNGs while PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; "
                "reset it to False"
            )
        with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
            im.load()
    except StoreError:
        raise
    except _DECODE_ERRORS as exc:
        raise StoreError(
            f"{what}: PNG is corrupt or truncated ({type(exc).__name__}: {exc}); re-encode the image and write "
            "it again"
        ) from exc
    return info


def prepare_blob(data: bytes, ext: str) -> tuple[bytes, str]:
    """``put_blob``'s checks (a valid ``ext``; a decodable PNG if ``ext`` is png); returns (bytes, sha256)."""
    check_ext(ext)
    data = bytes(data)
    if ext == "png":
        validate_png(data, expect_size=None, what="blob")
    return data, sha256_hex(data)


def prepare_writes(writes: Sequence[TileWrite], *, expect_size: tuple[int, int]) -> list[PreparedWrite]:
    """Validate a whole batch (keys, PNGs, provenance) before anything is written."""
    if isinstance(writes, TileWrite):
        raise StoreError("put_tiles takes a sequence of TileWrite; use put_tile for a single tile")
    size = check_size(expect_size)
    out: list[PreparedWrite] = []
    seen: set[tuple[str, int, int]] = set()
    for w in writes:
        if not isinstance(w, TileWrite):
            raise StoreError(f"put_tiles expects TileWrite items, got {type(w).__name__}")
        layer, x, y = check_key(w.layer, w.x, w.y)
        what = f"tile {layer} ({x},{y})"
        if (layer, x, y) in seen:
            raise StoreError(f"{what} appears twice in one put_tiles call; write each tile once per call")
        seen.add((layer, x, y))
        validate_png(w.png, expect_size=size, what=what)
        prov_json = canonical_json(w.provenance, what=what)
        png = bytes(w.png)
        out.append(PreparedWrite(layer, x, y, png, sha256_hex(png), json.loads(prov_json), prov_json))
    return out
