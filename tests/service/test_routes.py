"""The routers in process: ``create_app`` against a real Redis and a real S3 server (no worker: cohorts stay
queued), through FastAPI's TestClient; ``dependency_overrides`` swaps the cohort service or the readiness
prober where a test needs a failure on purpose. The end-to-end tests (test_e2e.py) keep the real processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from jobs.storage import StorageError
from service.api.deps import get_cohort_service, get_readiness
from service.app import create_app
from service.errors import CohortConflict
from service.localstack import RedisServer, S3Server, start_redis
from service.settings import ServiceSettings
from tests.conftest import S3_ACCESS_KEY, S3_SECRET_KEY, make_model_dir, tiny_config

KEY = {"Authorization": "Bearer key-routes"}
OTHER = {"Authorization": "Bearer key-other"}


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("routes-redis"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny`` (epsilon prediction) and ``tiny-x0``, the same networks trained, says its model.json, to predict
    the clean sample (which PLMS cannot sample)."""
    root = tmp_path_factory.mktemp("routes-models")
    make_model_dir(root / "tiny")
    config = tiny_config("tiny-x0")
    scheduler = config.scheduler.model_copy(update={"prediction_type": "sample"})
    make_model_dir(root / "tiny-x0", config.model_copy(update={"scheduler": scheduler}))
    return root


@pytest.fixture()
def client(
    redis_server: RedisServer, s3_server: S3Server, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.setenv("BRAINSYNTH_MODELS_DIR", str(models_dir))
    settings = ServiceSettings(
        broker_url=redis_server.url,
        s3_endpoint=s3_server.endpoint,
        s3_access_key=S3_ACCESS_KEY,
        s3_secret_key=S3_SECRET_KEY,
        s3_bucket="routes",
        api_keys={"lab-routes": "key-routes", "lab-other": "key-other"},
        log_format="text",
    )
    app = create_app(settings)
    with TestClient(app) as test_client:
        yield test_client


def _submit(client: TestClient, body: dict, headers: dict | None = None) -> object:
    return client.post("/v1/cohorts", json=body, headers={**KEY, **(headers or {})})


def test_models_route_describes_each_model_and_only_the_samplers_it_can_run(client: TestClient) -> None:
    assert client.get("/v1/models").status_code == 401
    models = {m["name"]: m for m in client.get("/v1/models", headers=KEY).json()["models"]}
    assert models["tiny"]["ready"] and models["tiny"]["conditioning"]["age"]["unit"] == "years"
    assert set(models["tiny"]["samplers"]) == {"ddim", "ddpm", "pndm", "dpmpp2m"}
    assert models["tiny"]["samplers"]["dpmpp2m"] == {"default_steps": 15}
    assert set(models["tiny-x0"]["samplers"]) == {"ddim", "ddpm", "dpmpp2m"}  # PLMS has no x0 parameterisation
    assert models["tiny"]["guidance"] == {"default": 1.0, "min": 1.0, "max": 1.0}  # no condition dropout


def test_a_cohort_through_every_route_of_its_router(client: TestClient) -> None:
    answer = _submit(client, {"model": "tiny", "n_subjects": 3, "seed": 5, "sampler": {"name": "ddim", "steps": 4}})
    assert answer.status_code == 202, answer.text
    cohort_id = answer.json()["id"]
    assert answer.headers["Location"] == f"/v1/cohorts/{cohort_id}"
    assert client.get(f"/v1/cohorts/{cohort_id}", headers=KEY).json()["status"] == "queued"
    assert client.get(f"/v1/cohorts/{cohort_id}", headers=OTHER).status_code == 404  # another tenant's
    subjects = client.get(f"/v1/cohorts/{cohort_id}/subjects", headers=KEY).json()["subjects"]
    assert [s["status"] for s in subjects] == ["pending"] * 3 and subjects[0]["url"] is None
    # a page at a time, in participant order, with the cohort list's token contract
    pages, token = [], None
    while True:
        page = client.get(f"/v1/cohorts/{cohort_id}/subjects", headers=KEY,
                          params={"page_size": 2, **({"page_token": token} if token else {})}).json()  # fmt: skip
        pages.append([s["participant_id"] for s in page["subjects"]])
        if not (token := page["next_page_token"]):
            break
    assert pages == [["sub-000001", "sub-000002"], ["sub-000003"]]
    for bad in ("nonsense", "YWZ0ZXI6c3ViLTk5OTk5OQ=="):  # not a token; another cohort's subject (sub-999999)
        refused = client.get(f"/v1/cohorts/{cohort_id}/subjects", headers=KEY, params={"page_token": bad})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["query", "page_token"]
    assert client.get(f"/v1/cohorts/{cohort_id}/subjects", headers=KEY, params={"page_size": 0}).status_code == 422
    listed = client.get("/v1/cohorts", params={"page_size": 1}, headers=KEY).json()
    assert listed["cohorts"][0]["id"] == cohort_id
    archive = client.get(f"/v1/cohorts/{cohort_id}/archive", headers=KEY)
    assert archive.status_code == 409 and archive.headers["Retry-After"] == "5"
    for path in ("qc", "qc.png"):  # its QC report too: only once it has finished
        assert client.get(f"/v1/cohorts/{cohort_id}/{path}", headers=KEY).status_code == 409
    assert client.delete(f"/v1/cohorts/{cohort_id}", headers=KEY).status_code == 409  # cancel it first
    assert client.post(f"/v1/cohorts/{cohort_id}/cancel", headers=KEY).json()["status"] == "canceled"
    assert client.delete(f"/v1/cohorts/{cohort_id}", headers=KEY).status_code == 204
    gone = client.get(f"/v1/cohorts/{cohort_id}", headers=KEY)
    assert gone.status_code == 404 and gone.json() == {"detail": f"cohort {cohort_id} not found"}


def test_a_sampler_the_model_cannot_run_is_a_422_naming_the_sampler(client: TestClient) -> None:
    answer = _submit(client, {"model": "tiny-x0", "n_subjects": 1, "sampler": {"name": "pndm"}})
    assert answer.status_code == 422
    (error,) = answer.json()["detail"]
    assert error["loc"] == ["body", "sampler", "name"] and "'sample'" in error["msg"] and "ddim" in error["msg"]
    ok = _submit(client, {"model": "tiny-x0", "n_subjects": 1, "sampler": {"name": "dpmpp2m"}})
    assert ok.status_code == 202, ok.text
    client.post(f"/v1/cohorts/{ok.json()['id']}/cancel", headers=KEY)


def test_validation_answers_keep_their_shape(client: TestClient) -> None:
    twin = {"age": 60, "sex": "F", "ventricular_volume_mm3": 30000, "brain_volume_mm3": 1.5e6, "seed": 9}
    answer = _submit(client, {"model": "tiny", "subjects": [twin, twin]})
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "subjects", 1, "seed"]
    assert "repeats subject 0" in answer.json()["detail"][0]["msg"]
    bad_token = client.get("/v1/cohorts", params={"page_token": "%%%"}, headers=KEY)
    assert bad_token.status_code == 422 and bad_token.json()["detail"][0]["loc"] == ["query", "page_token"]
    wrong_type = client.post("/v1/cohorts", content=b"{}", headers={**KEY, "Content-Type": "text/plain"})
    assert wrong_type.status_code == 415 and "application/json" in wrong_type.json()["detail"]
    unknown = _submit(client, {"model": "nope", "n_subjects": 1})
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["body", "model"]


class _Failing:
    """A cohort service whose every read fails with ``error`` (the dependency swapped in for one test)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __getattr__(self, _name: str) -> object:
        def fail(*_args: object) -> None:
            raise self.error

        return fail


@pytest.mark.parametrize(
    ("error", "status", "detail", "retry_after"),
    [
        (StorageError("down"), 503, "object storage is unavailable: retry shortly", "5"),
        (redis.ConnectionError("down"), 503, "the job store (Redis) is unavailable: retry shortly", "5"),
        (CohortConflict("cohort x is running: cancel it before deleting it"), 409, "cohort x is running", None),
    ],
)
def test_one_set_of_handlers_maps_domain_and_dependency_errors(
    client: TestClient, error: Exception, status: int, detail: str, retry_after: str | None
) -> None:
    client.app.dependency_overrides[get_cohort_service] = lambda: _Failing(error)  # type: ignore[attr-defined]
    try:
        answer = client.get("/v1/cohorts/abc", headers=KEY)
    finally:
        client.app.dependency_overrides.clear()  # type: ignore[attr-defined]
    assert answer.status_code == status and answer.json()["detail"].startswith(detail)
    assert answer.headers.get("Retry-After") == retry_after


class _Readiness:
    def report(self, *, workers_required: bool = True) -> dict:
        ready = not workers_required
        return {"ready": ready, "redis": True, "storage": True, "workers": "no worker beat in the last 10 s"}


def test_readiness_route_reads_the_prober_and_the_workers_option(client: TestClient) -> None:
    client.app.dependency_overrides[get_readiness] = _Readiness  # type: ignore[attr-defined]
    try:
        assert client.get("/readyz").status_code == 503
        assert client.get("/readyz", params={"workers": "optional"}).json()["ready"] is True
    finally:
        client.app.dependency_overrides.clear()  # type: ignore[attr-defined]
    real = client.get("/readyz", params={"workers": "optional"})  # the real prober: Redis and S3 are up
    assert real.status_code == 200 and real.json()["redis"] is True and real.json()["storage"] is True


def test_a_cohort_like_a_reference_table(client: TestClient) -> None:
    """``like`` rows are fitted, the subjects drawn from them; the stored request keeps the row count and
    the comparison, never the user's rows; too many rows are a 413, an unusable table a 422 naming like."""
    from tests.models.cohort.test_like import reference_rows

    rows = [{k: v for k, v in row.items() if k != "participant_id"} for row in reference_rows(60)]
    rows = [{**r, "age": float(r["age"]), "ventricular_volume_mm3": float(r["ventricular_volume_mm3"]),
             "brain_volume_mm3": float(r["brain_volume_mm3"])} for r in rows]  # fmt: skip
    answer = _submit(client, {"model": "tiny", "n_subjects": 4, "seed": 2, "like": {"rows": rows}})
    assert answer.status_code == 202, answer.text
    request = answer.json()["request"]
    assert request["like"]["rows"] == 60 and request["like"]["report"]["reference_rows"] == 60
    assert "age" in request["like"]["report"]["spearman"]["synthetic"]
    client.post(f"/v1/cohorts/{answer.json()['id']}/cancel", headers=KEY)
    too_many = _submit(client, {"model": "tiny", "n_subjects": 1, "like": {"rows": [{"age": 60.0}] * 5001}})
    assert too_many.status_code == 413 and "like.rows" in too_many.json()["detail"]
    unusable = _submit(client, {"model": "tiny", "n_subjects": 1, "like": {"rows": [{"sex": "F"}] * 3}})
    assert unusable.status_code == 422 and unusable.json()["detail"][0]["loc"] == ["body", "like"]
    both = _submit(client, {"model": "tiny", "n_subjects": 1, "like": {"rows": rows}, "covariates": {}})
    assert both.status_code == 422 and "like or covariates" in both.json()["detail"][0]["msg"]


def test_the_measure_is_chosen_per_model_and_an_unavailable_one_is_a_422_naming_qc(client: TestClient) -> None:
    models = {m["name"]: m for m in client.get("/v1/models", headers=KEY).json()["models"]}
    assert models["tiny"]["measures"] == []  # no volume probe in its directory
    answer = _submit(client, {"model": "tiny", "n_subjects": 1, "sampler": {"name": "ddim", "steps": 2}})
    assert answer.status_code == 202 and answer.json()["request"]["qc"] == "none"
    assert answer.json()["request"]["qc_tolerance"] == 0.25
    client.post(f"/v1/cohorts/{answer.json()['id']}/cancel", headers=KEY)
    for qc, says in (("probe", "has no volume probe"), ("samseg", "samseg is not available on this server")):
        refused = _submit(client, {"model": "tiny", "n_subjects": 1, "qc": qc})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "qc"]
        assert says in refused.json()["detail"][0]["msg"]
    unknown = _submit(client, {"model": "tiny", "n_subjects": 1, "qc": "synthseg"})
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["body", "qc"]
    for body, says in (
        ({"max_attempts": 3}, "regenerating needs a measure"),
        ({"max_attempts": 6}, "less than or equal"),
    ):
        refused = _submit(client, {"model": "tiny", "n_subjects": 1, **body})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "max_attempts"]
        assert says in refused.json()["detail"][0]["msg"]
    for guidance, says in ((2.0, "not trained for classifier-free guidance"), (11, "less than or equal"),
                           ("strong", "valid number")):  # fmt: skip
        refused = _submit(client, {"model": "tiny", "n_subjects": 1, "guidance": guidance})
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "guidance"]
        assert says in refused.json()["detail"][0]["msg"]
