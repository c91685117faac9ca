"""The style search space: flat ↔ group-prefixed keys, vector encodings, stratified sampling, reconstruction.

Two key formats meet at the boundaries: the renderer API and style files use the flat ``StyleParams`` names
(``window_density``, ``palette``), the optimiser uses group-prefixed keys (``Windows.density``,
``Palette.family``). Both come from the metadata on ``StyleParams``' fields, so there is one list of knobs.

For the models the searchable knobs split into a continuous vector normalised to [0, 1] (by each field's range),
one index per categorical and a 0/1 vector of booleans; non-searchable fields (the texture seed) are filled from
a base style.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from isonyc_dagster.backends.base import BackendConfigError
from isonyc_dagster.backends.pixelart.params import StyleParams, style_field_info
from isonyc_dagster.errors import IsonycError

__all__ = [
    "SPACE",
    "Encoded",
    "SearchSpace",
    "StyleSearchError",
    "reconstruct_params",
    "stratified_params",
    "to_flat",
    "to_prefixed",
    "to_style_params",
]


class StyleSearchError(IsonycError, ValueError):
    """Bad input to the style search (parameters, data directory, model file); the message names the fix."""


@dataclass(frozen=True)
class Encoded:
    """One style as model targets: continuous in [0, 1], categorical indices, booleans as 0/1."""

    cont: np.ndarray  # (n_cont,) float32
    cats: np.ndarray  # (n_cat,) int64
    bools: np.ndarray  # (n_bool,) float32


class SearchSpace:
    """The searchable knobs of ``StyleParams`` and the two key formats."""

    def __init__(self) -> None:
        self.info = style_field_info()
        self.flat_to_prefixed = {n: f"{i['group']}.{i['key']}" for n, i in self.info.items()}
        self.prefixed_to_flat = {p: n for n, p in self.flat_to_prefixed.items()}
        if len(self.prefixed_to_flat) != len(self.flat_to_prefixed):
            raise AssertionError("StyleParams: two fields share a group-prefixed key")
        search = [n for n, i in self.info.items() if i["search"]]
        self.cont = [n for n in search if self.info[n]["kind"] in ("float", "int")]
        self.cats = [n for n in search if self.info[n]["kind"] == "cat"]
        self.bools = [n for n in search if self.info[n]["kind"] == "bool"]
        self.fixed = [n for n, i in self.info.items() if not i["search"]]
        self.lo = np.array([self.info[n]["bounds"][0] for n in self.cont], np.float64)
        self.hi = np.array([self.info[n]["bounds"][1] for n in self.cont], np.float64)
        self.choices = {n: list(self.info[n]["choices"]) for n in self.cats}

    @property
    def cat_sizes(self) -> list[int]:
        return [len(self.choices[n]) for n in self.cats]

    @property
    def prefixed_cont(self) -> list[str]:
        """Names of the CMA-ES vector's dimensions (group-prefixed)."""
        return [self.flat_to_prefixed[n] for n in self.cont]

    def encode(self, params: StyleParams) -> Encoded:
        vals = np.array([float(getattr(params, n)) for n in self.cont])
        cont = ((vals - self.lo) / (self.hi - self.lo)).astype(np.float32)
        cats = np.array([self.choices[n].index(getattr(params, n)) for n in self.cats], np.int64)
        bools = np.array([float(getattr(params, n)) for n in self.bools], np.float32)
        return Encoded(cont, cats, bools)

    def decode(self, enc: Encoded, base: StyleParams | None = None) -> StyleParams:
        """Exact inverse of ``encode`` for valid encodings (see ``reconstruct_params`` for model outputs)."""
        return reconstruct_params(
            enc.cont,
            [np.eye(k)[i] for k, i in zip(self.cat_sizes, enc.cats, strict=True)],
            enc.bools * 2.0 - 1.0,
            base=base,
            space=self,
        )

    def with_cont(self, params: StyleParams, x: Sequence[float] | np.ndarray) -> StyleParams:
        """``params`` with its continuous knobs set from a normalised vector (clipped to the ranges)."""
        enc = self.encode(params)
        return self.decode(Encoded(np.asarray(x, np.float32), enc.cats, enc.bools), base=params)


SPACE = SearchSpace()


# --- key formats --------------------------------------------------------------------------------------


def to_flat(params: StyleParams | Mapping[str, Any]) -> dict[str, Any]:
    """Flat API keys (every field) of a style."""
    if isinstance(params, StyleParams):
        return params.as_dict()
    return to_style_params_flat(params).as_dict()


def to_prefixed(params: StyleParams | Mapping[str, Any]) -> dict[str, Any]:
    """Group-prefixed optimiser keys (``Windows.density``) of a style given as ``StyleParams`` or flat keys."""
    flat = to_flat(params)
    return {SPACE.flat_to_prefixed[k]: v for k, v in flat.items()}


def to_style_params(prefixed: Mapping[str, Any]) -> StyleParams:
    """``StyleParams`` of group-prefixed keys (missing keys take the default)."""
    unknown = sorted(set(prefixed) - set(SPACE.prefixed_to_flat))
    if unknown:
        raise StyleSearchError(
            f"unknown prefixed style key(s) {unknown}; valid: {sorted(SPACE.prefixed_to_flat)}"
        )
    return to_style_params_flat({SPACE.prefixed_to_flat[k]: v for k, v in prefixed.items()})


def to_style_params_flat(flat: Mapping[str, Any], source: str = "style parameters") -> StyleParams:
    """``StyleParams`` of flat keys, every problem one ``StyleSearchError`` line."""
    if not isinstance(flat, Mapping):
        raise StyleSearchError(
            f"{source}: expected an object of flat style parameters, got {type(flat).__name__}"
        )
    try:
        return StyleParams.parse(dict(flat), source=source)
    except BackendConfigError as e:
        raise StyleSearchError(str(e)) from None


# --- sampling and reconstruction ------------------------------------------------------------------------


def stratified_params(n: int, seed: int = 0, base: StyleParams | None = None) -> list[StyleParams]:
    """``n`` random styles in which every categorical value (and both booleans) appears equally often (±1).

    Each categorical gets a shuffled repetition of its values, independently of the others, so all values are
    balanced and their combinations spread; continuous knobs are uniform over their ranges.
    """
    if n < 1:
        raise StyleSearchError(f"n must be ≥ 1, got {n}")
    rng = np.random.default_rng(seed)
    space = SPACE

    def balanced(k: int) -> np.ndarray:
        return rng.permutation(np.resize(np.arange(k), n))

    cats = np.stack([balanced(k) for k in space.cat_sizes], axis=1) if space.cats else np.zeros((n, 0), int)
    bools = np.stack([balanced(2) for _ in space.bools], axis=1) if space.bools else np.zeros((n, 0), int)
    cont = rng.random((n, len(space.cont)))
    return [
        space.decode(Encoded(cont[i].astype(np.float32), cats[i], bools[i].astype(np.float32)), base=base)
        for i in range(n)
    ]


def reconstruct_params(
    cont: Sequence[float] | np.ndarray,
    cat_logits: Sequence[Sequence[float] | np.ndarray],
    bool_logits: Sequence[float] | np.ndarray,
    *,
    base: StyleParams | None = None,
    space: SearchSpace | None = None,
) -> StyleParams:
    """Valid ``StyleParams`` from raw model outputs.

    Continuous outputs are clipped to [0, 1] and mapped to each range (integers rounded), each categorical takes
    its argmax, each boolean is on where its logit is > 0 (probability > 0.5), and the fields the search does not
    move (the texture seed) come from ``base`` (default: the default style).
    """
    space = space or SPACE
    cont = np.asarray(cont, np.float64).reshape(-1)
    bool_logits = np.asarray(bool_logits, np.float64).reshape(-1)
    if (
        cont.size != len(space.cont)
        or len(cat_logits) != len(space.cats)
        or bool_logits.size != len(space.bools)
    ):
        raise StyleSearchError(
            f"model outputs do not fit the search space: got {cont.size} continuous, {len(cat_logits)} categorical, "
            f"{bool_logits.size} boolean; expected {len(space.cont)}, {len(space.cats)}, {len(space.bools)}"
        )
    base = base or StyleParams()
    out: dict[str, Any] = {n: getattr(base, n) for n in space.fixed}
    vals = space.lo + np.clip(np.nan_to_num(cont, nan=0.5), 0.0, 1.0) * (space.hi - space.lo)
    for n, v in zip(space.cont, vals, strict=True):
        v = float(np.clip(v, space.info[n]["bounds"][0], space.info[n]["bounds"][1]))
        out[n] = int(round(v)) if space.info[n]["kind"] == "int" else v
    for n, logits in zip(space.cats, cat_logits, strict=True):
        arr = np.asarray(logits, np.float64).reshape(-1)
        if arr.size != len(space.choices[n]):
            raise StyleSearchError(f"{n}: {arr.size} logits for {len(space.choices[n])} choices")
        out[n] = space.choices[n][int(np.argmax(np.nan_to_num(arr, nan=-np.inf)))]
    for n, logit in zip(space.bools, bool_logits, strict=True):
        out[n] = bool(logit > 0)
    return StyleParams.model_validate(out)
