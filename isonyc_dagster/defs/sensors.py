"""The wave scheduler: a sensor that fills the configured bounds in a seam-free order, by itself.

Each tick it reads what is materialized and what is in flight from the Dagster instance (so it survives daemon
restarts: it keeps no state of its own), asks ``waves.ready`` what may start now, and requests one run per rectangle
of ready partitions per asset. Failed runs are retried with exponential cooldown, at most ``MAX_ATTEMPTS`` times;
runs whose process died are marked failed and redone at once. When everything is generated it refreshes the map
(pyramid + PMTiles) whenever the map does not show the store's active tiles.
"""

import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_shared.check import CheckError

from isonyc_dagster import layers
from isonyc_dagster.defs.assets._common import FILL_TAG
from isonyc_dagster.defs.assets.steps import STEP_ASSET_NAMES
from isonyc_dagster.defs.operate import people_work
from isonyc_dagster.defs.partitions import key2, parse_key2
from isonyc_dagster.defs.resources import GeneratorResource, ProjectResource
from isonyc_dagster.defs.run_tags import backend_tags
from isonyc_dagster.defs.runs import DEAD_TAG, UNFINISHED, reap_dead_runs
from isonyc_dagster.generate.plan import StepKind
from isonyc_dagster.generate.waves import KeyOrder, Progress, WaveRequests, complete, ready
from isonyc_dagster.project import Project

SCHEDULER_TAG = "isonyc/scheduler"
ASSET_TAG = "isonyc/asset"
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
PARTITION_TAG = "dagster/partition"

STEP_ASSETS = STEP_ASSET_NAMES
EXPORT_ASSETS = (layers.DZI_PYRAMID, layers.PMTILES_ARCHIVE)
#: Partitions to do per run: large, because a launched run costs seconds of overhead and the key order makes a range
#: a compact region, yet bounded so that one run stays minutes long and a failure loses little (a step run of 256
#: remote calls is ~10 min on 8 GPU slots). Renders are cut finest: their chunks pace the pipeline behind them.
MAX_PER_RUN = {layers.RENDER: 1024, layers.WATER_MASK: 2048, layers.GENERATION: 2048, "steps": 256}
MAX_ATTEMPTS = 5
COOLDOWN_S = 30.0


def job_name(asset: str) -> str:
    """The asset job the scheduler uses for an asset (or "export" for the map outputs)."""
    return f"{asset}_job"


def build_jobs() -> list:
    """One asset job per scheduled asset: a sensor may only target jobs of a single partitions definition each."""
    jobs = [
        dg.define_asset_job(job_name(layers.GEODATA), selection=[layers.GEODATA]),
        dg.define_asset_job(job_name("export"), selection=list(EXPORT_ASSETS)),
    ]
    for asset in layers.QUADRANT_LAYERS:
        jobs.append(dg.define_asset_job(job_name(asset), selection=[asset]))
    for asset in STEP_ASSETS.values():
        jobs.append(dg.define_asset_job(job_name(asset), selection=[asset]))
    return jobs


def key_orders(project: Project) -> dict[str, KeyOrder]:
    """The partition key order of each scheduled asset (quadrant assets share one, each step kind has its own)."""
    quadrant_order = project.order.quadrants
    out = {name: quadrant_order for name in (*layers.QUADRANT_LAYERS, *quadrant_followers(project))}
    out.update({STEP_ASSETS[k]: project.order.steps[k] for k in StepKind})
    return out


def _run_keys(tags: dict[str, str], orders: dict[str, KeyOrder]) -> set[tuple[int, int]]:
    """The keys a run covers: its partition, or every key of its range in the asset's order."""
    if RANGE_START in tags and RANGE_END in tags:
        order = orders.get(tags.get(ASSET_TAG, ""))
        if order is None:
            return set()
        return set(order.between(parse_key2(tags[RANGE_START]), parse_key2(tags[RANGE_END])))
    if PARTITION_TAG in tags:
        return {parse_key2(tags[PARTITION_TAG])}
    return set()


def _add(progress: Progress, asset: str, keys: set[tuple[int, int]]) -> None:
    for kind, name in STEP_ASSETS.items():
        if asset == name:
            progress.steps[kind] |= keys
            return
    if asset in layers.QUADRANT_LAYERS:
        getattr(progress, asset).update(keys)
    elif asset:
        progress.other.setdefault(asset, set()).update(keys)


def materialized(instance: dg.DagsterInstance, others: Iterable[str] = ()) -> Progress:
    done = Progress()
    for asset in (*layers.QUADRANT_LAYERS, *STEP_ASSETS.values(), *others):
        keys = instance.get_materialized_partitions(dg.AssetKey(asset))
        _add(done, asset, {parse_key2(k) for k in keys})
    return done


def _scheduler_runs(instance: dg.DagsterInstance, statuses: list[dg.DagsterRunStatus]) -> list:
    return list(instance.get_run_records(dg.RunsFilter(statuses=statuses, tags={SCHEDULER_TAG: "wave"})))


def in_flight(runs: list, orders: dict[str, KeyOrder]) -> Progress:
    """Keys of the scheduler's queued and running runs (never requested twice)."""
    busy = Progress()
    for rec in runs:
        tags = rec.dagster_run.tags
        _add(busy, tags.get(ASSET_TAG, ""), _run_keys(tags, orders))
    return busy


def cooling_down(
    instance: dg.DagsterInstance, orders: dict[str, KeyOrder], now: float | None = None
) -> tuple[Progress, list[str], list[str]]:
    """Keys whose last scheduled run failed recently (exponential cooldown) or too often (given up), and the labels
    (``asset[x|y]``) of those given up and of those waiting to be retried."""
    now = time.time() if now is None else now
    failures: Counter[tuple[str, tuple[int, int]]] = Counter()
    last: dict[tuple[str, tuple[int, int]], float] = {}
    records = instance.get_run_records(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE], tags={SCHEDULER_TAG: "wave"}), limit=2000
    )
    for rec in records:
        tags = rec.dagster_run.tags
        if DEAD_TAG in tags:  # its process died: the work did not fail and is requested again at once
            continue
        ended = rec.end_time or rec.create_timestamp.timestamp()
        for k in _run_keys(tags, orders):
            failures[(tags.get(ASSET_TAG, ""), k)] += 1
            last[(tags.get(ASSET_TAG, ""), k)] = max(last.get((tags.get(ASSET_TAG, ""), k), 0.0), ended)
    blocked, given_up, retrying = Progress(), [], []
    for (asset, k), n in failures.items():
        if n >= MAX_ATTEMPTS:
            given_up.append(f"{asset}[{k[0]}|{k[1]}]")
            _add(blocked, asset, {k})
        elif now - last[(asset, k)] < COOLDOWN_S * 2 ** (n - 1):
            retrying.append(f"{asset}[{k[0]}|{k[1]}]")
            _add(blocked, asset, {k})
    return blocked, given_up, retrying


def _merge(a: Progress, b: Progress) -> Progress:
    out = Progress(
        render=a.render | b.render,
        generation=a.generation | b.generation,
        water_mask=a.water_mask | b.water_mask,
    )
    out.steps = {k: a.steps[k] | b.steps[k] for k in StepKind}
    out.other = {n: a.other.get(n, set()) | b.other.get(n, set()) for n in {*a.other, *b.other}}
    return out


def quadrant_followers(project: Project) -> dict[str, str | None]:
    """The project's per-quadrant assets besides render, generation and water masks, each with the asset its
    quadrant waits for (``None``: only geodata): the photoreal layer where the infill uses it, derived layers."""
    from isonyc_dagster.derive import layer_of

    out: dict[str, str | None] = {}
    if project.config.render_layer != "whitebox":
        out[layers.PHOTOREAL] = None
    for name in project.config.derived_layers:
        out[layer_of(name)] = layers.GENERATION
    return out


def _has_all(project: Project, kind: StepKind, cell: tuple[int, int], have: set[tuple[int, int]]) -> bool:
    step = project.plan.get(kind, cell)
    return step is not None and all(q in have for q in step.quadrants)


def _follower_requests(
    project: Project, done: Progress, busy: Progress, req_steps: dict[StepKind, set[tuple[int, int]]]
) -> tuple[list[dg.RunRequest], bool]:
    """Runs for the photoreal and derived layers, and whether they are all complete. Steps whose quadrants lack
    their photoreal render are held back (``req_steps`` is filtered in place): they would fail fast."""
    out: list[dg.RunRequest] = []
    qs = set(project.quadrants.keys)
    complete_ = True
    for asset, source in quadrant_followers(project).items():
        have = done.other.get(asset, set())
        base = qs if source is None else done.generation & qs
        todo = base - have - busy.other.get(asset, set())
        complete_ &= qs <= have
        out += _requests(asset, todo, project.order.quadrants, MAX_PER_RUN[layers.GENERATION], asset)
        if asset == layers.PHOTOREAL:
            for kind, cells in req_steps.items():
                req_steps[kind] = {c for c in cells if _has_all(project, kind, c, have)}
    return out, complete_


#: While its upstream is still being written, work that calls no model waits until this many keys are ready.
MIN_BATCH = 256


def _batch_modelless(req: WaveRequests, busy: Progress) -> None:
    """Hold back work that calls no model (water masks, publishing) while its upstream is still being written, until
    a batch is ready (in place): a range run's partitions, and steps logged one by one as they are committed, appear
    gradually, and one run per few keys would cost more than the work (``generation`` assesses the whole map's QA
    once per run)."""
    if busy.render and len(req.water_mask) < MIN_BATCH:
        req.water_mask = set()
    if any(busy.steps.values()) and len(req.generation) < MIN_BATCH:
        req.generation = set()


def _requests(
    asset: str,
    keys: set[tuple[int, int]],
    order: KeyOrder,
    max_keys: int,
    wave: str,
    *,
    avoid: set[tuple[int, int]] | None = None,
    fill: bool = True,
    tags: dict[str, str] | None = None,
) -> Iterator[dg.RunRequest]:
    """One run per key range holding ``keys`` (at most ``max_keys`` of them each), in the asset's key order.

    With ``avoid`` (the keys in flight or cooling down), a range may also pass over other keys, done or not ready
    yet: with ``fill`` the run carries ``FILL_TAG`` and skips them, so a wave scattered along the order is still one
    run; without, it redoes them. Without ``avoid``, a range holds exactly ``keys``. ``tags`` are added to every run
    (e.g. ``run_tags.backend_tags``)."""
    passable = None if avoid is None else (lambda k: k not in avoid)
    for first, last in order.spans(keys, max_wanted=max_keys, passable=passable):
        run_tags = {SCHEDULER_TAG: "wave", ASSET_TAG: asset, "isonyc/wave": wave, **(tags or {})}
        if first == last:
            yield dg.RunRequest(job_name=job_name(asset), partition_key=key2(*first), tags=run_tags)
            continue
        run_tags |= {RANGE_START: key2(*first), RANGE_END: key2(*last)}
        if avoid is not None and fill:
            run_tags[FILL_TAG] = "missing"
        yield dg.RunRequest(job_name=job_name(asset), tags=run_tags)


def max_runs_in_flight() -> int:
    """How many scheduler runs may be queued or running at once (``$ISONYC_MAX_RUNS_IN_FLIGHT``, default 4)."""
    return max(1, int(os.environ.get("ISONYC_MAX_RUNS_IN_FLIGHT", "4")))


def _request(asset: str) -> dg.RunRequest:
    return dg.RunRequest(
        job_name=job_name(asset), tags={SCHEDULER_TAG: "wave", ASSET_TAG: asset, "isonyc/wave": asset}
    )


@dataclass(frozen=True)
class WavePlan:
    """One evaluation of the scheduler."""

    requests: list[dg.RunRequest]
    #: One line: progress, failures, what it waits on, the map's state.
    summary: str
    #: Every quadrant, step and water mask is materialized and the map shows the store's active tiles.
    finished: bool = False
    #: Some partitions failed ``MAX_ATTEMPTS`` times and are no longer requested.
    gave_up: bool = False


def wave_run_requests(project: Project, instance: dg.DagsterInstance) -> tuple[list[dg.RunRequest], str]:
    """The runs to start now (at most ``max_runs_in_flight`` in flight), and a one-line summary of the state."""
    plan = plan_waves(project, instance)
    return plan.requests, plan.summary


def plan_waves(
    project: Project, instance: dg.DagsterInstance, *, max_in_flight: int | None = None
) -> WavePlan:
    """What the scheduler does now: the runs to start (at most ``max_in_flight`` in flight, default
    ``max_runs_in_flight()``), and the state they leave."""
    reaped = reap_dead_runs(instance, {SCHEDULER_TAG: "wave"})
    running = _scheduler_runs(instance, UNFINISHED)
    running_assets = {r.dagster_run.tags.get(ASSET_TAG) for r in running}
    slots = (max_in_flight or max_runs_in_flight()) - len(running)
    if instance.get_latest_materialization_event(dg.AssetKey(layers.GEODATA)) is None:
        if layers.GEODATA in running_assets:
            return WavePlan([], "waiting for geodata")
        return WavePlan([_request(layers.GEODATA)], "geodata not prepared yet")
    orders = key_orders(project)
    busy = in_flight(running, orders)
    followers = quadrant_followers(project)
    done = materialized(instance, followers)
    blocked, given_up, retrying = cooling_down(instance, orders)
    avoid = _merge(busy, blocked)
    req = ready(project.plan, project.quadrants.keys, done, avoid)
    _batch_modelless(req, busy)
    extra, followers_done = _follower_requests(project, done, avoid, req.steps)
    # Water masks first: they are cheap and the map needs them, and a driver that executes one run at a time plans
    # again after each step run, so anything queued behind steps waits until no step is ready (they starved).
    out: list[dg.RunRequest] = list(
        _requests(
            layers.WATER_MASK,
            req.water_mask,
            orders[layers.WATER_MASK],
            MAX_PER_RUN[layers.WATER_MASK],
            "water",
            avoid=avoid.water_mask,
        )
    )
    # Then the deepest waves, so areas finish (and their context is used) before new areas start.
    for kind in (StepKind.CORNER, StepKind.BRIDGE_V, StepKind.BRIDGE_H, StepKind.BLOCK):
        name = STEP_ASSETS[kind]
        out += _requests(
            name,
            req.steps[kind],
            orders[name],
            MAX_PER_RUN["steps"],
            str(kind.wave),
            avoid=avoid.steps[kind],
            tags=backend_tags(project, name),
        )
    for asset, wave in ((layers.GENERATION, "publish"), (layers.RENDER, "render")):
        keys, order = getattr(req, asset), orders[asset]
        out += _requests(asset, keys, order, MAX_PER_RUN[asset], wave, avoid=getattr(avoid, asset))
    # The photoreal layer goes right after the renders (steps wait for it); derived layers follow generation.
    n_photo = sum(1 for r in extra if (r.tags or {}).get(ASSET_TAG) == layers.PHOTOREAL)
    out = extra[:n_photo] + out + extra[n_photo:] if n_photo else out + extra
    n_steps = len(project.plan.steps)
    n_done = sum(len(v) for v in done.steps.values())
    summary = (
        f"rendered {len(done.render & set(project.quadrants.keys))}/{len(project.quadrants)}, "
        f"steps {n_done}/{n_steps}, generated {len(done.generation)}/{len(project.quadrants)}"
    )
    if given_up:
        summary += f"; gave up after {MAX_ATTEMPTS} failures: {', '.join(given_up[:10])}"
    if retrying:
        summary += (
            f"; {len(retrying)} failed partition(s) wait for their retry: {', '.join(sorted(retrying)[:10])}"
        )
    if reaped:
        summary += f"; marked failed (process gone): {', '.join(reaped[:10])}"
    finished = False
    all_done = followers_done and complete(project.plan, project.quadrants.keys, done)
    if not out and not running and all_done:
        # Changes people made: stale steps (per ``on_stale``), quadrants to publish again; before the map.
        cooling = {STEP_ASSETS[k]: blocked.steps[k] for k in StepKind}
        cooling[layers.GENERATION] = blocked.generation
        work, note = people_work(project, instance, done.generation, cooling)
        summary += f"; {note}" if note else ""
        for asset, keys in work.items():
            per_run = MAX_PER_RUN[layers.GENERATION if asset == layers.GENERATION else "steps"]
            # Publishing again may pass over quadrants that are up to date (republishing the same pixels changes
            # nothing); regenerating steps may not (each would be a new model call).
            publish = asset == layers.GENERATION
            out += _requests(
                asset,
                keys,
                orders[asset],
                per_run,
                "people",
                avoid=(busy.generation | blocked.generation) if publish else None,
                fill=False,
                tags=backend_tags(project, asset),
            )
    if not out and not running and all_done:
        refresh, finished, note = _refresh_maps(project, instance)
        out += refresh
        summary += note
    elif running:
        summary += "; waiting on " + ", ".join(
            f"{r.dagster_run.tags.get(ASSET_TAG)} run {r.dagster_run.run_id[:8]}" for r in running[:5]
        )
    if not all_done and done.generation and "export" not in running_assets and _map_refresh_due(instance):
        out.insert(0, _request("export"))  # first, for the same reason as the water masks
        summary += "; refreshing the map while the generation goes on"
    if len(out) > max(slots, 0):
        summary += f"; {len(out) - max(slots, 0)} more run(s) wait for a free slot"
        out = out[: max(slots, 0)]
    return WavePlan(out, summary, finished=finished, gave_up=bool(given_up))


def map_staleness(project: Project) -> str | None:
    """Why the published map does not show the store's active generations (``None`` when it does).

    Judged from the store and the map's own manifest, never from Dagster timestamps: a crash during export, a new
    output directory, a deleted map or a repaired tile all make the map stale, an unchanged store does not.
    """
    from isonyc_dagster.publish.build import pyramid_staleness
    from isonyc_dagster.publish.viewer import viewer_missing

    out = Path(project.config.output_dir)
    reason = pyramid_staleness(
        project.store,
        out,
        grid=project.quadrants.bbox,
        name=project.config.map.name,
        publish=project.publish_spec,
    )
    return reason or viewer_missing(out)


def _refresh_maps(project: Project, instance: dg.DagsterInstance) -> tuple[list[dg.RunRequest], bool, str]:
    """The run that brings the published map (then the derived layers' pyramids) up to date, whether everything
    is, and a note for the summary."""
    from isonyc_dagster.defs.assets.derived import layer_pyramids_staleness

    job, stale = "export", map_staleness(project)
    if stale is None and project.config.derived_layers:
        job, stale = layers.LAYER_PYRAMIDS, layer_pyramids_staleness(project)
    if stale is None:
        return [], True, "; map up to date"
    if _export_cooled_down(instance, job):
        return [_request(job)], False, f"; refreshing the map: {stale}"
    return [], False, f"; map refresh failed recently, retrying after {COOLDOWN_S:.0f} s: {stale}"


#: While a long fill goes on, the published map is refreshed this often (seconds), so people see it grow.
MAP_REFRESH_S = 600.0


def _map_refresh_due(instance: dg.DagsterInstance, now: float | None = None) -> bool:
    """Whether the map should be refreshed before the fill ends: the fill and the last export (if any) started
    more than ``MAP_REFRESH_S`` ago. Short fills get no intermediate map."""
    now = time.time() if now is None else now
    first = instance.get_run_records(dg.RunsFilter(tags={SCHEDULER_TAG: "wave"}), limit=1, ascending=True)
    if not first or now - first[0].create_timestamp.timestamp() < MAP_REFRESH_S:
        return False
    last = instance.get_run_records(dg.RunsFilter(tags={SCHEDULER_TAG: "wave", ASSET_TAG: "export"}), limit=1)
    return not last or now - last[0].create_timestamp.timestamp() >= MAP_REFRESH_S


def _export_cooled_down(instance: dg.DagsterInstance, asset: str = "export") -> bool:
    """The last map refresh (``asset``'s run) did not fail in the last ``COOLDOWN_S`` seconds."""
    failed = [
        r
        for r in _scheduler_runs(instance, [dg.DagsterRunStatus.FAILURE])
        if r.dagster_run.tags.get(ASSET_TAG) == asset
    ]
    latest = max(((r.end_time or 0.0) for r in failed), default=0.0)
    return time.time() - latest > COOLDOWN_S


def build_wave_scheduler(jobs: list, *, enabled: bool = True) -> dg.SensorDefinition:
    """The ``wave_scheduler`` sensor; ``enabled`` (the project's ``scheduler_enabled``): switched on in a fresh
    instance (``dagster dev``), else off until turned on in the UI (Automation → wave_scheduler)."""

    @dg.sensor(
        name="wave_scheduler",
        minimum_interval_seconds=15,
        default_status=dg.DefaultSensorStatus.RUNNING if enabled else dg.DefaultSensorStatus.STOPPED,
        jobs=jobs,
        description="Fills the configured bounds by itself: renders, then blocks → bridges → corners (each only "
        "after its context exists), publishes quadrants, water masks, and refreshes the map. On by default "
        "(scheduler_enabled = false in the project config: off until turned on here).",
    )
    def wave_scheduler(context: dg.SensorEvaluationContext, project: ProjectResource) -> dg.SensorResult:
        plan = plan_waves(project.get(), context.instance)
        context.log.info("%s; requesting %d run(s)", plan.summary, len(plan.requests))
        return dg.SensorResult(
            run_requests=plan.requests, skip_reason=None if plan.requests else dg.SkipReason(plan.summary)
        )

    return wave_scheduler


#: The job that the nightly schedule starts: one run that drives the wave scheduler over the bounds to the end.
BACKFILL_JOB = "wave_backfill_job"
BACKFILL_SCHEDULE = "wave_backfill_schedule"


def build_wave_backfill(cron: str | None) -> tuple[list[dg.JobDefinition], list[dg.ScheduleDefinition]]:
    """A scheduled backfill over the configured bounds (``schedule_cron``; none when it is empty): at each cron
    tick, the scheduler's own planning (``plan_waves``) says whether anything is left; if so, one run of
    ``wave_backfill_job`` executes every run it plans, several at once (``defs.parallel``), until the map is
    finished and up to date. Off until turned on in the UI; the runs it starts carry the sensor's tags, so the
    sensor (if on too) never requests the same partitions again."""
    if not cron:
        return [], []

    @dg.op(name="wave_backfill", description="Run the wave scheduler's plan over the bounds to completion.")
    def wave_backfill(
        context: dg.OpExecutionContext, project: ProjectResource, generator: GeneratorResource
    ) -> dg.Output:
        from isonyc_dagster.defs.parallel import drive_parallel  # it imports this module

        try:
            jobs: dg.RepositoryDefinition | dg.Definitions = context.repository_def
        except (
            CheckError
        ):  # executed in process (a test, a script): no code location, build the same definitions
            from isonyc_dagster.defs.definitions import build_definitions

            jobs = build_definitions(project.get().config, generator=generator)
        report = drive_parallel(
            jobs,
            project.get(),
            context.instance,
            runs_in_flight=max_runs_in_flight(),
            echo=context.log.info,
        )
        meta: dict[str, Any] = {
            "runs": report.runs,
            "failed": report.failed,
            "failed_runs": dg.MetadataValue.json(report.failed_labels[:100]),
            "summary": report.summary,
        }
        if not report.complete:
            raise dg.Failure(
                description=f"the backfill stopped before the end: {report.summary}", metadata=meta
            )
        return dg.Output(None, metadata=meta)

    @dg.job(
        name=BACKFILL_JOB, description="Drive the wave scheduler over the configured bounds to completion."
    )
    def wave_backfill_job() -> None:
        wave_backfill()

    @dg.schedule(
        name=BACKFILL_SCHEDULE,
        cron_schedule=cron,
        job=wave_backfill_job,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"Scheduled backfill over the bounds ({cron}): the wave scheduler's plan, run to completion.",
    )
    def wave_backfill_schedule(
        context: dg.ScheduleEvaluationContext, project: ProjectResource
    ) -> dg.RunRequest | dg.SkipReason:
        return backfill_request(project.get(), context.instance)

    return [wave_backfill_job], [wave_backfill_schedule]


def backfill_request(project: Project, instance: dg.DagsterInstance) -> dg.RunRequest | dg.SkipReason:
    """What the schedule does at a tick: a backfill run when the plan has work left, else why not."""
    plan = plan_waves(project, instance)
    if plan.finished:
        return dg.SkipReason(f"nothing to do: {plan.summary}")
    running = instance.get_runs(dg.RunsFilter(job_name=BACKFILL_JOB, statuses=UNFINISHED), limit=1)
    if running:
        return dg.SkipReason(f"a backfill is already running ({running[0].run_id[:8]}): {plan.summary}")
    return dg.RunRequest(tags={"isonyc/plan": plan.summary[:500]})
