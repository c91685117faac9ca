"""Which backend, model, prompts and preprocessing a step uses: project defaults, per-backend profiles, area rules.

Resolution for one step (the most specific setting wins):

- **area rules** (``[[rules]]``): a rule applies to a step when its area holds the centre of every one of the
  step's quadrants (a quadrant rectangle: all the step's quadrants lie in it; a GeoJSON polygon: all their centres
  lie inside it). Of the rules that apply, the one with the smallest area wins; equal areas go to the rule listed
  first. Its ``backend``, ``model``, ``prompt`` and ``negative_prompt`` override what follows (unset ones don't);
- **the backend's profile** (``[backends.<name>]``, of the backend the step ends up with): model, prompts,
  render preprocessing;
- **the project**: ``prompt`` / ``prompt_file`` / ``negative_prompt``; a project prompt left at the stock default
  gives way to the backend's own default prompt (Gemini's style-transfer text, the Modal LoRA's training prompt);
  backends without one (the offline pixel-art backend) get the stock prompt, as before.

Everything resolved is recorded in provenance (rule, prompt hash) and is part of the step's settings key, so a
step regenerated with another prompt, model or preprocessing becomes a new version, never a reuse.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import shapely
from shapely.geometry.base import BaseGeometry

from isonyc_dagster.backends.base import ImageBackend
from isonyc_dagster.generate.plan import Step
from isonyc_dagster.generate.step import StepSettings
from isonyc_dagster.geo.bounds import bounds_to_pixels, read_bounds_geojson
from isonyc_dagster.geo.config import ConfigError, ProjectConfig
from isonyc_dagster.geo.geometry import MapGeometry
from isonyc_dagster.geo.model_inputs import AreaRule, PostprocessConfig, PreprocessConfig

#: The project prompt's stock value: left unchanged, a backend's own default prompt is used instead.
STOCK_PROMPT: str = ProjectConfig.model_fields["prompt"].default


@dataclass(frozen=True)
class ModelInputs:
    """What one step sends besides its template, and where it came from."""

    backend: str
    model: str | None  # None: the backend's configured/default model
    #: ``None``: nothing configured; :meth:`with_backend_default` fills the backend's own default.
    prompt: str | None
    negative_prompt: str
    preprocess: PreprocessConfig | None
    rule_index: int | None = None
    #: Pixel-art post-processing of the backend's outputs (``generate.postprocess``); None = off.
    postprocess: PostprocessConfig | None = None
    rule_name: str | None = None

    def with_backend_default(self, backend: Any) -> ModelInputs:
        """The prompt filled in for ``backend`` (an ``ImageBackend``) when nothing was configured."""
        if self.prompt is not None:
            return self
        default = getattr(backend, "default_prompt", STOCK_PROMPT)
        # A backend whose default is None picks its prompt per model at call time: send "" and let it.
        return dataclasses.replace(self, prompt=default if isinstance(default, str) else "")

    @property
    def prompt_sha256(self) -> str:
        """Same formula as ``GenerationRequest.prompt_sha256``."""
        return hashlib.sha256(f"{self.prompt or ''}\x00{self.negative_prompt}".encode()).hexdigest()

    @property
    def rule_label(self) -> str | None:
        if self.rule_index is None:
            return None
        return f"rules[{self.rule_index}]" + (f" {self.rule_name}" if self.rule_name else "")

    def provenance(self) -> dict[str, Any]:
        """Keys recorded with the step (no prompt text: its hash; the config holds the text)."""
        return {
            "rule": self.rule_label,
            "prompt_sha256": self.prompt_sha256,
            "negative_prompt": bool(self.negative_prompt),
            "model_override": self.model,
            "preprocess": self.preprocess.model_dump(mode="json") if self.preprocess else None,
        }


class StepRules:
    """Resolves :class:`ModelInputs` per step for one project config."""

    def __init__(self, config: ProjectConfig, geometry: MapGeometry) -> None:
        self.config = config
        self.geometry = geometry
        for where, obj in [("", config), *((f"backends.{n}.", p) for n, p in config.backends.items())]:
            _check_read(obj, where)
        for i, rule in enumerate(config.rules):
            _check_read(rule, f"rules[{i}].")

    @cached_property
    def _areas(self) -> list[tuple[BaseGeometry | None, float]]:
        """Per rule: its world-pixel polygon (``None`` for a quadrant rectangle) and its area in px²."""
        q = self.geometry.q
        out: list[tuple[BaseGeometry | None, float]] = []
        for rule in self.config.rules:
            if rule.quadrants is not None:
                x0, y0, x1, y1 = rule.quadrants
                out.append((None, float((x1 - x0 + 1) * (y1 - y0 + 1) * q * q)))
            else:
                assert rule.area is not None
                poly = bounds_to_pixels(self.geometry, read_bounds_geojson(rule.area))
                shapely.prepare(poly)
                out.append((poly, float(poly.area)))
        return out

    def _applies(self, i: int, rule: AreaRule, quadrants: Sequence[tuple[int, int]]) -> bool:
        if rule.quadrants is not None:
            x0, y0, x1, y1 = rule.quadrants
            return all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in quadrants)
        poly = self._areas[i][0]
        q = self.geometry.q
        xs = [(x + 0.5) * q for x, _ in quadrants]
        ys = [(y + 0.5) * q for _, y in quadrants]
        return bool(shapely.contains_xy(poly, xs, ys).all())

    def rule_for(self, step: Step) -> int | None:
        """Index of the rule that governs ``step`` (smallest area, then first listed), or ``None``."""
        best: tuple[float, int] | None = None
        for i, rule in enumerate(self.config.rules):
            if self._applies(i, rule, step.quadrants):
                cand = (self._areas[i][1], i)
                if best is None or cand < best:
                    best = cand
        return None if best is None else best[1]

    def resolve(self, step: Step, *, backend: str | None = None) -> ModelInputs:
        """What ``step`` sends: its rule (if any) over ``backend``'s profile over the project's settings.

        ``backend`` replaces the project's backend (the pilot's ``--backend``); a rule's backend still wins.
        """
        i = self.rule_for(step)
        return self._inputs(self.config.rules[i] if i is not None else None, i, backend)

    def defaults(self, backend: str | None = None) -> ModelInputs:
        """The inputs of a step no rule governs."""
        return self._inputs(None, None, backend)

    def _inputs(self, rule: AreaRule | None, i: int | None, backend: str | None) -> ModelInputs:
        cfg = self.config
        name = (rule.backend if rule else None) or backend or cfg.backend
        profile = cfg.backends.get(name)
        prompt = _first(
            rule.prompt if rule else None,
            profile.prompt if profile else None,
            cfg.prompt if cfg.prompt != STOCK_PROMPT else None,
        )
        negative = _first(
            rule.negative_prompt if rule else None,
            profile.negative_prompt if profile else None,
            cfg.negative_prompt,
        )
        model = _first(rule.model if rule else None, profile.model if profile else None)
        pre = profile.preprocess if profile is not None and profile.preprocess.active else None
        return ModelInputs(
            backend=name,
            model=model,
            prompt=prompt,
            negative_prompt=negative or "",
            preprocess=pre,
            rule_index=i,
            rule_name=rule.name if rule else None,
            postprocess=profile.postprocess if profile is not None and profile.postprocess.enabled else None,
        )


class BackendPool:
    """One backend instance per (backend, model) a run needs, built on first use and closed together."""

    def __init__(self, build: Callable[[str, str | None], ImageBackend]) -> None:
        self._build = build
        self._backends: dict[tuple[str, str | None], ImageBackend] = {}

    def get(self, name: str, model: str | None = None) -> ImageBackend:
        if (name, model) not in self._backends:
            self._backends[(name, model)] = self._build(name, model)
        return self._backends[(name, model)]

    def close(self) -> None:
        for b in self._backends.values():
            b.close()
        self._backends.clear()


def step_settings(inputs: ModelInputs, *, generator_key: str, **kw: Any) -> StepSettings:
    """The ``StepSettings`` of resolved inputs (``inputs.prompt`` must be filled: ``with_backend_default``)."""
    return StepSettings(
        prompt=inputs.prompt or "",
        generator_key=generator_key,
        negative_prompt=inputs.negative_prompt,
        preprocess=inputs.preprocess,
        rule=inputs.rule_label,
        postprocess=inputs.postprocess,
        **kw,
    )


def _first(*values: str | None) -> str | None:
    return next((v for v in values if v is not None), None)


def _check_read(obj: Any, where: str) -> None:
    """Prompt files are read by ``load_project_config``; a config built in code must give the text itself."""
    for name in ("prompt_file", "negative_prompt_file"):
        if getattr(obj, name, None) is not None:
            raise ConfigError(
                f"{where}{name} was never read (the config was not loaded with load_project_config); "
                f"load the config file, or set {where}{name.removesuffix('_file')} to the text"
            )
