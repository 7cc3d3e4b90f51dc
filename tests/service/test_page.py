"""The web page in a real browser (Debian's Chromium driven by Playwright, never `playwright install`) against
the real local stack: sign in, a 2-subject demo cohort through the form, progress from the event stream,
previews, the archive download, and another tenant's cohort as not found. Screenshots go to
``out/artifacts/page/``."""

from __future__ import annotations

import io
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.client import BrainSynthClient
from service.stack import LocalStack
from tests.service.conftest import KEYS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / "out" / "artifacts" / "page"
#: As the infrastructure notes start Chromium here: no sandbox as root, no background network calls.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (make test installs it via apt)")

#: In the page: the image has loaded and is not blank (its pixels vary: a brain, not a flat fill).
IMAGE_IS_DRAWN = """img => {
  if (!img.complete || img.naturalWidth === 0) return false;
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const context = canvas.getContext('2d');
  context.drawImage(img, 0, 0);
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let low = 255, high = 0;
  for (let i = 0; i < data.length; i += 4) { low = Math.min(low, data[i]); high = Math.max(high, data[i]); }
  return high - low > 100;
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture()
def page(browser: object, stack: LocalStack) -> Iterator[object]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(base_url=stack.url, accept_downloads=True, viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.console_errors = []  # type: ignore[attr-defined]

    def on_console(message: object) -> None:
        # the API's own 401/422 answers are logged by the browser as failed loads: expected here, nothing else
        expected = any(f"status of {code} " in message.text for code in (401, 422))  # type: ignore[attr-defined]
        if message.type == "error" and not expected:  # type: ignore[attr-defined]
            opened.console_errors.append(message.text)  # type: ignore[attr-defined]

    opened.on("console", on_console)
    opened.on("pageerror", lambda err: opened.console_errors.append(str(err)))  # type: ignore[attr-defined]
    yield opened
    context.close()


def _sign_in(page: object, key: str) -> None:
    page.goto("/")
    page.fill("#api-key", key)
    page.click("#sign-in-form button[type=submit]")
    page.wait_for_selector("#nav:not([hidden])")


def test_a_researcher_designs_watches_previews_and_downloads_a_cohort(page: object, stack: LocalStack) -> None:
    page.goto("/")
    page.fill("#api-key", "not-a-key")
    page.click("#sign-in-form button[type=submit]")
    page.wait_for_selector("#sign-in-error:has-text('not accepted')")
    page.screenshot(path=ARTIFACTS / "1-sign-in.png")
    _sign_in(page, KEYS["lab-h"])

    page.click("nav a[href='#/new']")
    page.wait_for_selector("#cohort-form")
    page.select_option("#model", "demo")
    age_range = page.get_attribute("input[name='age.min']", "min"), page.get_attribute("input[name='age.max']", "max")
    assert age_range == ("44", "82")  # the demo model's documented range, from GET /v1/models
    assert page.get_attribute("#guidance", "placeholder") == "3"  # the demo's default guidance (0.4.2: 3), offered
    page.fill("#n_subjects", "2")
    page.fill("#seed", "7")
    page.fill("#name", "browser test cohort")
    page.fill("input[name='age.min']", "30")  # below the range: the API's 422 shows beside the age field
    page.click("#submit-cohort")
    age_error = page.wait_for_selector("[data-error-for='covariates.age']:not(:empty)")
    assert "age" in age_error.inner_text() and "44" in age_error.inner_text()
    page.screenshot(path=ARTIFACTS / "2-field-error.png", full_page=True)

    page.fill("input[name='age.min']", "60")
    page.fill("input[name='age.max']", "70")
    page.fill("#steps", "20")
    page.click("#submit-cohort")
    page.wait_for_url("**/#/cohorts/*")
    cohort_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("#cohort-counts:has-text('2/2 subjects (100 %)')", timeout=120_000)
    page.wait_for_selector("#cohort-status:has-text('succeeded')")
    for selector in ("#subjects figure img", "#strip img"):
        page.wait_for_function(f"document.querySelectorAll('{selector}').length === 2", timeout=30_000)
        for image in page.query_selector_all(selector):
            page.wait_for_function(IMAGE_IS_DRAWN, arg=image, timeout=30_000)
    with BrainSynthClient(stack.url, KEYS["lab-h"]) as client:
        seeds = {s["participant_id"]: str(s["seed"]) for s in client.subjects(cohort_id)}
    for participant, seed in seeds.items():  # exact 63-bit seeds (a JavaScript number would round them)
        assert seed in page.inner_text(f"[data-participant='{participant}'] dl"), (participant, seed)
    evidence = page.wait_for_selector("#qc-report", timeout=30_000)  # the demo is measured by its probe
    assert "ventricles" in evidence.inner_text() and "Pearson r" in evidence.inner_text()
    assert "of 2 subjects within 25 %" in page.inner_text("#qc-acceptance")
    page.wait_for_function(IMAGE_IS_DRAWN, arg=page.query_selector("#qc-scatter"), timeout=30_000)
    page.screenshot(path=ARTIFACTS / "3-cohort.png", full_page=True)

    with page.expect_download() as download_info:
        page.click("#download")
    archive = zipfile.ZipFile(io.BytesIO(Path(download_info.value.path()).read_bytes()))
    names = archive.namelist()
    assert f"cohort-{cohort_id}/participants.tsv" in names
    assert sum(name.endswith("_T1w.nii.gz") for name in names) == 2
    previews = [name for name in names if name.endswith(".png") and not name.endswith("/qc_scatter.png")]
    assert previews == []  # previews stay out of the BIDS archive (the QC scatter plot is the cohort's)
    assert f"cohort-{cohort_id}/qc_report.json" in names  # the demo has a volume probe: measured by default

    page.click("nav a[href='#/cohorts']")
    row = page.wait_for_selector(f"tr[data-cohort='{cohort_id}']")
    assert "succeeded" in row.inner_text() and "browser test cohort" in row.inner_text()
    page.screenshot(path=ARTIFACTS / "4-list.png", full_page=True)
    assert page.console_errors == []  # type: ignore[attr-defined]  # no CSP violation, no script error


def test_another_tenants_cohort_is_not_found_in_the_page(page: object, stack: LocalStack) -> None:
    with BrainSynthClient(stack.url, KEYS["lab-i"]) as other:
        theirs = other.submit({"model": "demo", "n_subjects": 1, "seed": 3, "sampler": {"name": "ddim", "steps": 5}})
    _sign_in(page, KEYS["lab-h"])
    page.goto(f"/#/cohorts/{theirs['id']}")
    page.wait_for_selector("#not-found:has-text('Cohort not found')")
    page.screenshot(path=ARTIFACTS / "5-not-found.png")
    assert theirs["id"] not in page.inner_text("#view").split("Back to")[1]  # nothing of theirs is shown


def test_the_api_document_renders_offline_from_local_assets(page: object, stack: LocalStack) -> None:
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto("/docs")
    page.wait_for_selector(".swagger-ui .opblock-summary-path[data-path='/v1/cohorts']")
    page.screenshot(path=ARTIFACTS / "6-docs.png")
    assert requested and all(url.startswith(stack.url) for url in requested), requested
    assert page.console_errors == []  # type: ignore[attr-defined]


def test_a_seed_past_two_to_the_53_is_sent_exactly(page: object, stack: LocalStack) -> None:
    """A 63-bit seed copied from a cohort must reach the API digit for digit (Number() rounded it: another
    cohort, or a 422 past 2^63 - 1)."""
    seed = 2**63 - 3  # a JavaScript number would make it 9223372036854775808, past the API's maximum
    _sign_in(page, KEYS["lab-i"])
    page.click("nav a[href='#/new']")
    page.wait_for_selector("#cohort-form")
    page.select_option("#model", "demo")
    page.fill("#n_subjects", "1")
    page.fill("#seed", str(seed))
    page.fill("#steps", "2")
    page.click("#submit-cohort")
    page.wait_for_url("**/#/cohorts/*")
    cohort_id = page.url.rsplit("/", 1)[1]
    with BrainSynthClient(stack.url, KEYS["lab-i"]) as client:
        assert client.status(cohort_id)["request"]["seed"] == seed
    assert page.console_errors == []  # type: ignore[attr-defined]
