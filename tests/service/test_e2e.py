"""The service end to end against real processes: Redis, SeaweedFS, a Celery worker and the API under
uvicorn, started by :class:`service.stack.LocalStack` on free loopback ports (no mocks, no eager Celery)."""

from __future__ import annotations

import csv
import io
import json
import signal
import time
import zipfile
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest

from service.client import BrainSynthClient, ClientError, verify_manifest
from service.stack import LocalStack
from tests.conftest import tiny_config
from tests.service.conftest import KEYS, LONG, MAX_ACTIVE, wait_for


def _niftis(client: BrainSynthClient, cohort_id: str) -> dict[str, bytes]:
    """Each stored subject's T1w bytes, fetched through its presigned URL."""
    out = {}
    for subject in client.subjects(cohort_id):
        if subject["status"] == "stored":
            out[subject["participant_id"]] = httpx.get(subject["url"], timeout=30).raise_for_status().content
    return out


@pytest.fixture(scope="module")
def reference_cohort(client: BrainSynthClient) -> str:
    """LONG, run undisturbed."""
    cohort = client.submit(LONG)
    assert client.wait(cohort["id"], timeout=300)["status"] == "succeeded"
    return cohort["id"]


@pytest.fixture(scope="module")
def reference(client: BrainSynthClient, reference_cohort: str) -> dict[str, bytes]:
    """The undisturbed bytes of LONG's subjects."""
    return _niftis(client, reference_cohort)


def test_a_cohort_goes_from_post_to_a_bids_archive(stack: LocalStack, client: BrainSynthClient, tmp_path: Path) -> None:
    body = {
        "model": "tiny",
        "name": "e2e cohort",
        "authors": ["A. Researcher", "B. Researcher"],
        "n_subjects": 3,
        "seed": 7,
        "covariates": {
            "age": {"min": 50, "max": 80},
            "sex": {"female_fraction": 0.5},
            "ventricular_volume_mm3": {"min": 15000, "max": 60000},
            "brain_volume_mm3": {"value": 1500000},
        },
        "sampler": {"name": "ddim", "steps": 10},
    }
    response = httpx.post(f"{stack.url}/v1/cohorts", json=body, headers={"Authorization": f"Bearer {KEYS['lab-a']}"})
    assert response.status_code == 202
    cohort = response.json()
    assert response.headers["Location"] == f"/v1/cohorts/{cohort['id']}"
    assert cohort["status"] in ("queued", "running") and cohort["progress"]["total"] == 3
    assert cohort["request"]["sampler"] == {"name": "ddim", "steps": 10}

    seen: list[int] = []
    final = client.wait(cohort["id"], on_progress=lambda s: seen.append(s["progress"]["done"]), timeout=120)
    assert final["status"] == "succeeded" and final["progress"] == {"done": 3, "total": 3, "measured": 0}
    assert seen == sorted(seen) and seen[-1] == 3

    dataset = client.download(cohort["id"], tmp_path)
    assert verify_manifest(dataset) == 3 * 2 + 5  # subjects' NIfTI + sidecar, 4 dataset files + .bidsignore
    description = json.loads((dataset / "dataset_description.json").read_text())
    assert description["Name"] == "e2e cohort" and description["DatasetType"] == "raw"
    assert description["Authors"] == ["A. Researcher", "B. Researcher"]
    with open(dataset / "participants.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert [r["participant_id"] for r in rows] == ["sub-000001", "sub-000002", "sub-000003"]
    assert {(r["sampler"], r["steps"]) for r in rows} == {("ddim", "10")}  # how to regenerate them
    assert {r["sex"] for r in rows} <= {"F", "M"} and sorted(r["sex"] for r in rows).count("F") == 2
    assert all(50 <= float(r["age"]) <= 80 and float(r["brain_volume_mm3"]) == 1500000 for r in rows)
    config = tiny_config()
    image = nib.load(dataset / "sub-000001" / "anat" / "sub-000001_T1w.nii.gz")
    assert image.shape == config.image_shape
    np.testing.assert_allclose(image.affine, np.asarray(config.affine))

    stored = _niftis(client, cohort["id"])
    assert stored["sub-000002"] == (dataset / "sub-000002" / "anat" / "sub-000002_T1w.nii.gz").read_bytes()
    listed = client.list(page_size=100)["cohorts"]
    assert cohort["id"] in [c["id"] for c in listed]


def test_archive_is_a_valid_zip_with_stored_entries(
    client: BrainSynthClient, reference_cohort: str, reference: dict[str, bytes]
) -> None:
    cohort_id = reference_cohort
    archive = client.http.get(f"/v1/cohorts/{cohort_id}/archive").raise_for_status()
    with zipfile.ZipFile(io.BytesIO(archive.content)) as bundle:
        names = bundle.namelist()
        assert names[-1].endswith("/SHA256SUMS")
        nifti = [i for i in bundle.infolist() if i.filename.endswith(".nii.gz")]
        assert len(nifti) == 4 and all(i.compress_type == zipfile.ZIP_STORED for i in nifti)
        assert bundle.read(nifti[0].filename) == reference[nifti[0].filename.split("/")[1]]


def test_the_archive_has_a_length_an_etag_and_byte_ranges_for_resuming(
    client: BrainSynthClient, reference_cohort: str, tmp_path: Path
) -> None:
    """Content-Length, Accept-Ranges, ETag; HEAD; 206 for a range, 416 outside it; If-Range with another ETag
    gets the whole; and a download cut off mid-way resumes to the same bytes, `sha256sum -c` passing."""
    import subprocess

    url = f"/v1/cohorts/{reference_cohort}/archive"
    whole = client.http.get(url).raise_for_status()
    size, etag = len(whole.content), whole.headers["ETag"]
    assert whole.headers["Content-Length"] == str(size) and whole.headers["Accept-Ranges"] == "bytes"
    head = client.http.head(url)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(size) and head.content == b""
    assert head.headers["ETag"] == etag
    part = client.http.get(url, headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == whole.content[:100]
    assert part.headers["Content-Range"] == f"bytes 0-99/{size}" and part.headers["Content-Length"] == "100"
    tail = client.http.get(url, headers={"Range": "bytes=-10", "If-Range": etag})
    assert tail.status_code == 206 and tail.content == whole.content[-10:]
    outside = client.http.get(url, headers={"Range": f"bytes={size}-"})
    assert outside.status_code == 416 and outside.headers["Content-Range"] == f"bytes */{size}"
    changed = client.http.get(url, headers={"Range": "bytes=0-99", "If-Range": '"another-version"'})
    assert changed.status_code == 200 and changed.content == whole.content
    # a download that broke off at some byte: the client asks for the rest only, and the dataset checks out
    out = tmp_path / "resumed"
    out.mkdir()
    (out / f"cohort-{reference_cohort}.zip.part").write_bytes(whole.content[: size // 3])
    (out / f"cohort-{reference_cohort}.zip.etag").write_text(etag)
    sizes: list[int] = []
    dataset = client.download(reference_cohort, out, on_total=sizes.append)
    assert sizes == [size]
    checked = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=dataset, capture_output=True, text=True)
    assert checked.returncode == 0 and checked.stdout.count(": OK") == len(
        whole.content and checked.stdout.splitlines()
    )


def test_the_archive_in_parts_is_whole_subjects_and_together_the_whole_dataset(
    client: BrainSynthClient, reference_cohort: str, tmp_path: Path
) -> None:
    """?part=i&parts=k: each part a valid ZIP of every dataset file and whole subjects, the same bytes on every
    request; the parts unzipped into one folder are the whole archive's files and `sha256sum -c` passes there."""
    import subprocess

    url = f"/v1/cohorts/{reference_cohort}/archive"
    with zipfile.ZipFile(io.BytesIO(client.http.get(url).raise_for_status().content)) as whole:
        every = {info.filename: whole.read(info) for info in whole.infolist()}
    dataset_files = {name for name in every if "/sub-" not in name}
    together: dict[str, bytes] = {}
    subjects_per_part = []
    for part in (1, 2, 3):
        response = client.http.get(url, params={"part": part, "parts": 3}).raise_for_status()
        assert response.headers["Content-Length"] == str(len(response.content))
        assert f"part-{part}-of-3.zip" in response.headers["Content-Disposition"]
        again = client.http.get(url, params={"part": part, "parts": 3}, headers={"Range": "bytes=10-"})
        assert again.status_code == 206 and again.content == response.content[10:]
        assert again.headers["ETag"] == response.headers["ETag"]
        with zipfile.ZipFile(io.BytesIO(response.content)) as bundle:
            assert bundle.testzip() is None
            names = bundle.namelist()
            assert names[-1].endswith("/SHA256SUMS") and dataset_files <= set(names)
            subjects = {name.split("/")[1] for name in names if "/sub-" in name}
            subjects_per_part.append(len(subjects))
            for name in names:
                together[name] = bundle.read(name)
                bundle.extract(name, tmp_path)
    assert sorted(subjects_per_part) == [1, 1, 2] and together == every
    checked = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path / f"cohort-{reference_cohort}",
                             capture_output=True, text=True)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for params, field in (({"part": 1}, "parts"), ({"parts": 2}, "part"), ({"part": 3, "parts": 2}, "part"),
                          ({"part": 1, "parts": 5}, "parts"), ({"part": 0, "parts": 2}, "part")):  # fmt: skip
        refused = client.http.get(url, params=params)
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["query", field], params


def test_cli_downloads_parts_into_one_folder_that_is_the_whole_dataset(
    stack: LocalStack, reference_cohort: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`brainsynth download --part I --parts K`: each part checks the files it brought; the K parts in one
    folder pass the whole SHA256SUMS; a --part without --parts is exit 2 before any request."""
    from brainsynth.cli import main
    from service.client import verify_manifest

    common = ["--url", stack.url, "--api-key", KEYS["lab-a"]]
    for part in (2, 1):
        assert main(["download", reference_cohort, "--out", str(tmp_path), "--part", str(part), "--parts", "2",
                     *common]) == 0  # fmt: skip
        dataset = Path(capsys.readouterr().out.strip())
        subjects = sorted(p.name for p in dataset.glob("sub-*"))
        assert subjects == (["sub-000003", "sub-000004"] if part == 2 else [f"sub-00000{i}" for i in range(1, 5)])
    assert verify_manifest(dataset) == len((dataset / "SHA256SUMS").read_text().splitlines())
    assert not list(tmp_path.glob("*.zip*"))
    assert main(["download", reference_cohort, "--out", str(tmp_path), "--part", "1", *common]) == 2
    assert "--part and --parts go together" in capsys.readouterr().err


def test_the_file_manifest_gives_every_file_a_working_presigned_url(
    client: BrainSynthClient, reference_cohort: str
) -> None:
    """/archive/manifest: one JSON line per file in the archive's order, each URL giving that file's bytes."""
    url = f"/v1/cohorts/{reference_cohort}/archive"
    with zipfile.ZipFile(io.BytesIO(client.http.get(url).raise_for_status().content)) as whole:
        every = {info.filename.split("/", 1)[1]: whole.read(info) for info in whole.infolist()}
    response = client.http.get(url + "/manifest").raise_for_status()
    assert response.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["path"] for line in lines] == list(every)
    for line in lines:
        fetched = httpx.get(line["url"], timeout=30).raise_for_status().content
        assert fetched == every[line["path"]] and line["size"] == len(fetched)
        assert line["expires_in_s"] == 86_400


def test_every_bad_request_is_a_4xx_naming_the_field(stack: LocalStack, client: BrainSynthClient) -> None:
    before = len(client.list(page_size=100)["cohorts"])
    cases = [
        ({"model": "tiny", "n_subjects": 2, "covariates": {"age": {"min": 10, "max": 80}}}, ["covariates", "age"]),
        ({"model": "tiny", "n_subjects": 51}, ["n_subjects"]),
        ({"model": "nope", "n_subjects": 2}, ["model"]),
        ({"model": "tiny", "n_subjects": 2, "sampler": {"name": "ddpm", "steps": 50}}, ["sampler", "steps"]),
        ({"model": "tiny", "n_subjects": 2, "sampler": {"name": "euler"}}, ["sampler", "name"]),
        ({"model": "tiny", "n_subjects": 0}, ["n_subjects"]),
        ({"model": "tiny", "n_subjects": 2, "covariates": {"sex": {"female_fraction": 1.5}}},
         ["covariates", "sex", "female_fraction"]),
        ({"model": "tiny", "subjects": [{"age": 60, "sex": "X", "ventricular_volume_mm3": 3e4,
                                         "brain_volume_mm3": 1.5e6}]}, ["subjects", 0, "sex"]),
        ({"model": "tiny", "subjects": [{"age": 60, "sex": "F", "ventricular_volume_mm3": 9e5,
                                         "brain_volume_mm3": 1.5e6}]}, ["subjects", 0, "ventricular_volume_mm3"]),
        ({"model": "tiny", "n_subjects": 2, "colour": "blue"}, ["colour"]),
    ]  # fmt: skip
    for body, field in cases:
        response = client.http.post("/v1/cohorts", json=body)
        assert response.status_code == 422, (body, response.text)
        assert "--" not in response.text, response.text  # the API names its fields, never CLI flags
        locations = [item["loc"][1:] for item in response.json()["detail"]]
        assert any(loc[: len(field)] == field for loc in locations), (field, response.json())
    json_type = {"Content-Type": "application/json"}
    assert client.http.post("/v1/cohorts", content=b"{not json", headers=json_type).status_code == 422
    big = {"model": "tiny", "name": "x" * 30000, "n_subjects": 1}
    assert client.http.post("/v1/cohorts", json=big).status_code == 413
    assert len(client.list(page_size=100)["cohorts"]) == before  # nothing was queued


def test_auth_and_tenant_isolation_on_every_route(stack: LocalStack, client: BrainSynthClient) -> None:
    cohort = client.submit({"model": "tiny", "n_subjects": 1, "seed": 3, "sampler": {"steps": 5}})
    client.wait(cohort["id"], timeout=120)
    routes = [("GET", ""), ("GET", "/events"), ("GET", "/subjects"), ("GET", "/archive"), ("POST", "/cancel"),
              ("POST", "/link-token"), ("GET", "/subjects/sub-000001/preview.png"),
              ("GET", "/subjects/sub-000001/preview-axial.png"), ("DELETE", "")]  # fmt: skip
    anonymous = httpx.Client(base_url=stack.url)
    other = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {KEYS['lab-b']}"})
    wrong = httpx.Client(base_url=stack.url, headers={"Authorization": "Bearer not-a-key"})
    for method, suffix in routes:
        path = f"/v1/cohorts/{cohort['id']}{suffix}"
        assert anonymous.request(method, path).status_code == 401
        assert wrong.request(method, path).status_code == 401
        assert other.request(method, path).status_code == 404, (method, path)
    for method, path in (("GET", "/v1/cohorts"), ("GET", "/v1/models"), ("POST", "/v1/cohorts")):
        assert anonymous.request(method, path).status_code == 401
    assert cohort["id"] not in [c["id"] for c in other.get("/v1/cohorts").json()["cohorts"]]
    assert client.status(cohort["id"])["status"] == "succeeded"  # lab-b's cancel/delete changed nothing
    assert anonymous.get("/healthz").status_code == 200
    ready = anonymous.get("/readyz").json()
    assert ready["ready"] is True and ready["workers"] >= 1
    models = {m["name"]: m for m in client.models()}
    assert models["tiny"]["ready"] and models["tiny"]["conditioning"]["age"]["min"] == 44.0


def test_idempotency_key_returns_the_same_cohort(client: BrainSynthClient) -> None:
    body = {"model": "tiny", "n_subjects": 1, "seed": 5, "sampler": {"steps": 5}}
    first = client.submit(body, idempotency_key="retry-me")
    again = client.submit(body, idempotency_key="retry-me")
    assert again["id"] == first["id"]
    ids = [c["id"] for c in client.list(page_size=100)["cohorts"]]
    assert ids.count(first["id"]) == 1
    with pytest.raises(ClientError, match="Idempotency-Key") as info:
        client.submit({**body, "seed": 6}, idempotency_key="retry-me")
    assert info.value.status_code == 422
    client.wait(first["id"], timeout=120)


def test_cancel_keeps_finished_subjects_and_delete_removes_everything(stack: LocalStack) -> None:
    with BrainSynthClient(stack.url, KEYS["lab-c"]) as c:
        cohort = c.submit({**LONG, "n_subjects": 6, "seed": 99})
        wait_for(lambda: c.status(cohort["id"])["progress"]["done"] >= 1, what="a first subject")
        canceled = c.cancel(cohort["id"])
        assert canceled["status"] == "canceled"
        assert c.cancel(cohort["id"])["status"] == "canceled"  # idempotent
        wait_for(lambda: c.http.get(f"/v1/cohorts/{cohort['id']}/archive").status_code == 200, what="finalisation")
        done = c.status(cohort["id"])["progress"]["done"]
        assert 1 <= done < 6
        subjects = c.subjects(cohort["id"])
        assert sum(s["status"] == "stored" for s in subjects) == done
        assert sum(s["status"] == "not_run" for s in subjects) == 6 - done
        with zipfile.ZipFile(io.BytesIO(c.http.get(f"/v1/cohorts/{cohort['id']}/archive").content)) as bundle:
            tsv = bundle.read(f"cohort-{cohort['id']}/participants.tsv").decode()
        assert len(tsv.splitlines()) == 1 + done
        assert c.http.delete(f"/v1/cohorts/{cohort['id']}").status_code == 204
        assert c.http.get(f"/v1/cohorts/{cohort['id']}").status_code == 404
        from jobs.storage import ObjectStore

        s3 = stack.s3
        assert s3 is not None
        store = ObjectStore(s3.endpoint, s3.access_key, s3.secret_key, "brainsynth")
        assert store.list_keys(f"tenants/lab-c/cohorts/{cohort['id']}/") == []


def test_too_many_active_cohorts_is_429(stack: LocalStack) -> None:
    with BrainSynthClient(stack.url, KEYS["lab-b"]) as c:
        ids = [c.submit({**LONG, "seed": 500 + i})["id"] for i in range(MAX_ACTIVE)]
        response = c.http.post("/v1/cohorts", json=LONG)
        assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0
        for cohort_id in ids:
            c.cancel(cohort_id)
        assert c.http.post("/v1/cohorts", json={**LONG, "n_subjects": 1, "sampler": {"steps": 2}}).status_code == 202


def test_a_worker_killed_mid_cohort_changes_nothing(
    stack: LocalStack, client: BrainSynthClient, reference: dict[str, bytes]
) -> None:
    cohort = client.submit(LONG)
    wait_for(lambda: client.status(cohort["id"])["progress"]["done"] >= 2, what="the first task")
    worker = stack.worker_processes[0]
    worker.send_signal(signal.SIGKILL)  # mid-cohort, most likely mid-subject
    worker.wait(10)
    assert client.status(cohort["id"])["progress"]["done"] < 4
    stack.start_worker(0)
    final = client.wait(cohort["id"], timeout=300)
    assert final["status"] == "succeeded" and final["progress"] == {"done": 4, "total": 4, "measured": 0}
    assert _niftis(client, cohort["id"]) == reference  # every subject once, with the undisturbed bytes


def test_redis_restarted_mid_cohort_loses_nothing(
    stack: LocalStack, client: BrainSynthClient, reference: dict[str, bytes]
) -> None:
    cohort = client.submit(LONG)
    wait_for(lambda: client.status(cohort["id"])["progress"]["done"] >= 1, what="a first subject")
    assert stack.redis is not None
    port, redis_dir = stack.redis.port, stack.data_dir / "redis"
    stack.redis.stop()
    time.sleep(1.0)
    from service.localstack import start_redis

    stack.redis = start_redis(redis_dir, port=port)  # same AOF directory and port
    final = client.wait(cohort["id"], timeout=300)
    assert final["status"] == "succeeded" and final["progress"]["done"] == 4
    assert _niftis(client, cohort["id"]) == reference


def test_storage_down_for_seconds_is_retried(
    stack: LocalStack, client: BrainSynthClient, reference: dict[str, bytes]
) -> None:
    cohort = client.submit(LONG)
    wait_for(lambda: client.status(cohort["id"])["progress"]["done"] >= 1, what="a first subject")
    assert stack.s3 is not None
    s3 = stack.s3
    s3.stop()
    time.sleep(3.0)
    from service.localstack import start_s3

    stack.s3 = start_s3(stack.data_dir / "s3", s3.access_key, s3.secret_key, port_base=s3.port_base)
    final = client.wait(cohort["id"], timeout=300)
    assert final["status"] == "succeeded" and final["progress"]["done"] == 4
    assert _niftis(client, cohort["id"]) == reference


def test_a_cohort_record_lost_from_redis_is_rebuilt_from_storage(stack: LocalStack, client: BrainSynthClient) -> None:
    cohort = client.submit({"model": "tiny", "n_subjects": 2, "seed": 8, "sampler": {"steps": 5}})
    client.wait(cohort["id"], timeout=120)
    import redis

    broker = redis.Redis.from_url(stack.redis.url)  # type: ignore[union-attr]
    assert broker.delete(f"brainsynth:cohort:{cohort['id']}", f"brainsynth:cohort:{cohort['id']}:done") == 2
    status = client.status(cohort["id"])
    assert status["status"] == "succeeded" and status["progress"] == {"done": 2, "total": 2, "measured": 0}


def test_cli_submit_wait_status_download(stack: LocalStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from brainsynth.cli import main

    common = ["--url", stack.url, "--api-key", KEYS["lab-a"]]
    assert main(["submit", "--model", "tiny", "--n", "2", "--seed", "4", "--age", "70", "--sex", "F",
                 "--steps", "5", "--wait", *common]) == 0  # fmt: skip
    cohort_id = capsys.readouterr().out.splitlines()[0]
    assert main(["status", cohort_id, "--json", *common]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["status"] == "succeeded"
    assert status["request"]["covariates"]["age"] == {"value": 70.0, "min": None, "max": None}
    assert main(["download", cohort_id, "--out", str(tmp_path), *common]) == 0
    dataset = Path(capsys.readouterr().out.strip())
    rows = (dataset / "participants.tsv").read_text().splitlines()[1:]
    assert [row.split("\t")[2] for row in rows] == ["F", "F"]
    assert main(["subjects", cohort_id, *common]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].startswith("participant_id") and [line.split()[0] for line in listed[1:]] == [
        "sub-000001", "sub-000002"
    ]  # fmt: skip
    assert main(["list", "--limit", "3", *common]) == 0
    assert cohort_id in capsys.readouterr().out
    assert main(["delete", cohort_id, *common]) == 0
    assert f"deleted {cohort_id}" in capsys.readouterr().out
    assert main(["status", cohort_id, *common]) == 1
    capsys.readouterr()
    assert main(["status", "0" * 32, *common]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["status", cohort_id, "--url", stack.url, "--api-key", "wrong"]) == 1
    assert "401" in capsys.readouterr().err


def test_cli_names_what_the_server_refuses_by_its_flags_with_exit_2(
    stack: LocalStack, reference_cohort: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server's 422s (the model's range, the server's limit) come back as flags and exit 2, and
    `brainsynth subjects ID | head` ends quietly (it said "error: [Errno 32] Broken pipe" and exited 1)."""
    import subprocess
    import sys

    from brainsynth.cli import main

    common = ["--url", stack.url, "--api-key", KEYS["lab-a"]]
    assert main(["submit", "--model", "tiny", "--n", "2", "--seed", "1", "--age", "30", *common]) == 2
    stderr = capsys.readouterr().err
    assert "--age/--age-range: age: 30.0 years is outside the training range 44-82 years" in stderr
    assert "pass --extrapolate" in stderr and "body" not in stderr
    assert main(["submit", "--model", "tiny", "--n", "60", "--seed", "1", *common]) == 2
    assert "--n: must be between 1 and 50 subjects on this server, got 60" in capsys.readouterr().err
    command = [sys.executable, "-m", "brainsynth.cli", "subjects", reference_cohort, *common]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # `| head` that has read enough
    assert process.wait(timeout=60) == 0 and process.stderr.read() == b""


def test_a_model_registered_while_the_stack_runs_is_served_at_once(
    stack: LocalStack, client: BrainSynthClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`brainsynth models register DIR` into the server's registry: no restart of the API or workers."""
    from brainsynth.cli import main as models_main
    from tests.conftest import make_model_dir

    monkeypatch.setenv("BRAINSYNTH_MODELS_DIR", stack.settings["BRAINSYNTH_MODELS_DIR"])
    assert models_main(["models", "register", str(make_model_dir(tmp_path / "trained", seed=5)), "--name",
                        "lab-model"]) == 0  # fmt: skip
    assert {m["name"]: m["ready"] for m in client.models()}["lab-model"] is True
    cohort = client.submit({"model": "lab-model", "n_subjects": 1, "seed": 2, "sampler": {"steps": 3}})
    assert client.wait(cohort["id"], timeout=120)["status"] == "succeeded"
    dataset = client.download(cohort["id"], tmp_path / "out")
    generated_by = json.loads((dataset / "dataset_description.json").read_text())["GeneratedBy"][0]
    assert generated_by["ModelName"] == "lab-model"


def test_link_tokens_open_one_cohorts_streams_and_previews_are_cached_pngs(
    stack: LocalStack, client: BrainSynthClient
) -> None:
    """A link token (for EventSource, <img>, download links) opens its own cohort's events, previews and
    archive, nothing else; previews are PNGs, stored for every subject, outside the BIDS archive."""
    ours = client.submit({"model": "tiny", "n_subjects": 2, "seed": 8, "sampler": {"steps": 4}})
    theirs = client.submit({"model": "tiny", "n_subjects": 1, "seed": 9, "sampler": {"steps": 4}})
    for cohort in (ours, theirs):
        assert client.wait(cohort["id"], timeout=120)["status"] == "succeeded"
    issued = client.http.post(f"/v1/cohorts/{ours['id']}/link-token")
    assert issued.status_code == 200
    token = issued.json()["token"]
    assert issued.json()["expires_in_s"] == 600 and KEYS["lab-a"] not in token
    anonymous = httpx.Client(base_url=stack.url)
    base = f"/v1/cohorts/{ours['id']}"
    for suffix in ("/events", "/archive", "/subjects/sub-000002/preview.png", "/subjects/sub-000002/preview-axial.png"):
        assert anonymous.get(base + suffix, params={"token": token}).status_code == 200, suffix
        assert anonymous.get(base + suffix, params={"token": token[:-2] + "xx"}).status_code == 401, suffix
    # the token opens nothing else: not the cohort's other routes, not another cohort of the same tenant
    assert anonymous.get(base, params={"token": token}).status_code == 401
    assert anonymous.get(base + "/subjects", params={"token": token}).status_code == 401
    assert anonymous.delete(base, params={"token": token}).status_code == 401
    assert anonymous.get(f"/v1/cohorts/{theirs['id']}/archive", params={"token": token}).status_code == 401

    preview = client.http.get(base + "/subjects/sub-000001/preview.png")
    assert preview.headers["content-type"] == "image/png" and preview.content.startswith(b"\x89PNG")
    assert preview.headers["cache-control"] == "private, max-age=86400, immutable"
    again = client.http.get(
        base + "/subjects/sub-000001/preview.png", headers={"If-None-Match": preview.headers["etag"]}
    )
    assert again.status_code == 304 and again.content == b""
    for missing in ("sub-000009", "sub-1", "..%2Fcohort.json"):
        assert client.http.get(f"{base}/subjects/{missing}/preview.png").status_code == 404, missing
    with zipfile.ZipFile(io.BytesIO(client.http.get(base + "/archive").content)) as archive:
        assert not [name for name in archive.namelist() if "preview" in name or name.endswith(".png")]


def test_a_cohort_deleted_while_a_request_reads_it_is_a_404_not_a_500(
    stack: LocalStack, client: BrainSynthClient
) -> None:
    """The race schemathesis found: the Redis record still there, the stored request already gone."""
    from jobs.state import cohort_json_key
    from jobs.storage import ObjectStore

    cohort = client.submit({"model": "tiny", "n_subjects": 1, "seed": 31, "sampler": {"steps": 3}})
    assert client.wait(cohort["id"], timeout=120)["status"] == "succeeded"
    assert stack.s3 is not None
    store = ObjectStore(stack.s3.endpoint, stack.s3.access_key, stack.s3.secret_key, "brainsynth")
    store.client.remove_object(store.bucket, cohort_json_key("lab-a", cohort["id"]))
    response = client.http.get(f"/v1/cohorts/{cohort['id']}/subjects")
    assert response.status_code == 404 and cohort["id"] in response.json()["detail"]


def test_an_unmeasured_cohort_has_no_qc_report(client: BrainSynthClient, reference_cohort: str) -> None:
    answer = client.http.get(f"/v1/cohorts/{reference_cohort}/qc")
    assert answer.status_code == 404 and "was not measured (qc none)" in answer.json()["detail"]


def test_a_cohort_like_a_reference_table_carries_its_report_in_the_archive(
    client: BrainSynthClient, tmp_path: Path
) -> None:
    from models.cohort.like import ReferenceTable
    from tests.models.cohort.test_like import reference_rows

    rows = ReferenceTable.from_rows(reference_rows(40)).rows()
    cohort = client.submit({"model": "tiny", "n_subjects": 2, "seed": 3, "like": {"rows": rows},
                            "sampler": {"name": "ddim", "steps": 3}})  # fmt: skip
    assert client.wait(cohort["id"], timeout=300)["status"] == "succeeded"
    dataset = client.download(cohort["id"], tmp_path)
    report = json.loads((dataset / "like_report.json").read_text())
    assert report == client.status(cohort["id"])["request"]["like"]["report"] and report["reference_rows"] == 40
    assert "like_report.json" in (dataset / ".bidsignore").read_text().split()
    assert verify_manifest(dataset) == len((dataset / "SHA256SUMS").read_text().splitlines())


def test_a_demo_cohort_is_measured_by_the_workers_as_locally(client: BrainSynthClient, tmp_path: Path) -> None:
    """qc defaults to the demo's volume probe: the worker measures each subject before its sidecar, and the
    numbers are those `brainsynth sample` measures on the same subjects (same batch size)."""
    from brainsynth.cli import main

    cohort = client.submit({"model": "demo", "n_subjects": 2, "seed": 9, "sampler": {"name": "ddim", "steps": 3},
                            "qc_tolerance": 0.3})  # fmt: skip
    assert cohort["request"]["qc"] == "probe"
    assert client.wait(cohort["id"], timeout=300)["status"] == "succeeded"
    dataset = client.download(cohort["id"], tmp_path / "served")
    served = list(csv.DictReader((dataset / "participants.tsv").read_text().splitlines(), delimiter="\t"))
    assert {row["measure"] for row in served} == {"probe"}
    report = json.loads((dataset / "qc_report.json").read_text())
    assert report["measured"] == 2 and report["tolerance"] == [0.3] and (dataset / "qc_scatter.png").is_file()
    base = f"/v1/cohorts/{cohort['id']}"
    assert client.http.get(base + "/qc").json() == report
    scatter = client.http.get(base + "/qc.png")
    assert (
        scatter.headers["content-type"] == "image/png" and scatter.content == (dataset / "qc_scatter.png").read_bytes()
    )
    local = tmp_path / "local"
    assert main(["sample", "--model", "demo", "--subjects", str(dataset / "participants.tsv"), "--batch-size", "2",
                 "--qc-tolerance", "0.3", "--out", str(local)]) == 0  # fmt: skip
    again = list(csv.DictReader((local / "participants.tsv").read_text().splitlines(), delimiter="\t"))
    columns = ("measured_ventricular_volume_mm3", "measured_brain_volume_mm3", "qc")
    assert [[row[c] for c in columns] for row in again] == [[row[c] for c in columns] for row in served]


def test_the_workers_regenerate_subjects_outside_tolerance_as_locally(client: BrainSynthClient, tmp_path: Path) -> None:
    """max_attempts in the service: the worker samples a subject measured outside tolerance again alone with its
    next attempt's seed; the archive's attempts, seeds, measurements and image bytes are `brainsynth sample`'s."""
    from brainsynth.cli import main

    body = {"model": "demo", "n_subjects": 2, "seed": 4, "sampler": {"name": "ddim", "steps": 3}, "qc": "probe",
            "qc_tolerance": 0.05, "max_attempts": 3}  # fmt: skip
    cohort = client.submit(body)
    assert client.wait(cohort["id"], timeout=300)["status"] == "succeeded"
    dataset = client.download(cohort["id"], tmp_path / "served")
    local = tmp_path / "local"
    assert main(["sample", "--model", "demo", "--n", "2", "--seed", "4", "--steps", "3", "--batch-size", "2",
                 "--qc-tolerance", "0.05", "--max-attempts", "3", "--out", str(local)]) == 0  # fmt: skip
    served = (dataset / "participants.tsv").read_text()
    assert served == (local / "participants.tsv").read_text()
    assert any(row["attempt"] != "1" for row in csv.DictReader(served.splitlines(), delimiter="\t"))
    for pid in ("sub-000001", "sub-000002"):
        path = f"{pid}/anat/{pid}_T1w.nii.gz"
        assert (dataset / path).read_bytes() == (local / path).read_bytes()


def test_a_guided_cohort_is_sampled_and_recorded_as_locally(
    stack: LocalStack, client: BrainSynthClient, tmp_path: Path
) -> None:
    """Classifier-free guidance in the service: the request's scale reaches the worker, participants.tsv and
    the sidecars record it, and the images are `brainsynth sample --guidance`'s, byte for byte."""
    from brainsynth.cli import main

    body = {"model": "tiny-cfg", "n_subjects": 2, "seed": 8, "sampler": {"name": "ddim", "steps": 3}, "guidance": 2.5}
    cohort = client.submit(body)
    assert cohort["request"]["guidance"] == 2.5
    assert client.wait(cohort["id"], timeout=300)["status"] == "succeeded"
    dataset = client.download(cohort["id"], tmp_path / "served")
    rows = list(csv.DictReader((dataset / "participants.tsv").read_text().splitlines(), delimiter="\t"))
    assert {row["guidance"] for row in rows} == {"2.5"}
    local = tmp_path / "local"
    model_dir = stack.settings["BRAINSYNTH_MODELS_DIR"] + "/tiny-cfg"
    assert main(["sample", "--model", model_dir, "--n", "2", "--seed", "8", "--steps", "3", "--batch-size", "2",
                 "--guidance", "2.5", "--out", str(local)]) == 0  # fmt: skip
    for pid in ("sub-000001", "sub-000002"):
        path = f"{pid}/anat/{pid}_T1w.nii.gz"
        assert (dataset / path).read_bytes() == (local / path).read_bytes()
    assert (local / "participants.tsv").read_text() == (dataset / "participants.tsv").read_text()
