"""isometric-nyc's flat-earth mapping between lat/lng and ground metres (``projection = "legacy-flat"``).

The original places every quadrant with ``shared.calculate_offset``: a camera-plane shift becomes ground metres
exactly as in ``MapGeometry`` (same rotation, same foreshortening), and ground metres become degrees with
111,111 m per degree of latitude and ``111,111 · cos(seed latitude)`` m per degree of longitude. Its inverse
(``shared.latlng_to_quadrant_coords``) is the same linear map backwards. Only this last hop differs from the exact
mapping, so ``MapGeometry`` swaps just this hop and every consumer (render, bounds, land and water, locate) follows.

The result: with ``legacy-flat`` a quadrant key names the ground the original showed under the same key: every
quadrant's anchor (bottom-right corner) lies exactly where the original put it. The original's 3D renders were true
to scale around each tile's centre, while this mapping is one linear map for the whole city (seamless), so away
from the anchor they differ by the flat formula's local scale error: 0.2-0.9 %, i.e. 1-7 px across a quadrant's
724 px diagonal within the original's grid (x -87…154, y -84…110). The original itself rendered a quadrant from
whichever of the four tiles holding it came first, so its own tiles disagree by about as much.
"""

from __future__ import annotations

import math

import numpy as np

from isonyc_dagster.geo.config import MapConfig

#: The original's metres per degree of latitude (and, times cos(seed latitude), of longitude).
M_PER_DEG = 111111.0

ArrayLike = float | np.ndarray


def _scales(config: MapConfig) -> tuple[float, float]:
    """Metres per degree of longitude and of latitude in the flat formula (cos of the *seed's* latitude)."""
    return M_PER_DEG * math.cos(math.radians(config.seed.lat)), M_PER_DEG


def lnglat_to_ground(config: MapConfig, lng: ArrayLike, lat: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(E, N) flat-earth metres from the seed: the original's ``latlng_to_quadrant_coords`` first step."""
    kx, ky = _scales(config)
    s = config.seed
    return (np.asarray(lng, float) - s.lng) * kx, (np.asarray(lat, float) - s.lat) * ky


def ground_to_lnglat(config: MapConfig, e: ArrayLike, n: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(lng, lat) of flat-earth metres from the seed: the original's ``calculate_offset`` last step."""
    kx, ky = _scales(config)
    s = config.seed
    return s.lng + np.asarray(e, float) / kx, s.lat + np.asarray(n, float) / ky
