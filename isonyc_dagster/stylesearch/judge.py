"""Judges for the style exploration: score a raster 0–10 for how well it matches the style references.

- ``OfflineJudge``: deterministic, no network. The score falls with the mean style distance
  (``metrics.style_distance``: colour histogram + gradient texture statistics) to the references, measured in
  units of the references' distance to each other, so the loop runs (and is tested) offline.
- ``ModelJudge``: a vision-language model through Google's ``generateContent`` API, Gemini (API key in the
  ``x-goog-api-key`` header) or Vertex AI (bearer token), over the project's ``ResilientTransport`` (retries with
  backoff on 429/5xx/timeouts, ``Retry-After``, circuit breaker, secrets redacted). The references and the
  candidate go in as inline PNGs; the model must answer JSON ``{"score": 0-10, "reason": "..."}``. An answer
  that is not such JSON counts as a failed attempt and is retried (models sometimes wrap JSON in prose).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from pydantic import ValidationError

from isonyc_dagster.backends.gemini import GenerateContentResponse
from isonyc_dagster.backends.transport import AttemptError, HttpSettings, ResilientTransport, b64
from isonyc_dagster.images import png_bytes
from isonyc_dagster.stylesearch.metrics import style_distance, style_stats
from isonyc_dagster.stylesearch.space import StyleSearchError

__all__ = ["JUDGE_PROMPT", "Judge", "JudgeScore", "ModelJudge", "OfflineJudge"]

JUDGE_PROMPT = """You are judging isometric pixel-art map tiles.
The first images are STYLE REFERENCES: late-90s SimCity 3000 style isometric pixel art of New York.
The LAST image is a CANDIDATE tile of other buildings drawn by a procedural renderer.
Score from 0 to 10 how closely the candidate's STYLE matches the references: palette and colour balance,
outlines, window grids, roof details, texture and overall look. Ignore that the buildings differ.
10 = indistinguishable style, 9 = excellent, 5 = clearly different, 0 = unrelated.
Answer only JSON: {"score": <number 0-10>, "reason": "<one sentence>"}"""


@dataclass(frozen=True)
class JudgeScore:
    score: float  # 0..10
    reason: str = ""


class Judge(Protocol):
    name: str

    def score(self, image: np.ndarray) -> JudgeScore: ...


#: Median style distance between two different crops of the isometric.nyc references (same style, other
#: buildings), measured on style_a/c/d/e at 256² and scale 0.5: the yardstick for "same style" with one reference.
SAME_STYLE_DISTANCE = 0.28


class OfflineJudge:
    """Deterministic style score from colour-histogram and texture statistics against the references.

    ``r`` = mean style distance to the references / the distance between references themselves (their median
    pairwise distance; ``SAME_STYLE_DISTANCE`` with one reference). A candidate as close to the references as they
    are to each other (r = 1) scores 9; the score rises to 10 at r = 0.5 and falls by 8 per unit of r above 1
    (the default look, r ≈ 1.45, scores ≈ 5.5).
    """

    name = "offline"

    def __init__(self, references: Sequence[np.ndarray], same_style_distance: float | None = None) -> None:
        if not references:
            raise StyleSearchError("the judge needs at least one style reference image")
        self._stats = [style_stats(r) for r in references]
        if same_style_distance is None:
            pair = [
                style_distance(None, None, sa=a, sb=b)
                for i, a in enumerate(self._stats)
                for b in self._stats[i + 1 :]
            ]
            same_style_distance = float(np.median(pair)) if pair else SAME_STYLE_DISTANCE
        if not same_style_distance > 0:
            raise StyleSearchError(f"same_style_distance must be > 0, got {same_style_distance}")
        self.same = same_style_distance

    def distance(self, image: np.ndarray) -> float:
        st = style_stats(image)
        return float(np.mean([style_distance(None, None, sa=st, sb=r) for r in self._stats]))

    def score(self, image: np.ndarray) -> JudgeScore:
        d = self.distance(image)
        r = d / self.same
        s = 9.0 + 2.0 * (1.0 - r) if r < 1.0 else 9.0 - 8.0 * (r - 1.0)
        s = float(np.clip(s, 0.0, 10.0))
        return JudgeScore(round(s, 3), f"mean style distance {d:.4f} = {r:.2f}× the references' own")


_JSON_OBJ = re.compile(r"\{.*\}", re.S)


def parse_judge_text(text: str) -> JudgeScore:
    """``{"score": x, "reason": ...}`` from a model's text (tolerating a code fence); ValueError if none."""
    m = _JSON_OBJ.search(text or "")
    if not m:
        raise ValueError(f"no JSON object in the answer {text[:120]!r}")
    data = json.loads(m.group(0))
    if not isinstance(data, dict) or "score" not in data:
        raise ValueError(f"answer JSON has no 'score': {m.group(0)[:120]!r}")
    score = data["score"]
    if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= float(score) <= 10:
        raise ValueError(f"score must be a number in 0..10, got {score!r}")
    return JudgeScore(float(score), str(data.get("reason", ""))[:500])


class ModelJudge:
    """A Gemini or Vertex AI vision model as judge (``kind`` = "gemini" or "vertex")."""

    def __init__(
        self,
        references: Sequence[np.ndarray],
        *,
        kind: str = "gemini",
        model: str = "gemini-2.5-flash",
        api_key: str | None = None,
        base_url: str = "https://generativelanguage.googleapis.com",
        project: str | None = None,
        location: str = "global",
        endpoint: str | None = None,
        token_provider: Callable[[], str] | None = None,
        http: HttpSettings | None = None,
        prompt: str = JUDGE_PROMPT,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        if not references:
            raise StyleSearchError("the judge needs at least one style reference image")
        if kind == "gemini":
            if not api_key:
                raise StyleSearchError("gemini judge: no API key; set $ISONYC_GEMINI_API_KEY")
            self.url = f"{base_url.rstrip('/')}/v1beta/models/{model}:generateContent"
        elif kind == "vertex":
            if not project or token_provider is None:
                raise StyleSearchError(
                    "vertex judge: give the GCP project (--vertex-project) and Google credentials"
                )
            host = endpoint or (
                "https://aiplatform.googleapis.com"
                if location == "global"
                else f"https://{location}-aiplatform.googleapis.com"
            )
            self.url = (
                f"{host.rstrip('/')}/v1/projects/{project}/locations/{location}/publishers/google/models/{model}"
                ":generateContent"
            )
        else:
            raise StyleSearchError(f"judge kind must be gemini or vertex, got {kind!r}")
        self.kind = kind
        self.name = f"{kind}:{model}"
        self._api_key = api_key
        self._token_provider = token_provider
        kw: dict[str, Any] = {"secrets": [api_key]}
        if sleep is not None:
            kw["sleep"] = sleep
        self.transport = ResilientTransport(f"judge-{kind}", http or HttpSettings(timeout_s=120.0), **kw)
        self._refs = [png_bytes(r) for r in references]
        self.prompt = prompt

    def close(self) -> None:
        self.transport.close()

    def _headers(self) -> dict[str, str]:
        if self.kind == "gemini":
            assert self._api_key is not None
            return {"x-goog-api-key": self._api_key, "Content-Type": "application/json"}
        assert self._token_provider is not None
        try:
            token = self._token_provider()
        except Exception as e:  # google-auth raises several types
            raise AttemptError(
                f"could not obtain a bearer token ({type(e).__name__})", transient=False
            ) from None
        self.transport.redact.add(token)
        return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def body(self, image: np.ndarray) -> dict[str, Any]:
        parts: list[dict[str, Any]] = [{"text": self.prompt}]
        for i, ref in enumerate(self._refs):
            parts += [
                {"text": f"Style reference {i + 1}:"},
                {"inline_data": {"mime_type": "image/png", "data": b64(ref)}},
            ]
        parts += [
            {"text": "Candidate:"},
            {"inline_data": {"mime_type": "image/png", "data": b64(png_bytes(image))}},
        ]
        return {
            "contents": [{"role": "user", "parts": parts}],
            "generationConfig": {"temperature": 0.0, "responseMimeType": "application/json"},
        }

    def score(self, image: np.ndarray) -> JudgeScore:
        body = self.body(image)

        def attempt() -> JudgeScore:
            data = self.transport.request_json(
                "POST", self.url, what="judge", json=body, headers=self._headers()
            )
            try:
                resp = GenerateContentResponse.model_validate(data)
            except ValidationError:
                raise AttemptError(
                    "judge: the answer is not a generateContent response", transient=True
                ) from None
            texts = [
                p.text
                for c in resp.candidates
                if c.content
                for p in c.content.parts
                if p.text and not p.thought
            ]
            try:
                return parse_judge_text("\n".join(texts))
            except (ValueError, json.JSONDecodeError) as e:
                raise AttemptError(f"judge: unusable answer ({e})", transient=True) from None

        result, _attempts = self.transport.call(attempt, what="judge")
        return result
