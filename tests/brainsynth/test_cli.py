"""``brainsynth sample``: writes a cohort; bad arguments give one line and a non-zero exit."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from brainsynth.cli import main


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_sample_writes_a_cohort(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cohort"
    code, stdout, stderr = _run(
        [
            "sample",
            "--model",
            str(tiny_model_dir),
            "--n",
            "3",
            "--seed",
            "4",
            "--out",
            str(out),
            "--age-range",
            "60",
            "70",
            "--sex",
            "F",
            "--ventricular-volume",
            "30000",
            "--steps",
            "3",
            "--batch-size",
            "2",
            "--dtype",
            "uint8",
        ],
        capsys,
    )
    assert code == 0, stderr
    assert str(out.resolve()) in stdout and "wrote 3 subjects" in stdout
    assert "sampling 3 subjects" in stderr  # the progress bar
    from service.client import verify_manifest

    # the same dataset-level files as the service's archive, SHA256SUMS (checked) and .bidsignore included
    assert verify_manifest(out) == 3 * 2 + 5
    with open(out / "participants.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert len(rows) == 3
    assert {r["sex"] for r in rows} == {"F"}
    assert all(60 <= float(r["age"]) <= 70 for r in rows)
    assert {float(r["ventricular_volume_mm3"]) for r in rows} == {30000.0}
    assert len(list(out.glob("sub-*/anat/sub-*_T1w.nii.gz"))) == 3


def test_sample_from_a_subjects_file(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "subjects.tsv"
    table.write_text(
        "age\tsex\tventricular_volume_mm3\tbrain_volume_mm3\n63\tF\t30000\t1500000\n70\tm\t45000\t1400000\n"
    )
    out = tmp_path / "cohort"
    code, _, stderr = _run(
        [
            "sample",
            "--model",
            str(tiny_model_dir),
            "--seed",
            "1",
            "--out",
            str(out),
            "--subjects",
            str(table),
            "--steps",
            "2",
        ],
        capsys,
    )
    assert code == 0, stderr
    rows = list(csv.DictReader((out / "participants.tsv").read_text().splitlines(), delimiter="\t"))
    assert [(r["age"], r["sex"]) for r in rows] == [("63.0", "F"), ("70.0", "M")]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--n", "2", "--age", "30"], "--age/--age-range: 30.0 years is outside the training range 44-82 years"),
        (
            ["--n", "2", "--age", "120", "--extrapolate"],
            "--age/--age-range: 120.0 years is beyond the extrapolation limit",
        ),
        (["--n", "2", "--brain-range", "1e6", "1.5e6"], "--brain-volume/--brain-range: "),
        (
            ["--n", "2", "--ventricular-range", "50000", "20000"],
            "--ventricular-volume/--ventricular-range: range must be",
        ),
        (["--n", "0"], "--n: must be between 1 and"),
        (["--n", "2", "--female-fraction", "2"], "--female-fraction: must be between 0 and 1"),
        (["--n", "2", "--sampler", "ddpm", "--steps", "10"], "--steps: steps must be 1000 for ddpm"),
        (["--n", "2", "--steps", "0"], "--steps: steps must be between 1 and 1000"),
        (["--n", "2", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["--n", "2", "--sampler", "euler"], "argument --sampler: invalid choice"),
        (["--n", "two"], "argument --n: invalid int value"),
        (["--n", "2", "--age", "50", "--age-range", "50", "60"], "not allowed with argument"),
        ([], "--n is required unless --subjects is given"),
        (["--n", "2", "--device", "tpu"], "device must be 'cpu' or 'cuda"),
        (["--n", "2", "--decode-slab", "0"], "(--decode-slab, BRAINSYNTH_DECODE_SLAB) must be at least 1 row"),
        (["--n", "2", "--decode-offload"], "needs a decode slab: set --decode-slab ROWS"),
    ],
)
def test_bad_arguments_give_one_line(
    extra: list[str], expected: str, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cohort"
    code, _, stderr = _run(["sample", "--model", str(tiny_model_dir), "--seed", "1", "--out", str(out), *extra], capsys)
    assert code != 0
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("brainsynth: error:") and expected in lines[0]
    assert not (out / "participants.tsv").exists()


def test_model_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["sample", "--n", "1", "--seed", "1", "--out", str(tmp_path / "o")]
    code, _, stderr = _run([*base, "--model", "ukb"], capsys)
    assert code == 1 and "brainsynth models import-bundle" in stderr and stderr.count("\n") == 1
    code, _, stderr = _run([*base, "--model", "nosuch"], capsys)
    assert code == 1 and "no model or model directory named 'nosuch'" in stderr


def test_non_empty_out_and_conflicting_subjects(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("")
    code, _, stderr = _run(
        ["sample", "--model", str(tiny_model_dir), "--n", "1", "--seed", "1", "--out", str(used)], capsys
    )
    assert code == 2 and "is not an empty folder" in stderr
    code, _, stderr = _run(
        [
            "sample",
            "--model",
            str(tiny_model_dir),
            "--seed",
            "1",
            "--out",
            str(tmp_path / "n"),
            "--subjects",
            str(tmp_path / "none.tsv"),
            "--age",
            "60",
        ],
        capsys,
    )
    assert code == 2 and "do not combine" in stderr


def test_console_script_runs_without_traceback(tmp_path: Path) -> None:
    """The installed entry point, as users run it."""
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "brainsynth"),
            "sample",
            "--model",
            "ukb",
            "--n",
            "1",
            "--seed",
            "1",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        env={"BRAINSYNTH_MODELS_DIR": str(tmp_path / "none"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and result.stderr.startswith("brainsynth: error:")
    assert "import-bundle" in result.stderr


def test_submit_with_a_local_model_directory_says_to_register_it(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from brainsynth.cli import main as service_main

    code = service_main(["submit", "--model", str(tiny_model_dir), "--n", "1", "--url", "http://127.0.0.1:9",
                         "--api-key", "k"])  # fmt: skip
    assert code == 2
    assert f"brainsynth models register {tiny_model_dir}" in capsys.readouterr().err


def test_sex_words_and_seeds_from_the_subjects_file(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """female/male in any case in flags and TSVs (stored F/M); a participants.tsv with seeds needs no --seed."""
    table = tmp_path / "participants.tsv"
    table.write_text(
        "age\tsex\tventricular_volume_mm3\tbrain_volume_mm3\tseed\n"
        "63\tfemale\t30000\t1500000\t11\n70\tMALE\t45000\t1400000\t22\n"
    )
    out = tmp_path / "cohort"
    code, _, stderr = _run(["sample", "--model", str(tiny_model_dir), "--subjects", str(table), "--out", str(out),
                            "--steps", "2"], capsys)  # fmt: skip
    assert code == 0, stderr
    rows = list(csv.DictReader((out / "participants.tsv").read_text().splitlines(), delimiter="\t"))
    assert [(r["sex"], r["seed"]) for r in rows] == [("F", "11"), ("M", "22")]
    out2 = tmp_path / "women"
    code, _, stderr = _run(["sample", "--model", str(tiny_model_dir), "--n", "2", "--seed", "3", "--sex", "Female",
                            "--out", str(out2), "--steps", "2"], capsys)  # fmt: skip
    assert code == 0, stderr
    assert {r["sex"] for r in csv.DictReader((out2 / "participants.tsv").read_text().splitlines(), delimiter="\t")} == {
        "F"
    }
    seedless = tmp_path / "seedless.tsv"
    seedless.write_text("age\tsex\tventricular_volume_mm3\tbrain_volume_mm3\n63\tF\t30000\t1500000\n")
    code, _, stderr = _run(["sample", "--model", str(tiny_model_dir), "--subjects", str(seedless), "--out",
                            str(tmp_path / "x")], capsys)  # fmt: skip
    assert code == 2 and "--seed is required" in stderr and "no seed column" in stderr
    code, _, stderr = _run(["sample", "--model", str(tiny_model_dir), "--n", "2", "--out", str(tmp_path / "y")], capsys)
    assert code == 2 and "--seed is required with --n" in stderr
    code, _, stderr = _run(["sample", "--model", str(tiny_model_dir), "--n", "2", "--seed", "1", "--sex", "x",
                            "--out", str(tmp_path / "z")], capsys)  # fmt: skip
    assert code == 2 and "sex must be F or M" in stderr


def test_argument_errors_are_answered_before_torch_is_imported(tmp_path: Path) -> None:
    """A typo costs a fraction of a second: every check of the user's input runs before torch loads."""
    import subprocess
    import sys

    cases = [["--n", "2", "--seed", "1", "--age", "300"], ["--n", "2", "--seed", "1", "--sex", "x"],
             ["--n", "2", "--seed", "1", "--steps", "5000"], ["--subjects", str(tmp_path / "missing.tsv")]]  # fmt: skip
    for extra in cases:
        script = (
            "import sys\nfrom brainsynth.cli import main\n"
            f"code = main(['sample', '--model', 'demo', '--out', {str(tmp_path / 'o')!r}, *{extra!r}])\n"
            "print(code, 'torch' in sys.modules)"
        )
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert result.stdout.split()[-2:] in (["1", "False"], ["2", "False"]), (extra, result.stdout, result.stderr)


def test_participants_tsv_records_how_to_regenerate_and_other_settings_are_refused(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = tmp_path / "first"
    code, _, stderr = _run(["sample", "--model", str(tiny_model_dir), "--n", "3", "--seed", "8", "--steps", "4",
                            "--out", str(first)], capsys)  # fmt: skip
    assert code == 0, stderr
    table = first / "participants.tsv"
    rows = list(csv.DictReader(table.read_text().splitlines(), delimiter="\t"))
    assert {(r["sampler"], r["steps"]) for r in rows} == {("ddim", "4")}
    again = tmp_path / "again"  # no --seed, --sampler or --steps: all from the file
    code, _, stderr = _run(["sample", "--model", str(tiny_model_dir), "--subjects", str(table), "--out", str(again)],
                           capsys)  # fmt: skip
    assert code == 0, stderr
    for row in rows:
        name = f"{row['participant_id']}/anat/{row['participant_id']}_T1w.nii.gz"
        assert (again / name).read_bytes() == (first / name).read_bytes()
    code, _, stderr = _run(["sample", "--model", str(tiny_model_dir), "--subjects", str(table), "--steps", "50",
                            "--out", str(tmp_path / "other")], capsys)  # fmt: skip
    assert code == 2 and "was made with ddim 4 steps" in stderr and "ddim 50" in stderr


def test_the_usage_is_made_from_the_parser_and_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from brainsynth.cli import build_parser, usage

    parser, sections = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = usage()
    assert sorted(commands.choices) == sorted(name for names in sections.values() for name in names)
    for name in commands.choices:
        assert f"\n  {name} " in text, name
    assert {"sample", "train", "up", "submit", "download"} <= set(commands.choices)
    assert main([]) == 2 and capsys.readouterr().out == text
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("brainsynth ")


def test_one_mapping_of_errors_to_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What the user typed exits 2, on either side; what went wrong elsewhere exits 1, with one line."""
    assert main(["sample", "--model", "demo", "--n", "2", "--seed", "1", "--age", "300", "--out",
                 str(tmp_path / "o")]) == 2  # fmt: skip
    assert main(["list", "--limit", "0", "--url", "http://127.0.0.1:9", "--api-key", "k"]) == 2
    assert main(["status", "some-id", "--url", "http://127.0.0.1:9", "--api-key", "k"]) == 1  # nothing listens
    assert main(["sample", "--model", "no-such-model", "--n", "1", "--seed", "1", "--out", str(tmp_path / "p")]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("brainsynth: error: ")]
    assert len(errors) == 4
    assert "is `brainsynth up` running?" in errors[2] and "no-such-model" in errors[3]


def test_sample_refuses_subject_ids_that_would_write_outside_out(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "a" / "b" / "trav.tsv"
    table.parent.mkdir(parents=True)
    table.write_text("participant_id\tage\tsex\tventricular_volume_mm3\tbrain_volume_mm3\tseed\n"
                     "../../evil\t60\tF\t30000\t1500000\t1\n")  # fmt: skip
    out = tmp_path / "a" / "b" / "out"
    code, _, stderr = _run(["sample", "--model", str(tiny_model_dir), "--subjects", str(table), "--steps", "2",
                            "--out", str(out)], capsys)  # fmt: skip
    assert code == 2 and "--subjects: " in stderr and "'../../evil' is not a BIDS label" in stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "trav.tsv"]  # nothing written anywhere


def test_sample_refuses_the_same_brain_twice_as_the_api_does(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "twins.tsv"
    row = "60\tF\t30000\t1500000\t5\n"
    table.write_text("age\tsex\tventricular_volume_mm3\tbrain_volume_mm3\tseed\n" + row + row)
    code, _, stderr = _run(["sample", "--model", str(tiny_model_dir), "--subjects", str(table), "--steps", "2",
                            "--out", str(tmp_path / "out")], capsys)  # fmt: skip
    assert code == 2 and "row 3 repeats row 2" in stderr


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--n", "2", "--steps", "0"], "--steps: should be greater than or equal to 1, got 0"),
        (["--n", "0"], "--n: should be greater than or equal to 1, got 0"),
        (["--n", "2", "--seed", "-1"], "--seed: should be greater than or equal to 0, got -1"),
        (["--n", "2", "--female-fraction", "1.5"], "--female-fraction: should be less than or equal to 1"),
        (["--n", "2", "--age-range", "70", "60"], "--age/--age-range: min (70.0) must not exceed max (60.0)"),
    ],
)
def test_submit_names_the_flag_of_a_bad_value_and_exits_2_before_any_request(
    flags: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, stderr = _run(["submit", "--model", "demo", *flags, "--url", "http://127.0.0.1:9", "--api-key", "k"],
                           capsys)  # fmt: skip
    assert code == 2 and says in stderr, stderr
    assert "body" not in stderr and "n_subjects" not in stderr and "cannot reach" not in stderr


def test_the_api_422_is_named_by_flags_with_exit_2() -> None:
    """What the server refuses (the model's ranges, the server's limits) reads as flags too."""
    from brainsynth.arguments import field_errors_message
    from brainsynth.cli import error_message, exit_code
    from service.client import ClientError

    detail = [
        {"loc": ["body", "covariates", "age"], "msg": "age: 30.0 years is outside the training range 44-82 "
         "years; set extrapolate to true to go beyond it", "type": "value_error"},
        {"loc": ["body", "n_subjects"], "msg": "must be between 1 and 1000 subjects on this server, got 2000",
         "type": "value_error"},
        {"loc": ["body", "subjects", 1, "seed"], "msg": "subject 1 repeats subject 0", "type": "value_error"},
    ]  # fmt: skip
    err = ClientError("HTTP 422: ...", 422, detail)
    assert exit_code(err) == 2 and error_message(err) == field_errors_message(detail)
    message = error_message(err)
    assert message.startswith("--age/--age-range: age: 30.0 years is outside the training range 44-82 years; "
                              "pass --extrapolate to go beyond it; ")  # fmt: skip
    assert "; --n: must be between 1 and 1000 subjects on this server, got 2000; " in message
    assert message.endswith("; --subjects row 3: subject 1 repeats subject 0")
    assert exit_code(ClientError("HTTP 503: down", 503)) == 1


def test_regenerating_with_another_sampler_names_its_default_steps(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = tmp_path / "first"
    assert main(["sample", "--model", str(tiny_model_dir), "--n", "1", "--seed", "8", "--steps", "3",
                 "--out", str(first)]) == 0  # fmt: skip
    code, _, stderr = _run(["sample", "--model", str(tiny_model_dir), "--subjects", str(first / "participants.tsv"),
                            "--sampler", "dpmpp2m", "--out", str(tmp_path / "again")], capsys)  # fmt: skip
    assert code == 2 and "ask for dpmpp2m 15" in stderr, stderr


def test_a_closed_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    """``brainsynth models --json | head -c 0``: the reader is gone before the command writes; no error line
    (it was "error: [Errno 32] Broken pipe", or Python's "Exception ignored" at exit), exit 0."""
    command = [sys.executable, "-m", "brainsynth.cli", "models", "--json"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader leaves first
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0 and stderr == ""


def test_a_command_whose_extra_is_missing_says_which_to_install() -> None:
    from brainsynth.cli import error_message

    assert error_message(ModuleNotFoundError("No module named 'torch'", name="torch")) == (
        "this command needs torch, from the ml extra: pip install 'brainsynth[ml]'"
    )


def test_sample_like_a_reference_table_writes_its_report(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.models.cohort.test_like import _write, reference_rows

    table = _write(tmp_path / "study.tsv", reference_rows(40))
    out = tmp_path / "out"
    code, _, stderr = _run(["sample", "--model", str(tiny_model_dir), "--like", str(table), "--n", "3", "--seed",
                            "2", "--steps", "2", "--out", str(out)], capsys)  # fmt: skip
    assert code == 0, stderr
    report = json.loads((out / "like_report.json").read_text())
    assert report["reference_rows"] == 40 and set(report["columns"]) == {"sex", "age", "ventricular_volume_mm3",
                                                                          "brain_volume_mm3"}  # fmt: skip
    assert "like_report.json" in (out / ".bidsignore").read_text().split()
    assert "like_report.json" in (out / "SHA256SUMS").read_text()
    code, _, stderr = _run(["sample", "--model", str(tiny_model_dir), "--like", str(table), "--n", "3", "--seed",
                            "2", "--age", "60", "--out", str(tmp_path / "o2")], capsys)  # fmt: skip
    assert code == 2 and "--like draws every covariate" in stderr
    code, _, stderr = _run(["submit", "--model", "demo", "--like", str(tmp_path / "none.tsv"), "--n", "2",
                            "--url", "http://127.0.0.1:9", "--api-key", "k"], capsys)  # fmt: skip
    assert code == 2 and "--like: " in stderr and "none.tsv does not exist" in stderr


def test_sample_measures_each_subject_with_the_models_probe_by_default(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo ships a volume probe: its cohorts carry measured volumes, a QC flag, the report and the plot;
    a model without one is not measured; what cannot be measured or retried is refused, naming the flag."""
    out = tmp_path / "demo"
    code, _, stderr = _run(["sample", "--model", "demo", "--n", "2", "--seed", "3", "--steps", "2",
                            "--qc-tolerance", "0.5", "--out", str(out)], capsys)  # fmt: skip
    assert code == 0, stderr
    rows = list(csv.DictReader((out / "participants.tsv").read_text().splitlines(), delimiter="\t"))
    assert {r["measure"] for r in rows} == {"probe"} and {r["qc"] for r in rows} <= {"pass", "outside tolerance"}
    assert all(float(r["measured_ventricular_volume_mm3"]) > 0 for r in rows)
    report = json.loads((out / "qc_report.json").read_text())
    assert report["measured"] == 2 and report["tolerance"] == [0.5]
    assert {"qc_report.json", "qc_scatter.png"} <= {
        line.split()[1] for line in (out / "SHA256SUMS").read_text().splitlines()
    }
    plain = tmp_path / "tiny"
    assert main(["sample", "--model", str(tiny_model_dir), "--n", "1", "--seed", "1", "--steps", "2",
                 "--out", str(plain)]) == 0  # fmt: skip
    assert "not measured" in (plain / "participants.tsv").read_text() and not (plain / "qc_report.json").exists()
    capsys.readouterr()
    for extra, says in (
        (["--qc", "probe"], "no volume probe"),
        (["--qc", "none", "--max-attempts", "3"], "--max-attempts needs a measure"),
        (["--max-attempts", "6"], "--max-attempts must be 1 to 5"),
    ):
        code, _, stderr = _run(["sample", "--model", str(tiny_model_dir), "--n", "1", "--seed", "1", *extra,
                                "--out", str(tmp_path / "x")], capsys)  # fmt: skip
        assert code == 2 and says in stderr


def _error(row: dict[str, str]) -> float:
    """A participants.tsv row's larger relative difference between measured and requested volume."""
    volumes = ("ventricular_volume_mm3", "brain_volume_mm3")
    return max(abs(float(row[f"measured_{v}"]) - float(row[v])) / float(row[v]) for v in volumes)


def test_max_attempts_regenerates_subjects_outside_tolerance_with_recorded_attempt_seeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tight tolerance: subjects outside it are sampled again (alone) with their attempt's seed, up to 3
    attempts, keeping the first that passes or else the closest; participants.tsv names the attempt and the seed
    that made each image, so regenerating a row from the table gives the same bytes."""
    from models.cohort.design import attempt_seed

    first, retried = tmp_path / "once", tmp_path / "retried"
    common = ["sample", "--model", "demo", "--n", "4", "--seed", "3", "--steps", "4", "--batch-size", "4",
              "--qc-tolerance", "0.05"]  # fmt: skip
    assert _run([*common, "--out", str(first)], capsys)[0] == 0
    assert _run([*common, "--max-attempts", "3", "--out", str(retried)], capsys)[0] == 0
    once = {r["participant_id"]: r for r in csv.DictReader((first / "participants.tsv").open(), delimiter="\t")}
    rows = {r["participant_id"]: r for r in csv.DictReader((retried / "participants.tsv").open(), delimiter="\t")}
    outside = [pid for pid, r in once.items() if r["qc"] != "pass"]
    assert outside, "the 5 % tolerance should leave a subject outside it on the first attempt"
    for pid, row in rows.items():
        if pid not in outside:  # passed at once: the same image, attempt 1
            assert row["attempt"] == "1" and row["seed"] == once[pid]["seed"]
            continue
        attempt = int(row["attempt"])
        assert 1 <= attempt <= 3 and (row["qc"] != "pass" or attempt > 1)
        assert int(row["seed"]) == attempt_seed(int(once[pid]["seed"]), attempt)
        sidecar = json.loads((retried / pid / "anat" / f"{pid}_T1w.json").read_text())
        assert sidecar["Attempt"] == attempt and sidecar["BatchSize"] == (1 if attempt > 1 else 4)
        assert _error(row) <= _error(once[pid])  # the kept attempt is never further than the first
    # the table regenerates a retried subject's image byte for byte (alone, as it was made)
    pid = next((p for p in outside if rows[p]["attempt"] != "1"), None)
    assert pid is not None, "some subject outside tolerance should have been regenerated"
    table = tmp_path / "one.tsv"
    table.write_text("\t".join(("participant_id", "age", "sex", "ventricular_volume_mm3", "brain_volume_mm3", "seed"))
                     + "\n" + "\t".join(rows[pid][c] for c in ("participant_id", "age", "sex", "ventricular_volume_mm3",
                                                                 "brain_volume_mm3", "seed")) + "\n")  # fmt: skip
    again = tmp_path / "again"
    assert _run(["sample", "--model", "demo", "--subjects", str(table), "--steps", "4", "--qc", "none",
                 "--out", str(again)], capsys)[0] == 0  # fmt: skip
    path = f"{pid}/anat/{pid}_T1w.nii.gz"
    assert (again / path).read_bytes() == (retried / path).read_bytes()
    report = json.loads((retried / "qc_report.json").read_text())
    assert report["passed"] == sum(r["qc"] == "pass" for r in rows.values())


def test_sample_qc_samseg_names_the_missing_measuring_environment(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRAINSYNTH_MEASURE_PYTHON", str(tmp_path / "nowhere" / "python"))
    code, _, stderr = _run(["sample", "--model", str(tiny_model_dir), "--n", "1", "--seed", "1", "--qc", "samseg",
                            "--out", str(tmp_path / "x")], capsys)  # fmt: skip
    assert code == 2 and "--qc samseg: no measuring environment" in stderr and "make install" in stderr


@pytest.mark.slow
def test_sample_qc_samseg_runs_the_real_samseg_locally(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`brainsynth sample --qc samseg` with the measuring environment of `make install` (one 4 mm subject: SAMSEG
    takes 3-4 minutes here): label map, volumes, measured sidecar, all in SHA256SUMS."""
    from service.stack import measure_python

    try:
        measure_python()
    except Exception as err:
        pytest.skip(str(err))
    out = tmp_path / "measured"
    code, _, stderr = _run(["sample", "--model", "demo", "--n", "1", "--seed", "5", "--qc", "samseg",
                            "--out", str(out)], capsys)  # fmt: skip
    assert code == 0, stderr
    (row,) = list(csv.DictReader((out / "participants.tsv").read_text().splitlines(), delimiter="\t"))
    assert row["measure"] == "samseg" and float(row["measured_ventricular_volume_mm3"]) > 1000
    listed = {line.split()[1] for line in (out / "SHA256SUMS").read_text().splitlines()}
    assert "derivatives/samseg/sub-000001/anat/sub-000001_dseg.nii.gz" in listed
