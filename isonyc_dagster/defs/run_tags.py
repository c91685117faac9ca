"""Run tags that name the model backend a run calls, for the run queue's per-endpoint limits.

``deploy/dagster.yaml`` (and ``deploy/helm/values.yaml``) limit the runs in progress per distinct value of
``isonyc/backend`` (``applyLimitPerUniqueValue``). A limit only binds on runs that carry the tag, so every run
that calls a model says which backend profile it calls. Runs that call no model (render, water, map) carry none.
"""

from isonyc_dagster import layers
from isonyc_dagster.defs.assets.restyle import restyle_asset
from isonyc_dagster.generate.plan import StepKind
from isonyc_dagster.project import Project

#: Tag key of the backend profile (``ProjectConfig.backend``, a ``[backends.<name>]`` name) a run calls.
BACKEND_TAG = "isonyc/backend"


def model_assets(project: Project) -> frozenset[str]:
    """The assets whose runs call the generation backend: the lattice steps and each restyle's steps."""
    steps = set(layers.STEP_ASSETS.values())
    restyles = {restyle_asset(name, kind) for name in project.config.restyle for kind in StepKind}
    return frozenset(steps | restyles)


def backend_tags(project: Project, asset: str) -> dict[str, str]:
    """``{"isonyc/backend": <backend>}`` for a run of ``asset`` that calls a model; ``{}`` for any other.

    The value is the project's backend: the one the run's ``GeneratorResource`` is built for. Area rules
    (``[[rules]]``) may send some steps of a run to another backend. The run still counts against the project
    backend's limit, and inside runs the ``generation_backend`` pool bounds all of them together.
    """
    if asset not in model_assets(project):
        return {}
    return {BACKEND_TAG: project.config.backend}
