"""The Celery configuration both sides build (jobs.queue) and the workers' own app (worker.celery_app)."""

from __future__ import annotations

from jobs.queue import create_app
from jobs.settings import JobSettings


def test_the_visibility_timeout_is_a_transport_option_and_tasks_are_the_workers_to_include() -> None:
    settings = JobSettings(s3_access_key="k", s3_secret_key="s", visibility_timeout_s=45)
    app = create_app(settings)
    assert app.conf.broker_transport_options["visibility_timeout"] == 45
    assert app.conf.result_backend_transport_options["visibility_timeout"] == 45
    assert "visibility_timeout" not in app.conf  # not a Celery setting: it did nothing at the top level
    assert not app.conf.include  # the API's client sends tasks by name and never imports worker code


def test_the_workers_app_includes_its_tasks(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("BRAINSYNTH_S3_ACCESS_KEY", "k")
    monkeypatch.setenv("BRAINSYNTH_S3_SECRET_KEY", "s")
    from worker.celery_app import app

    assert list(app.conf.include) == ["worker.tasks"]
