"""What an operator watches, against the real stack: the API's /metrics and each worker's, JSON logs with the
context that ties them together, and no key or token in any log."""

from __future__ import annotations

import json

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.client import BrainSynthClient
from service.stack import LocalStack
from tests.service.conftest import KEYS, WORKER_METRICS_PORT


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def _value(samples: list, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == w for k, w in labels.items()))


def test_api_and_worker_metrics_count_the_work_with_tenant_free_labels(stack: LocalStack) -> None:
    with BrainSynthClient(stack.url, KEYS["lab-d"]) as client:
        before = _samples(httpx.get(stack.url + "/metrics").text)
        cohort = client.submit({"model": "tiny", "n_subjects": 3, "seed": 12, "sampler": {"steps": 4}})
        assert client.wait(cohort["id"], timeout=120)["status"] == "succeeded"
        assert client.http.get("/v1/cohorts/0000").status_code == 404
    assert httpx.get(stack.url + "/v1/models").status_code == 401
    text = httpx.get(stack.url + "/metrics").text
    after = _samples(text)

    route = "/v1/cohorts/{cohort_id}"
    assert _value(after, "brainsynth_http_requests_total", method="POST", route="/v1/cohorts", status="202") >= 1
    assert _value(after, "brainsynth_http_requests_total", method="GET", route=route, status="404") >= 1
    assert _value(after, "brainsynth_http_requests_total", route="/v1/models", status="401") >= 1
    assert _value(after, "brainsynth_http_request_duration_seconds_count", method="GET", route=route) >= 1
    stored = "brainsynth_subjects_total"
    assert _value(after, stored, outcome="stored") - _value(before, stored, outcome="stored") >= 3
    assert _value(after, "brainsynth_cohorts", status="succeeded") >= 1
    assert _value(after, "brainsynth_workers_alive") >= 1 and _value(after, "brainsynth_job_store_up") == 1
    states = {lab["state"] for n, lab, _ in after if n == "brainsynth_queue_tasks"}
    assert states == {"queued", "unacked", "measure_queued"}  # measure_queued: the SAMSEG queue's length
    assert _value(after, "brainsynth_measure_workers_alive") == 0  # this stack runs no measuring worker
    for secret in (cohort["id"], "lab-", "key-"):  # no tenant, key or cohort id in any label
        assert secret not in text, secret

    worker = _samples(httpx.get(f"http://127.0.0.1:{WORKER_METRICS_PORT}/metrics").text)
    labels = {"model": "tiny", "sampler": "ddim", "device": "cpu"}
    assert _value(worker, "brainsynth_worker_subjects_sampled_total", **labels) >= 3
    assert _value(worker, "brainsynth_worker_subject_seconds_count", **labels) >= 3
    assert _value(worker, "brainsynth_worker_subject_seconds_sum", **labels) > 0
    assert _value(worker, "brainsynth_worker_decode_seconds_count", model="tiny", device="cpu") >= 3
    assert _value(worker, "brainsynth_worker_write_seconds_count") >= 3


def test_logs_are_json_lines_with_context_and_never_a_key_or_token(stack: LocalStack) -> None:
    with BrainSynthClient(stack.url, KEYS["lab-d"]) as client:
        cohort = client.submit({"model": "tiny", "n_subjects": 2, "seed": 13, "sampler": {"steps": 4}})
        assert client.wait(cohort["id"], timeout=120)["status"] == "succeeded"
        token = client.http.post(f"/v1/cohorts/{cohort['id']}/link-token").json()["token"]
        assert httpx.get(f"{stack.url}/v1/cohorts/{cohort['id']}/archive", params={"token": token}).status_code == 200
        assert httpx.get(f"{stack.url}/v1/cohorts/{cohort['id']}", headers={"Authorization": "Bearer wrong-key-9"})
    api_lines = [json.loads(line) for line in (stack.logs / "api.log").read_text().splitlines() if line.startswith("{")]
    requests = [e for e in api_lines if e.get("route") == "/v1/cohorts/{cohort_id}/archive"]
    assert requests and requests[-1]["status"] == 200 and requests[-1]["cohort_id"] == cohort["id"]
    assert requests[-1]["tenant"] == "lab-d" and requests[-1]["method"] == "GET" and requests[-1]["seconds"] >= 0
    assert {"time", "level", "logger", "message", "worker"} <= set(requests[-1])
    worker_lines = [json.loads(line) for line in (stack.logs / "worker-0.log").read_text().splitlines()
                    if line.startswith("{")]  # fmt: skip
    stored = [e for e in worker_lines if e["message"] == "subject stored" and e.get("cohort_id") == cohort["id"]]
    assert {e["subject_id"] for e in stored} == {"sub-000001", "sub-000002"}
    assert all(e["tenant"] == "lab-d" and e["worker"] and e["seconds"] > 0 for e in stored)
    everything = "\n".join(path.read_text(errors="replace") for path in stack.logs.glob("*.log"))
    for secret in (*KEYS.values(), token, "wrong-key-9"):
        assert secret not in everything, "a secret reached the logs"
