"""make_backend: every backend by name from flat settings, with clear errors for bad settings."""

from __future__ import annotations

import pytest

from isonyc_dagster.backends.base import BackendConfigError, BackendError, GenerationRequest, ImageBackend
from isonyc_dagster.backends.registry import BACKENDS, make_backend
from isonyc_dagster.errors import IsonycError
from tests.fake_apis import FakeModal, edit_template, gcs_emulator, make_template


def test_modal_from_flat_settings_with_generic_secret_names():
    with FakeModal(token_id="wk-id-123456", token_secret="ws-secret-123456") as api:
        b = make_backend(
            "modal",
            url=f"{api.url}/edit_b64",
            api_key="wk-id-123456",
            auth_secret="ws-secret-123456",
            steps=20,
            max_attempts=2,
            timeout_s=5,
        )
        assert b.transport.settings.max_attempts == 2 and b.transport.settings.timeout_s == 5
        tpl = make_template(64)[0]
        res = b.generate(GenerationRequest(tpl, seed=1))
        assert res.image_png == edit_template(tpl, 1) and api.requests[0].json()["steps"] == 20
        assert "ws-secret-123456" not in repr(b)


def test_each_remote_backend_constructs():
    assert (
        make_backend("gemini", api_key="k-1234567", model="gemini-2.5-flash-image").model_id
        == "gemini-2.5-flash-image"
    )
    v = make_backend("vertex", project="p", token_provider=lambda: "t", retry_max=1)
    assert v.transport.settings.max_attempts == 2
    with gcs_emulator("reg-bucket") as (_url, client):
        from isonyc_dagster.backends.oxen import GCSTemplateUploader

        up = GCSTemplateUploader("reg-bucket", client=client, url_mode="media")
        assert make_backend("oxen", api_key="k-1234567", model="m", uploader=up).model_id == "m"


def test_pixelart_is_built_lazily():
    b = make_backend("pixelart")
    assert isinstance(b, ImageBackend) and b.name == "pixelart"


def test_errors_name_the_problem_not_the_values():
    with pytest.raises(ValueError, match="unknown backend 'dalle'; choose one of: pixelart, modal"):
        make_backend("dalle")
    with pytest.raises(
        ValueError, match=r"unknown setting\(s\) \['colour'\]; valid: .*endpoint.*max_attempts"
    ) as ei:
        make_backend(
            "modal",
            endpoint="https://x.modal.run",
            colour="red",
            api_key="wk-123456",
            auth_secret="ws-9876543",
        )
    assert "ws-9876543" not in str(ei.value)
    with pytest.raises(ValueError, match=r"needs setting\(s\) \['endpoint'\]"):
        make_backend("modal")
    with pytest.raises(ValueError, match="invalid HTTP settings: max_concurrency"):
        make_backend("modal", endpoint="https://x.modal.run", max_concurrency=0)
    with pytest.raises(ValueError, match="needs uploader= or bucket="):
        make_backend("oxen", api_key="k", model="m")
    with pytest.raises(ValueError, match="Application Default Credentials"):
        make_backend("vertex", project="p", api_key="k")
    assert set(BACKENDS) == {"pixelart", "modal", "oxen", "gemini", "vertex"}


def test_config_errors_are_project_errors_and_still_value_errors():
    assert issubclass(BackendConfigError, IsonycError) and issubclass(BackendConfigError, ValueError)
    assert issubclass(BackendError, IsonycError) and issubclass(BackendError, RuntimeError)
    with pytest.raises(BackendConfigError, match="modal steps must be within 1..100"):
        make_backend("modal", endpoint="https://x.modal.run", steps=0)
    with pytest.raises(BackendConfigError, match="unknown pixel-art style parameter"):
        make_backend("pixelart", params={"sharpness": 1})
