"""A cohort's evidence: measured volumes in sidecars and participants.tsv, the QC flag, the report and the
scatter plot (models.dataset.bids, models.dataset.qc)."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from models.cohort.conditioning import Covariates
from models.dataset.bids import (
    QC_NOT_MEASURED,
    QC_OUTSIDE,
    QC_PASS,
    Measurement,
    SamplerSettings,
    SubjectRecord,
    dataset_files,
    participants_tsv,
    record_from_sidecar,
    t1w_sidecar,
)
from models.dataset.qc import qc_files, qc_report
from tests.conftest import tiny_config

REQUESTED = Covariates("F", 60.0, 40000.0, 1500000.0)


def _record(pid: str, ventricles: float | None, brain: float = 1500000.0, tolerance: float = 0.25) -> SubjectRecord:
    measurement = None if ventricles is None else Measurement(ventricles, brain, "probe", tolerance)
    return SubjectRecord(pid, REQUESTED, (0.0, 0.4, 0.2, 0.5), 7, "ddim", 10, measurement)


@pytest.mark.parametrize(
    ("ventricles", "brain", "tolerance", "flag"),
    [
        (40000.0, 1500000.0, 0.25, QC_PASS),
        (50000.0, 1500000.0, 0.25, QC_PASS),  # exactly 25 % off still passes
        (50001.0, 1500000.0, 0.25, QC_OUTSIDE),
        (40000.0, 1100000.0, 0.25, QC_OUTSIDE),  # one volume outside is enough
        (44000.0, 1500000.0, 0.05, QC_OUTSIDE),
        (None, 1500000.0, 0.25, QC_NOT_MEASURED),
    ],
)
def test_the_qc_flag_compares_each_volume_with_its_tolerance(
    ventricles: float | None, brain: float, tolerance: float, flag: str
) -> None:
    assert _record("sub-000001", ventricles, brain, tolerance).qc == flag


def test_a_measurement_survives_the_sidecar_and_fills_participants_tsv() -> None:
    measured, unmeasured = _record("sub-000001", 52000.0), _record("sub-000002", None)
    settings = SamplerSettings("ddim", 10, 0.0, 4, "float32")
    sidecar = t1w_sidecar(tiny_config(), measured, settings, "cpu")
    assert sidecar["Measured"] == {"ventricular_volume_mm3": 52000.0, "brain_volume_mm3": 1500000.0,
                                   "measure": "probe", "tolerance": 0.25}  # fmt: skip
    assert sidecar["QC"] == QC_OUTSIDE
    assert record_from_sidecar("sub-000001", json.loads(json.dumps(sidecar))) == measured
    assert t1w_sidecar(tiny_config(), unmeasured, settings, "cpu")["QC"] == QC_NOT_MEASURED
    rows = [line.split("\t") for line in participants_tsv([unmeasured, measured]).splitlines()]
    header = rows[0]
    first = dict(zip(header, rows[1], strict=True))
    second = dict(zip(header, rows[2], strict=True))
    assert (first["measured_ventricular_volume_mm3"], first["measure"], first["qc"]) == ("52000.0", "probe", QC_OUTSIDE)
    assert (second["measured_brain_volume_mm3"], second["measure"], second["qc"]) == ("n/a", "n/a", QC_NOT_MEASURED)
    described = json.loads(dataset_files(tiny_config(), "c", [measured])["participants.json"])
    assert set(header) == set(described)


def test_the_report_and_scatter_plot_of_a_measured_cohort() -> None:
    records = [_record("sub-000001", 40000.0), _record("sub-000002", 60000.0), _record("sub-000003", None)]
    records[0] = SubjectRecord("sub-000001", Covariates("F", 60.0, 20000.0, 1400000.0), (0, 0, 0, 0), 1, "ddim", 10,
                               Measurement(22000.0, 1450000.0, "probe"))  # fmt: skip
    report = qc_report(records)
    assert report is not None
    assert (report["subjects"], report["measured"], report["passed"], report["acceptance_rate"]) == (3, 2, 1, 0.5)
    # two measured subjects: no correlation to report (two points always lie on a line)
    assert report["ventricular_volume_mm3"] == {"pearson_r": None, "mae_mm3": 11000.0, "mape_percent": 30.0}
    records.append(SubjectRecord("sub-000004", Covariates("M", 70.0, 30000.0, 1500000.0), (0, 0, 0, 0), 4, "ddim",
                                 10, Measurement(33000.0, 1500000.0, "probe")))  # fmt: skip
    assert qc_report(records)["ventricular_volume_mm3"]["pearson_r"] == pytest.approx(
        0.9717, abs=1e-4
    )  # numpy.corrcoef agrees
    files = qc_files(records)
    assert set(files) == {"qc_report.json", "qc_scatter.png"}
    picture = Image.open(io.BytesIO(files["qc_scatter.png"]))
    assert picture.size == (640, 320) and len(picture.getcolors(maxcolors=100_000) or []) > 4  # drawn, not blank
    bidsignore = dataset_files(tiny_config(), "c", records)[".bidsignore"].split()
    assert bidsignore == ["SHA256SUMS", "qc_report.json", "qc_scatter.png"]
    assert qc_files([_record("sub-000001", None)]) == {}  # nothing measured: no report
