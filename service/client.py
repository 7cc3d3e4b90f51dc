"""A small Python client of the BrainSynth HTTP API (HTTP only: no torch, no Celery, no S3 credentials).

client = BrainSynthClient("http://127.0.0.1:8000", api_key="...")
cohort = client.submit({"model": "demo", "n_subjects": 4, "seed": 7})
client.wait(cohort["id"])
client.download(cohort["id"], "out/cohort")
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from models.errors import BrainSynthError

FINAL_STATES = frozenset({"succeeded", "failed", "canceled"})


class ClientError(BrainSynthError, RuntimeError):
    """The API refused a request or could not be reached; the message says why and what to do."""

    def __init__(
        self, message: str, status_code: int | None = None, field_errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        #: A 422's invalid fields (``loc``, ``msg``), for callers that name them their own way (the CLI: flags).
        self.field_errors = field_errors


def _detail(response: httpx.Response) -> str | list[dict[str, Any]]:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return response.text[:500] or response.reason_phrase
    if isinstance(detail, list) and all(isinstance(item, dict) for item in detail):
        return detail
    return str(detail)


def _describe(detail: str | list[dict[str, Any]]) -> str:
    if isinstance(detail, list):
        return "; ".join(f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg')}" for item in detail)
    return detail


class BrainSynthClient:
    """Cohort jobs over HTTP: submit, status, watch, download, cancel, delete."""

    def __init__(self, url: str, api_key: str, *, timeout: float = 30.0) -> None:
        if not api_key:
            raise ClientError("an API key is required: pass --api-key or set BRAINSYNTH_API_KEY")
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout, follow_redirects=False
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> BrainSynthClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            message = f"cannot reach the BrainSynth API at {self.url} ({err}): is `brainsynth up` running?"
            raise ClientError(message) from err
        if response.status_code >= 400:
            detail = _detail(response)
            raise ClientError(
                f"HTTP {response.status_code}: {_describe(detail)}",
                response.status_code,
                detail if isinstance(detail, list) and response.status_code == 422 else None,
            )
        return response

    def models(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/models").json()["models"]

    def submit(self, request: dict[str, Any], *, idempotency_key: str | None = None) -> dict[str, Any]:
        """Queue a cohort; returns its status (``id``, ``status``, ``progress``, ...)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._request("POST", "/v1/cohorts", json=request, headers=headers).json()

    def status(self, cohort_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/cohorts/{cohort_id}").json()

    def list(self, page_size: int = 20, page_token: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"page_size": page_size}
        if page_token:
            params["page_token"] = page_token
        return self._request("GET", "/v1/cohorts", params=params).json()

    def subjects(self, cohort_id: str) -> list[dict[str, Any]]:
        """Every subject of the cohort, page after page."""
        out: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            params = {"page_size": 100, **({"page_token": token} if token else {})}
            page = self._request("GET", f"/v1/cohorts/{cohort_id}/subjects", params=params).json()
            out += page["subjects"]
            token = page.get("next_page_token")
            if not token:
                return out

    def cancel(self, cohort_id: str) -> dict[str, Any]:
        return self._request("POST", f"/v1/cohorts/{cohort_id}/cancel").json()

    def delete(self, cohort_id: str) -> None:
        self._request("DELETE", f"/v1/cohorts/{cohort_id}")

    def events(self, cohort_id: str) -> Iterator[dict[str, Any]]:
        """Status updates from the Server-Sent Events stream until a final state."""
        try:
            with self.http.stream("GET", f"/v1/cohorts/{cohort_id}/events", timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ClientError(f"HTTP {response.status_code}: {_describe(response)}", response.status_code)
                event, data = "", []
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif not line and data:
                        if event == "status":
                            yield json.loads("\n".join(data))
                        event, data = "", []
        except httpx.HTTPError as err:
            raise ClientError(f"the event stream from {self.url} broke off ({err})") from err

    def wait(
        self,
        cohort_id: str,
        *,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Watch the cohort until it is final (events, falling back to polling); returns the final status."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def is_final(status: dict[str, Any]) -> bool:
            if on_progress:
                on_progress(status)
            if status["status"] in FINAL_STATES:
                return True
            if deadline is not None and time.monotonic() > deadline:
                raise ClientError(f"cohort {cohort_id} did not finish within {timeout:.0f} s")
            return False

        while True:
            try:
                for status in self.events(cohort_id):
                    if is_final(status):
                        return status
            except ClientError as err:
                if err.status_code is not None:
                    raise
            status = self.status(cohort_id)  # the stream ended or broke: poll, then watch again
            if is_final(status):
                return status
            time.sleep(1.0)

    def download(
        self,
        cohort_id: str,
        out_dir: str | Path,
        *,
        on_bytes: Callable[[int], None] | None = None,
        extract: bool = True,
        on_total: Callable[[int], None] | None = None,
        part: tuple[int, int] | None = None,
    ) -> Path:
        """Stream the cohort's ZIP to ``out_dir/cohort-ID.zip``; with ``extract``, unpack it into ``out_dir``,
        check every file against the dataset's SHA256SUMS and return the dataset folder.

        With ``part=(i, k)``, part i of k (``cohort-ID-part-i-of-k.zip``: the dataset files and a k-th of the
        subjects); the k parts unpacked into one ``out_dir`` make the whole dataset, so each part's check is of
        the files it brought (the whole SHA256SUMS holds once all are there).

        A download that broke off leaves ``cohort-ID.zip.part`` (and the archive's ETag beside it): the next
        call asks only for the missing bytes (``Range``, with ``If-Range`` so a cohort that changed meanwhile
        comes whole again instead of being spliced). ``on_total`` gets the archive's size once it is known."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        suffix = f"-part-{part[0]}-of-{part[1]}" if part else ""
        archive = out_dir / f"cohort-{cohort_id}{suffix}.zip"
        params = {"part": part[0], "parts": part[1]} if part else None
        partial = archive.with_suffix(".zip.part")
        tag_file = archive.with_suffix(".zip.etag")
        headers = {}
        if partial.is_file() and tag_file.is_file() and partial.stat().st_size > 0:
            headers = {"Range": f"bytes={partial.stat().st_size}-", "If-Range": tag_file.read_text()}
        try:
            url = f"/v1/cohorts/{cohort_id}/archive"
            with self.http.stream("GET", url, params=params, headers=headers, timeout=None) as response:
                if response.status_code == 416:  # the part is whole already
                    response.read()
                elif response.status_code >= 400:
                    response.read()
                    raise ClientError(f"HTTP {response.status_code}: {_describe(response)}", response.status_code)
                else:
                    if etag := response.headers.get("ETag"):
                        tag_file.write_text(etag)
                    resumed = response.status_code == 206
                    total = response.headers.get("Content-Range", "/").rpartition("/")[2] if resumed else (
                        response.headers.get("Content-Length"))  # fmt: skip
                    if on_total and total and total.isdigit():
                        on_total(int(total))
                    if resumed and on_bytes:
                        on_bytes(partial.stat().st_size)
                    with open(partial, "ab" if resumed else "wb") as sink:
                        for chunk in response.iter_bytes(1 << 20):
                            sink.write(chunk)
                            if on_bytes:
                                on_bytes(len(chunk))
        except httpx.HTTPError as err:
            raise ClientError(f"the download from {self.url} broke off ({err}): run it again to resume") from err
        partial.replace(archive)
        tag_file.unlink(missing_ok=True)
        if not extract:
            return archive
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(out_dir)
        dataset = out_dir / f"cohort-{cohort_id}"
        verify_manifest(dataset, missing_ok=part is not None)
        archive.unlink()
        return dataset


def verify_manifest(dataset: Path, missing_ok: bool = False) -> int:
    """Check every file listed in ``dataset/SHA256SUMS`` (with ``missing_ok``, those present: one part of the
    archive); returns how many were checked."""
    manifest = dataset / "SHA256SUMS"
    if not manifest.is_file():
        raise ClientError(f"{manifest} is missing: the archive is incomplete, download it again")
    checked = 0
    for line in manifest.read_text().splitlines():
        expected, relative = line.split("  ", 1)
        if missing_ok and not (dataset / relative).is_file():
            continue
        digest = hashlib.sha256((dataset / relative).read_bytes()).hexdigest()
        if digest != expected:
            raise ClientError(f"{relative} does not match its SHA256SUMS entry: download the cohort again")
        checked += 1
    return checked
