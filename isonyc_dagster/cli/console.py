"""The map as a console: the ``/api/`` application ``isonyc serve`` mounts beside the map (``publish.serve``).

Read-only endpoints need no token; every mutation needs ``Authorization: Bearer <token>`` (the token ``isonyc serve``
prints at start; compared in constant time; never logged) and answers 401 otherwise.

- ``GET /api/info``: the Dagster URL given at serve time, the map's grid and quadrant size.
- ``GET /api/status``: per quadrant: failing QA checks (``generate.qa_state``), flags, stale (``generate.repair``),
  missing, repaired (made by a person).
- ``GET /api/quadrant?x=X&y=Y``: the panel: versions (previews, provenance, who/what made each), the producing step
  with its template and output, its context steps and the partitions as links to Dagster, check results, flags.
- ``GET /api/blob/<sha256>``: a stored PNG (previews); ``GET /api/run/<id>``: a Dagster run's status.
- ``GET /api/export?x=X&y=Y``: the 2×2 neighbourhood whose top-left quadrant is (X, Y), as one PNG.
- ``GET /api/bounds``: the bounds outline in world pixels, with its quadrant and lattice-step counts.
- ``POST /api/flag`` ``{x, y, flag: flagged|starred|reference, value}``: store flags, directly.
- ``POST /api/action`` ``{action: repair|revert|regenerate, quadrants, seed, version, step, prompt}``: launches
  ``console_action_job`` through the webserver's GraphQL API (a run in the Runs page, tagged ``isonyc/action`` and
  ``isonyc/quadrant``).
- ``POST /api/import?x=X&y=Y&take=X|Y,...``: an edited 2×2 PNG back; only the ``take`` quadrants change (new
  versions, provenance ``kind: import``), and every other quadrant's pixels must be exactly as exported.
- ``POST /api/bounds`` ``{polygon_px: [[px, py], ...]}``: the outline drawn on the map, saved as the project's
  bounds GeoJSON after the checks of ``geo.bounds``.
- ``GET /api/regions``, ``POST /api/region`` ``{name, x0, y0, w, h}``: named regions for 3D scenes (``cli.region``).

Lives in ``cli`` because it joins the project, the generate stage, the store and Dagster's URLs (``defs.checks``).
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import shapely
from shapely.geometry import Polygon, mapping

from isonyc_dagster import layers
from isonyc_dagster.cli import region as region_cli
from isonyc_dagster.defs.actions import ACTION_JOB, ACTIONS
from isonyc_dagster.defs.checks import partition_url
from isonyc_dagster.defs.partitions import key2
from isonyc_dagster.errors import IsonycError
from isonyc_dagster.fileio import atomic_write
from isonyc_dagster.generate.plan import LatticePlan, Quadrant
from isonyc_dagster.generate.qa import CHECKS
from isonyc_dagster.generate.qa_state import QACache, assess_map
from isonyc_dagster.generate.repair import person_made, stale_steps
from isonyc_dagster.generate.seams import QA_THRESHOLD
from isonyc_dagster.geo.bounds import BoundsError, bounds_to_pixels, quadrants_for_bounds
from isonyc_dagster.geo.config import ProjectConfig
from isonyc_dagster.images import decode_rgb, png_bytes
from isonyc_dagster.project import Project
from isonyc_dagster.publish.build import update_pyramid
from isonyc_dagster.publish.layout import PyramidError
from isonyc_dagster.publish.serve import ApiResponse

FLAGS = ("flagged", "starred", "reference")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_RUN_ID = re.compile(r"^[0-9a-f-]{8,64}$")
#: Most vertices a drawn outline may have (a person clicks them).
MAX_VERTICES = 2_000


class ConsoleError(IsonycError, ValueError):
    """A console request that cannot be done as asked (400; the message says why and what to do)."""


class DagsterUnavailable(IsonycError, RuntimeError):
    """The Dagster webserver did not answer or refused a request (502)."""


def new_token() -> str:
    """A fresh console token (printed once by ``isonyc serve``)."""
    return secrets.token_urlsafe(24)


class DagsterClient:
    """The Dagster webserver's GraphQL API over HTTP (the same API its UI uses)."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._timeout = timeout_s
        self._selectors: dict[str, dict[str, str]] = {}

    def query(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            r = httpx.post(
                f"{self.url}/graphql",
                json={"query": query, "variables": variables or {}},
                timeout=self._timeout,
            )
        except httpx.HTTPError as e:
            raise DagsterUnavailable(
                f"Dagster at {self.url} did not answer ({type(e).__name__}); start `dagster dev` or pass "
                "--dagster-url"
            ) from None
        if r.status_code != 200:
            raise DagsterUnavailable(
                f"Dagster at {self.url} answered HTTP {r.status_code} to a GraphQL request"
            )
        data = r.json()
        if data.get("errors"):
            raise DagsterUnavailable(f"Dagster GraphQL error: {data['errors'][0].get('message')}")
        return dict(data["data"])

    def selector(self, job: str) -> dict[str, str]:
        """The repository location, repository and job name of ``job`` (the first location that has it)."""
        if job not in self._selectors:
            data = self.query(
                "{ repositoriesOrError { __typename ... on RepositoryConnection { nodes { name "
                "location { name } jobs { name } } } } }"
            )
            for repo in (data["repositoriesOrError"] or {}).get("nodes", []):
                if job in {j["name"] for j in repo["jobs"]}:
                    self._selectors[job] = {
                        "repositoryLocationName": repo["location"]["name"],
                        "repositoryName": repo["name"],
                        "jobName": job,
                    }
                    break
            else:
                raise DagsterUnavailable(
                    f"no code location at {self.url} has the job {job}; reload the code location in Dagster"
                )
        return self._selectors[job]

    def launch(self, job: str, run_config: dict[str, Any], tags: Mapping[str, str]) -> str:
        """Launch a run of ``job``; returns its run id."""
        data = self.query(
            """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename
                 ... on LaunchRunSuccess { run { runId } }
                 ... on RunConfigValidationInvalid { errors { message } }
                 ... on Error { message } } }""",
            {
                "p": {
                    "selector": self.selector(job),
                    "runConfigData": run_config,
                    "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
                }
            },
        )
        res = data["launchRun"]
        if res["__typename"] != "LaunchRunSuccess":
            why = (
                res.get("message")
                or "; ".join(e["message"] for e in res.get("errors", []))
                or res["__typename"]
            )
            raise DagsterUnavailable(f"Dagster did not launch {job}: {why}")
        return str(res["run"]["runId"])

    def run(self, run_id: str) -> dict[str, Any]:
        data = self.query(
            "query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { runId status "
            "tags { key value } } } }",
            {"id": run_id},
        )
        res = data["runOrError"]
        if res["__typename"] != "Run":
            raise ConsoleError(f"Dagster has no run {run_id}")
        return {
            "run_id": res["runId"],
            "status": res["status"],
            "tags": {t["key"]: t["value"] for t in res["tags"]},
        }


def _json(status: int, obj: Any) -> ApiResponse:
    return ApiResponse(status, json.dumps(obj, allow_nan=False).encode())


def _int(params: Mapping[str, list[str]], name: str) -> int:
    try:
        return int(params[name][0])
    except (KeyError, IndexError, ValueError):
        raise ConsoleError(f"query parameter {name} must be an integer") from None


def parse_key(text: str) -> Quadrant:
    """A partition key ``X|Y``."""
    a, sep, b = text.strip().partition("|")
    try:
        if sep:
            return int(a), int(b)
    except ValueError:
        pass
    raise ConsoleError(f"quadrant {text!r} is not a partition key X|Y (e.g. 1|0)")


def parse_keys(text: str) -> list[Quadrant]:
    """Partition keys ``X|Y`` separated by commas."""
    return [parse_key(t) for t in text.split(",") if t.strip()]


class Console:
    """The ``/api/`` application of one project (``publish.serve.ApiHandler``)."""

    def __init__(
        self, config: ProjectConfig, *, dagster_url: str, token: str, map_dir: Path | None = None
    ) -> None:
        self.config = config
        self.dagster_url = dagster_url.rstrip("/")
        self._token = token
        self.map_dir = Path(map_dir) if map_dir is not None else Path(config.output_dir)
        self.project = Project(config)
        self.dagster = DagsterClient(self.dagster_url)
        self._get: dict[str, Callable[[dict[str, list[str]], list[str]], ApiResponse]] = {
            "info": self.info,
            "status": self.status,
            "quadrant": self.quadrant,
            "blob": self.blob,
            "run": self.run,
            "export": self.export,
            "bounds": self.bounds,
            "regions": lambda params, rest: region_cli.api_regions(self.project, self.map_dir),
        }
        self._post: dict[str, Callable[[dict[str, list[str]], bytes], ApiResponse]] = {
            "flag": self.flag,
            "action": self.action,
            "import": self.import_png,
            "bounds": self.save_bounds,
            "region": lambda params, body: region_cli.api_add_region(self.project, body),
        }

    # --- dispatch ------------------------------------------------------------------------------
    def __call__(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> ApiResponse:
        parts = urlsplit(path)
        segs = [s for s in parts.path.split("/") if s][1:]  # after "api"
        params = parse_qs(parts.query)
        name = segs[0] if segs else ""
        try:
            if method == "GET" and name in self._get:
                return self._get[name](params, segs[1:])
            if method == "POST" and name in self._post:
                if not self.authorized(headers):
                    return _json(
                        401, {"error": "this action needs the console token: Authorization: Bearer <token>"}
                    )
                return self._post[name](params, body)
            return _json(404, {"error": f"no console endpoint {method} /api/{name}"})
        except (ConsoleError, BoundsError) as e:
            return _json(400, {"error": str(e)})
        except DagsterUnavailable as e:
            return _json(502, {"error": str(e)})
        except IsonycError as e:
            return _json(409, {"error": str(e)})

    def authorized(self, headers: Mapping[str, str]) -> bool:
        got = headers.get("authorization") or ""
        scheme, _, token = got.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self._token.encode()
        )

    # --- read-only -----------------------------------------------------------------------------
    def _url(self, asset: str, key: str) -> str:
        return partition_url(self.dagster_url, asset, key)

    def info(self, params: dict[str, list[str]], rest: list[str]) -> ApiResponse:
        p = self.project
        x0, y0, x1, y1 = p.quadrants.bbox
        return _json(
            200,
            {
                "map": p.config.map.name,
                "dagster_url": self.dagster_url,
                "quadrant_px": p.geometry.q,
                "bbox": [x0, y0, x1, y1],
                "actions": list(ACTIONS),
                "flags": list(FLAGS),
            },
        )

    def _qa(self) -> dict[Quadrant, dict[str, list[float | int]]]:
        p = self.project
        cache = QACache(Path(p.config.cache_dir) / "qa.sqlite")
        try:
            state = assess_map(p.store, p.step_inputs(), p.plan, p.quadrants, cache, p.order.quadrants.keys)
        finally:
            cache.close()
        return {q: qa.failures(QA_THRESHOLD) for q, qa in state.quadrants.items()}

    def status(self, params: dict[str, list[str]], rest: list[str]) -> ApiResponse:
        """Per quadrant: ``checks`` failing, ``flags``, ``stale``, ``missing``, ``repaired``."""
        p = self.project
        keys = p.quadrants.keys
        active = p.store.active_map(layers.GENERATION, keys)
        failing = self._qa()
        stale = {q for s in stale_steps(p.store, p.plan) for q in s.quadrants}
        flags = {(f.x, f.y): f for f in p.store.list_flags()}
        out: dict[str, Any] = {}
        for q in keys:
            v = active.get(q)
            f = flags.get(q)
            out[key2(*q)] = {
                "checks": sorted(failing.get(q, {})),
                "flags": [n for n in FLAGS if f is not None and getattr(f, n)],
                "stale": q in stale,
                "missing": v is None,
                "repaired": person_made(v),
                "version": None if v is None else v.version,
            }
        counts = {
            "failing": sum(bool(s["checks"]) for s in out.values()),
            "flagged": sum("flagged" in s["flags"] for s in out.values()),
            "stale": sum(s["stale"] for s in out.values()),
            "missing": sum(s["missing"] for s in out.values()),
            "repaired": sum(s["repaired"] for s in out.values()),
        }
        return _json(200, {"quadrants": out, "counts": counts})

    def _key(self, params: dict[str, list[str]]) -> Quadrant:
        q = (_int(params, "x"), _int(params, "y"))
        if q not in self.project.quadrants:
            raise ConsoleError(f"quadrant {key2(*q)} is outside the bounds; pick a quadrant of the map")
        return q

    def quadrant(self, params: dict[str, list[str]], rest: list[str]) -> ApiResponse:
        """The side panel of one quadrant."""
        p = self.project
        x, y = self._key(params)
        step = p.plan.step_for_quadrant(x, y)
        step_asset, step_key = layers.STEP_ASSETS[step.kind.value], key2(*step.cell)
        versions: list[dict[str, Any]] = []
        active_prov: dict[str, Any] = {}
        for v in p.store.versions(layers.GENERATION, x, y):
            prov = v.provenance
            if v.active:
                active_prov = prov
            versions.append(
                {
                    "version": v.version,
                    "active": v.active,
                    "created_at": v.created_at,
                    "preview": f"/api/blob/{v.sha256}",
                    "made_by": _made_by(prov),
                    "person": person_made(v),
                    "provenance": prov,
                }
            )
        prov = active_prov
        context = _context_steps(p.plan, prov.get("context") or [], own=(step_asset, step_key))
        failures = self._qa().get((x, y), {})
        f = p.store.flags(x, y)
        return _json(
            200,
            {
                "key": key2(x, y),
                "versions": versions,
                "step": {
                    "asset": step_asset,
                    "partition": step_key,
                    "label": f"producing step {step_asset} {step_key}",
                    "url": self._url(step_asset, step_key),
                    "template": _blob_url(prov.get("template_sha256")),
                    "output": _blob_url(prov.get("output_sha256")),
                    "quadrants": [key2(*q) for q in step.quadrants],
                },
                "context": [{"asset": a, "partition": k, "url": self._url(a, k)} for a, k in context],
                "links": {
                    "generation": self._url(layers.GENERATION, key2(x, y)),
                    "render": self._url(layers.RENDER, key2(x, y)),
                },
                "checks": {c: {"passed": c not in failures, "figures": failures.get(c)} for c in CHECKS},
                "flags": {n: bool(getattr(f, n)) for n in FLAGS},
            },
        )

    def blob(self, params: dict[str, list[str]], rest: list[str]) -> ApiResponse:
        sha = rest[0] if rest else ""
        if not _SHA.match(sha):
            raise ConsoleError("a blob id is 64 lower-case hex digits (a sha256)")
        return ApiResponse(200, self.project.store.get_blob(sha), "image/png")

    def run(self, params: dict[str, list[str]], rest: list[str]) -> ApiResponse:
        run_id = rest[0] if rest else ""
        if not _RUN_ID.match(run_id):
            raise ConsoleError("a run id is a Dagster run's UUID")
        info = self.dagster.run(run_id)
        info["url"] = f"{self.dagster_url}/runs/{run_id}"
        return _json(200, info)

    def _window(self, x: int, y: int) -> list[Quadrant]:
        return [(x + dx, y + dy) for dy in (0, 1) for dx in (0, 1)]

    def export(self, params: dict[str, list[str]], rest: list[str]) -> ApiResponse:
        """The 2×2 neighbourhood (top-left (x, y)) as one PNG; quadrants without pixels are black."""
        x, y = _int(params, "x"), _int(params, "y")
        return ApiResponse(200, png_bytes(self._neighbourhood(x, y)), "image/png")

    def _neighbourhood(self, x: int, y: int) -> np.ndarray:
        q = self.project.geometry.q
        out = np.zeros((2 * q, 2 * q, 3), np.uint8)
        store = self.project.store
        for qx, qy in self._window(x, y):
            data = store.get_tile(layers.GENERATION, qx, qy)
            if data is not None:
                out[(qy - y) * q : (qy - y + 1) * q, (qx - x) * q : (qx - x + 1) * q] = decode_rgb(data)
        return out

    def bounds(self, params: dict[str, list[str]], rest: list[str]) -> ApiResponse:
        """The bounds outline in world pixels (simplified to 1 px), with its quadrant and step counts."""
        p = self.project
        poly = bounds_to_pixels(p.geometry, p.bounds_lnglat).simplify(1.0)
        rings = [[[round(a, 2), round(b, 2)] for a, b in g.exterior.coords[:-1]] for g in _polygons(poly)]
        return _json(
            200,
            {"rings": rings, "bounds": p.config.bounds, "quadrants": len(p.quadrants), "steps": len(p.plan)},
        )

    # --- mutations -----------------------------------------------------------------------------
    def flag(self, params: dict[str, list[str]], body: bytes) -> ApiResponse:
        req = _body(body)
        try:
            x, y, name, value = int(req["x"]), int(req["y"]), str(req["flag"]), req["value"]
        except (KeyError, TypeError, ValueError):
            raise ConsoleError("flag takes {x, y, flag, value}") from None
        if name not in FLAGS or not isinstance(value, bool):
            raise ConsoleError(f"flag must be one of {', '.join(FLAGS)} and value true or false")
        if (x, y) not in self.project.quadrants:
            raise ConsoleError(f"quadrant {key2(x, y)} is outside the bounds; pick a quadrant of the map")
        store = self.project.store
        f = (
            store.set_flags(x, y, flagged=value)
            if name == "flagged"
            else store.set_flags(x, y, starred=value)
            if name == "starred"
            else store.set_flags(x, y, reference=value)
        )
        return _json(200, {"key": key2(x, y), "flags": {n: bool(getattr(f, n)) for n in FLAGS}})

    def action(self, params: dict[str, list[str]], body: bytes) -> ApiResponse:
        """Launch ``console_action_job`` for a repair, revert or regenerate; returns the run id and its URL."""
        req = _body(body)
        name = req.get("action")
        if name not in ACTIONS:
            raise ConsoleError(f"action must be one of {', '.join(ACTIONS)}")
        cfg: dict[str, Any] = {"action": name}
        quadrants = req.get("quadrants") or []
        if not isinstance(quadrants, list):
            raise ConsoleError("quadrants must be a list of partition keys X|Y")
        keys = [parse_key(str(k)) for k in quadrants]
        for q in keys:
            if q not in self.project.quadrants:
                raise ConsoleError(f"quadrant {key2(*q)} is outside the bounds; pick a quadrant of the map")
        cfg["quadrants"] = [key2(*q) for q in keys]
        for field, kind in (("seed", int), ("version", int), ("step", str), ("prompt", str)):
            v = req.get(field)
            if v in (None, ""):
                continue
            if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
                raise ConsoleError(f"{field} must be an integer")
            if kind is str and not isinstance(v, str):
                raise ConsoleError(f"{field} must be a string")
            cfg[field] = v
        if name == "revert" and (len(keys) != 1 or "version" not in cfg):
            raise ConsoleError("revert takes one quadrant and the version to bring back")
        if name == "regenerate" and ("step" not in cfg or "seed" not in cfg):
            raise ConsoleError("regenerate takes a step key (e.g. blocks:0|0) and a seed")
        tags = {"isonyc/action": name}
        if keys:
            tags["isonyc/quadrant"] = ",".join(key2(*q) for q in keys)
        if "step" in cfg:
            tags["isonyc/step"] = cfg["step"]
        run_id = self.dagster.launch(ACTION_JOB, {"ops": {"console_action": {"config": cfg}}}, tags)
        return _json(200, {"run_id": run_id, "url": f"{self.dagster_url}/runs/{run_id}", "tags": tags})

    def import_png(self, params: dict[str, list[str]], body: bytes) -> ApiResponse:
        """An edited 2×2 PNG (as ``export`` wrote it): the ``take`` quadrants become new versions."""
        x, y = _int(params, "x"), _int(params, "y")
        window = self._window(x, y)
        take = parse_keys((params.get("take") or [""])[0]) or [(x, y)]
        for t in take:
            if t not in window:
                raise ConsoleError(f"quadrant {key2(*t)} is not in the 2×2 window at {key2(x, y)}")
            if t not in self.project.quadrants:
                raise ConsoleError(f"quadrant {key2(*t)} is outside the bounds; it cannot be imported")
        q = self.project.geometry.q
        try:
            img = decode_rgb(body)
        except Exception as e:  # noqa: BLE001 - any undecodable upload is the same user error
            raise ConsoleError(
                f"the upload is not a PNG this console can read ({type(e).__name__})"
            ) from None
        if img.shape[:2] != (2 * q, 2 * q):
            raise ConsoleError(
                f"the image is {img.shape[1]}×{img.shape[0]} px; import the 2×2 export as it was ({2 * q}×{2 * q})"
            )
        current = self._neighbourhood(x, y)
        for qx, qy in window:
            if (qx, qy) in take:
                continue
            sl = (slice((qy - y) * q, (qy - y + 1) * q), slice((qx - x) * q, (qx - x + 1) * q))
            changed = int(np.any(img[sl] != current[sl], axis=2).sum())
            if changed:
                raise ConsoleError(
                    f"quadrant {key2(qx, qy)} was edited too ({changed} px differ from its active version); "
                    f"edit only {', '.join(key2(*t) for t in take)} or add it to take"
                )
        store = self.project.store
        made = []
        for qx, qy in take:
            tile = img[(qy - y) * q : (qy - y + 1) * q, (qx - x) * q : (qx - x + 1) * q]
            old = store.active(layers.GENERATION, qx, qy)
            prov = {
                "kind": "import",
                "source": "imported",
                "method": "manual",
                "via": "console",
                "window": key2(x, y),
                "from_version": None if old is None else old.version,
            }
            v = store.put_tile(layers.GENERATION, qx, qy, png_bytes(tile), prov)
            made.append({"key": key2(qx, qy), "version": v.version, "sha256": v.sha256})
        redrawn = self._redraw(take)
        return _json(200, {"imported": made, "map_tiles_redrawn": redrawn})

    def _redraw(self, keys: list[Quadrant]) -> int:
        try:
            return update_pyramid(
                self.project.store, self.map_dir, keys, name=self.config.map.name
            ).tiles_written
        except PyramidError:
            return 0

    def save_bounds(self, params: dict[str, list[str]], body: bytes) -> ApiResponse:
        """The drawn outline (world pixels) as the project's bounds GeoJSON, after the bounds checks."""
        req = _body(body)
        pts = req.get("polygon_px")
        if not isinstance(pts, list) or not 3 <= len(pts) <= MAX_VERTICES:
            raise ConsoleError(f"polygon_px must be a list of 3-{MAX_VERTICES} [px, py] points")
        try:
            coords = [(float(a), float(b)) for a, b in pts]
        except (TypeError, ValueError):
            raise ConsoleError("polygon_px must be a list of [px, py] number pairs") from None
        poly = Polygon(coords)
        if not np.isfinite(np.asarray(coords)).all():
            raise ConsoleError("polygon_px holds a coordinate that is not a finite number")
        if not poly.is_valid:
            raise ConsoleError(
                f"the outline crosses itself ({shapely.is_valid_reason(poly)}); move a vertex so no edges cross"
            )
        g = self.project.geometry
        # Follow the drawn (straight in pixels) edges closely in lng/lat: a vertex every 32 px.
        dense = shapely.segmentize(poly, 32.0)
        lnglat = shapely.transform(dense, lambda c: np.column_stack(g.pixel_to_lnglat(c[:, 0], c[:, 1])))
        qs = quadrants_for_bounds(g, lnglat, force=self.config.force_bounds)
        plan = LatticePlan.from_quadrants(qs.keys)
        path = self._bounds_path()
        geo = {"type": "Feature", "properties": {"source": "isonyc console"}, "geometry": mapping(lnglat)}
        atomic_write(path, json.dumps(geo, indent=1).encode())
        note = (
            "saved over the project's bounds file"
            if path == Path(self.config.bounds)
            else f"the config's bounds are the preset {self.config.bounds!r}: set bounds = '{path}' to use it"
        )
        return _json(200, {"path": str(path), "quadrants": len(qs), "steps": len(plan), "note": note})

    def _bounds_path(self) -> Path:
        b = Path(self.config.bounds)
        if b.suffix.lower() in (".geojson", ".json"):
            return b
        return self.map_dir / "bounds.geojson"


def _polygons(geom: Any) -> list[Polygon]:
    if isinstance(geom, Polygon):
        return [geom]
    return [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon)]


def _body(body: bytes) -> dict[str, Any]:
    try:
        req = json.loads(body or b"{}")
    except ValueError:
        raise ConsoleError("the request body must be a JSON object") from None
    if not isinstance(req, dict):
        raise ConsoleError("the request body must be a JSON object")
    return req


def _blob_url(sha: object) -> str | None:
    return f"/api/blob/{sha}" if isinstance(sha, str) and _SHA.match(sha) else None


def _made_by(prov: Mapping[str, Any]) -> str:
    """Who or what made a version, in a few words."""
    kind = prov.get("kind")
    if kind == "repair":
        return f"repair by a person (from version {prov.get('from_version')})"
    if kind == "revert":
        return f"revert by a person (to version {prov.get('reverted_to')})"
    if kind == "regenerate":
        return f"regenerated by a person ({prov.get('step')}, seed {prov.get('seed_override')})"
    if kind == "import" or prov.get("source") == "imported":
        return "imported by a person"
    if "repair" in prov:
        return "colour repair by a person"
    step = prov.get("step")
    return f"pipeline step {step}" if step else "pipeline"


def _context_steps(plan: LatticePlan, context: list[Any], own: tuple[str, str]) -> list[tuple[str, str]]:
    """The step partitions (asset, key) whose quadrants a version used as context, without its own step."""
    out = set()
    for c in context:
        try:
            x, y = int(c[0]), int(c[1])
        except (TypeError, ValueError, IndexError):
            continue
        if (x, y) in plan:
            s = plan.step_for_quadrant(x, y)
            out.add((layers.STEP_ASSETS[s.kind.value], key2(*s.cell)))
    return sorted(out - {own})
